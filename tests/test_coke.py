"""CoKe: the constrained assignment and centroid updates against a port of the authors' code, the
training target, the lower bound's effect, and end-to-end training on synthetic images."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from odc_mini import Config, train
from odc_mini.coke import CoKe
from odc_mini.evaluate import nmi


class ReferenceCoKe:
    """A line-for-line port of idstcv/CoKe ``coke/builder_single_view.py`` (class ``CoKe``:
    ``gen_label``, ``update_center_mini_batch``, ``update_center``) for one head on the CPU, kept
    in the reference's layout: centroids as the columns of a (D, K) matrix. Only ``.cuda()`` is
    dropped; the second stage is kept, though these tests stay in the first."""

    def __init__(self, centers, K, dual_lr, ratio, stage=801):
        self.K, self.dual_lr, self.ratio, self.stage = [K], dual_lr, ratio, stage
        self.lb = [ratio / k for k in self.K]
        self.num_head = 1
        self.pre_centers = [centers.clone()]
        self.cur_centers = [centers.clone()]
        self.duals = [torch.zeros(K)]
        self.counters = [torch.zeros(K)]

    @torch.no_grad()
    def gen_label(self, feats, epoch, branch):
        if epoch >= self.stage:
            return torch.argmax(torch.mm(feats, self.pre_centers[branch]) + self.duals[branch],
                                dim=1).squeeze(-1)
        else:
            return torch.argmax(torch.mm(feats, self.cur_centers[branch]) + self.duals[branch],
                                dim=1).squeeze(-1)

    @torch.no_grad()
    def update_center(self, epoch):
        if epoch < self.stage:
            for i in range(0, self.num_head):
                self.pre_centers[i] += self.cur_centers[i].clone() - self.pre_centers[i]
        if epoch >= self.stage:
            factor = 1. / (epoch - self.stage + 1.)
            for i in range(0, self.num_head):
                tmp_center = F.normalize(self.cur_centers[i], dim=0)
                self.pre_centers[i] += F.normalize(
                    (1. - factor) * self.pre_centers[i] + factor * tmp_center, dim=0) \
                    - self.pre_centers[i]
                self.cur_centers[i] += self.pre_centers[i].clone() - self.cur_centers[i]
        for i in range(0, self.num_head):
            self.counters[i] = torch.zeros(self.K[i])

    @torch.no_grad()
    def update_center_mini_batch(self, feats, labels, epoch, branch):
        label_idx, label_count = torch.unique(labels, return_counts=True)
        self.duals[branch][label_idx] -= self.dual_lr / len(labels) * label_count
        self.duals[branch] += self.dual_lr * self.lb[branch]
        if self.ratio < 1:
            self.duals[branch][self.duals[branch] < 0] = 0
        alpha = self.counters[branch][label_idx].float()
        self.counters[branch][label_idx] += label_count
        alpha = alpha / self.counters[branch][label_idx].float()
        self.cur_centers[branch][:, label_idx] = self.cur_centers[branch][:, label_idx] * alpha
        self.cur_centers[branch].index_add_(1, labels,
                                            feats.data.T * (1. / self.counters[branch][labels]))
        if epoch < self.stage:
            self.cur_centers[branch][:, label_idx] = F.normalize(
                self.cur_centers[branch][:, label_idx], dim=0)


def bare_coke(num_samples=600, k=12, dim=16, **kw):
    """A CoKe method around a stand-in network (only its state and updates are exercised)."""
    cfg = Config(method="coke", num_clusters=k, coke_dim=dim, min_cluster=0,
                 **{"batch_size": 50, "device": "cpu", **kw})
    images = torch.zeros(num_samples, 3, 4, 4, dtype=torch.uint8)
    return CoKe(nn.Linear(2, 2), images, cfg, torch.Generator().manual_seed(0))


def stream(num_batches, batch, dim, seed, skew=False):
    """Unit features from 6 Gaussian blobs (in ``skew``: 90 % from one blob)."""
    g = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(6, dim, generator=g), dim=1)
    for _ in range(num_batches):
        if skew:
            which = torch.where(torch.rand(batch, generator=g) < 0.9, 0,
                                torch.randint(6, (batch,), generator=g))
        else:
            which = torch.randint(6, (batch,), generator=g)
        yield F.normalize(means[which] + 0.3 * torch.randn(batch, dim, generator=g), dim=1)


@pytest.mark.parametrize("ratio, dual_lr", [(0.4, 20.0), (0.0, 20.0), (1.0, 20.0), (0.4, None)])
def test_assignment_and_centroids_follow_the_reference_step_by_step(ratio, dual_lr):
    k, dim = 12, 16
    ours = bare_coke(k=k, dim=dim, coke_ratio=ratio, coke_dual_lr=dual_lr)
    ref = ReferenceCoKe(ours.centroids.T.clone(), K=k, dual_lr=ours.dual_lr, ratio=ratio)
    steps, changed = 0, 0
    previous = None
    for epoch in range(4):
        for z in stream(15, 50, dim, seed=epoch, skew=epoch % 2 == 1):
            expected = ref.gen_label(z, epoch, 0)
            labels = ours.assign(z)
            assert torch.equal(labels, expected), f"labels differ at epoch {epoch}, step {steps}"
            ref.update_center_mini_batch(z, expected, epoch, 0)
            ours.update(z, labels)
            torch.testing.assert_close(ours.duals, ref.duals[0], rtol=0, atol=1e-6)
            torch.testing.assert_close(ours.centroids, ref.cur_centers[0].T, rtol=0, atol=1e-6)
            torch.testing.assert_close(ours.counts, ref.counters[0], rtol=0, atol=0)
            if previous is not None:
                changed += int((labels != previous).sum())
            previous, steps = labels, steps + 1
        ref.update_center(epoch)
        ours.end_epoch()
        torch.testing.assert_close(ours.classifier, ref.pre_centers[0].T, rtol=0, atol=1e-6)
        assert not ours.counts.any()
    assert steps == 60 and changed > 0     # the labels moved, so the comparison had teeth
    if ratio == 0:
        assert not ours.duals.any()        # no lower bound: the duals stay at zero


def test_the_lower_bound_keeps_clusters_alive_on_a_skewed_stream():
    def smallest_share(ratio):
        method = bare_coke(coke_ratio=ratio, coke_dual_lr=20.0)
        counts = torch.zeros(12)
        for i, z in enumerate(stream(60, 50, 16, seed=3, skew=True)):
            labels = method.assign(z)
            method.update(z, labels)
            if i >= 30:                     # after the duals have settled
                counts += torch.bincount(labels, minlength=12)
        return float(counts.min() / counts.sum())

    bound = 0.4 / 12                        # ratio / K: 3.3 % of the data
    # 90 % of the stream is one blob: without the bound a cluster starves far below it ...
    assert smallest_share(0.0) < 0.25 * bound
    # ... with it every cluster receives at least its share
    assert smallest_share(0.4) >= bound


def test_the_scaled_dual_step_lets_labels_settle_on_fixed_features():
    """10 well-separated blobs, K = 10, B = 64, the same features every epoch: the reference's
    step of 20 (meant for B = 1,024 and K = 3,000) keeps relabelling many of them and loses the
    blobs; the step scaled to this batch and K (0.29) settles."""
    g = torch.Generator().manual_seed(0)
    n, dim, k = 800, 16, 10
    blob = torch.randint(k, (n,), generator=g)
    z = F.normalize(F.normalize(torch.randn(k, dim, generator=g), dim=1)[blob]
                    + 0.3 * torch.randn(n, dim, generator=g), dim=1)

    def last_epochs(dual_lr):
        method = bare_coke(num_samples=n, k=k, dim=dim, coke_dual_lr=dual_lr, batch_size=64)
        labels = torch.full((n,), -1)
        churn = []
        for epoch in range(8):
            before, order = labels.clone(), torch.randperm(n, generator=g)
            for s in range(0, n, 64):
                idx = order[s:s + 64]
                labels[idx] = method.assign(z[idx])
                method.update(z[idx], labels[idx])
            method.end_epoch()
            churn.append(float((labels != before).float().mean()))
        return max(churn[5:]), nmi(labels.numpy(), blob.numpy())

    scaled = bare_coke(k=k, dim=dim, batch_size=64).dual_lr
    assert scaled == pytest.approx(20 * (64 * 10 / (1024 * 3000)) ** 0.5)
    churn_ref, nmi_ref = last_epochs(20.0)
    churn_scaled, nmi_scaled = last_epochs(None)
    assert churn_scaled < 0.1 and nmi_scaled > 0.75
    assert churn_ref > 0.3 and nmi_ref < nmi_scaled - 0.2


def test_each_image_is_trained_towards_its_label_of_the_previous_epoch():
    cfg = Config(method="coke", profile="quick", dataset="synthetic", subset=200, epochs=2,
                 batch_size=40, num_clusters=5, min_cluster=0, snapshot_size=100, device="cpu",
                 eval_batch_size=100)
    from odc_mini.run.start import build
    start = build(cfg)
    method = start.method
    method.setup()
    before = method.labels.clone()
    order = method.start_epoch(1)
    idx = order[:40]
    seen = []
    loss = method.loss
    method.loss = lambda logits, target, weight: seen.append(target.clone()) or loss(logits, target,
                                                                                     weight)
    x = torch.rand(40, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    step = method.train_step(x, idx)
    assert torch.equal(seen[0], before[idx])
    # the stored label is now the new assignment, and the churn is the share that changed
    assert float(step.change_ratio) == pytest.approx(float((method.labels[idx] != before[idx])
                                                           .float().mean()))
    assert not torch.equal(method.classifier, method.centroids)   # the classifier is last epoch's


def test_coke_recovers_synthetic_classes():
    cfg = Config(method="coke", profile="quick", dataset="synthetic", subset=800, epochs=10,
                 batch_size=64, lr=0.05, num_clusters=10, min_cluster=0, snapshot_size=200,
                 eval_batch_size=400, eval_interval=1, device="cpu", seed=0, linear_probe=False)
    run = train(cfg, progress=False)
    h = run.history
    labels = h.labels(h.num_epochs)
    assert nmi(labels, h.arrays["targets"]) >= 0.8
    assert h.last("nmi_classes") == pytest.approx(nmi(labels, h.arrays["targets"]))
    for key in ("change_ratio", "relabelled", "nmi_previous", "drift", "feature_drift"):
        assert np.isfinite(h.epoch(key)[1:]).any(), key
    assert int(h.sizes(h.num_epochs).sum()) == 800


@pytest.mark.parametrize("bad, message", [
    (dict(coke_ratio=1.5), "coke_ratio=1.5 must be a number in [0, 1]"),
    (dict(coke_temperature=0.0), "coke_temperature=0.0 must be a number > 0"),
    (dict(coke_dual_lr=-1.0), "coke_dual_lr=-1.0 must be a number >= 0, or None"),
    (dict(coke_dim=0), "coke_dim=0 must be a positive integer"),
])
def test_bad_coke_settings_are_one_line_errors(bad, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Config(method="coke", **bad).validate()


def test_coke_settings_leave_the_other_runs_keys_alone():
    # added after runs were saved: at their defaults they are not part of the key
    assert Config(method="odc").key() == Config(method="odc", coke_ratio=0.4).key()
    assert Config(method="odc").key() != Config(method="odc", coke_ratio=0.2).key()
