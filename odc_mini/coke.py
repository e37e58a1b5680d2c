"""CoKe, online constrained k-means (Qian et al., CVPR 2022): ODC's successor, which keeps every
cluster alive by a constraint instead of ODC's split-the-largest heuristic.

Each image's label is ``argmax_k(z . c_k + y_k)``: the nearest centroid, shifted by one dual
variable ``y_k`` per cluster. After every mini-batch of B images the duals take one step of
projected dual ascent on the lower bound "every cluster holds at least ``ratio / K`` of the
data"::

    y_k <- max(0, y_k + eta * (ratio / K - n_k / B))        # n_k: the batch's members of k

so a cluster that receives too few images grows more attractive until it receives its share.
The centroids are running means of the unit features assigned during the epoch; at the end of
the epoch they become the classifier of the next one (logits ``z . c_k / T``; no head is learned),
and each image is trained towards the label it received in the previous epoch.

Faithful to the authors' single-view code, idstcv/CoKe ``coke/builder_single_view.py``, class
``CoKe``, with the constants of ``run_single_view.sh``:

* ``gen_label``: labels from the *current* epoch's running centroids plus the duals;
* ``update_center_mini_batch``: the dual step above with lower bound ``ratio`` / K, ratio = 0.4,
  clipped at 0 (``ratio < 1``); then the running mean of each cluster's features over the epoch,
  its columns re-normalised;
* ``update_center``: at the end of an epoch the running centroids become the classifier and the
  counters restart;
* ``forward``: logits of the L2-normalised projection and prediction against the classifier over
  temperature T = 0.1; loss ``beta * CE(prediction) + (1 - beta) * CE(projection)`` with beta = 1
  (``main_single_view.py``'s ``train``); the label of an image is the one it received in the
  previous epoch (in the first epoch, the one it just received);
* the network: its projection MLP (128-d) and prediction head (``odc_mini.models.CoKeNet``);
  centroids start as unit random vectors.

What changes here, and why:

* **The dual step size** eta. The reference's 20 goes with batches of B = 1,024 and K = 3,000
  clusters (its first head). The step's noise is eta times the spread of n_k / B, about
  eta * sqrt(1 / (K * B)): 0.011 there, but 0.18 at the quick profile's B = 128 and K = 100, a
  jump as large as the gap between two centroids' cosines. Left at 20, the duals shake the
  labels: on fixed, well-separated features (10 Gaussian blobs, K = 10, B = 64) the assignment
  keeps relabelling over half of them every epoch and loses the blobs, where the scaled step
  settles below 10 % (``tests/test_coke.py``). :func:`dual_step` keeps the reference's noise,
  eta = 20 * sqrt(B * K / (1,024 * 3,000)): 1.29 at the quick and medium profiles' B = 128 and
  K = 100. ``coke_dual_lr`` sets eta directly.
* **One clustering head** with the profile's K (100 on CIFAR-10) instead of three heads with
  3,000, 4,000 and 5,000 clusters on ImageNet. Three heads are an ensemble of the same rule; one
  head is the method, and it is what ODC and DeepCluster get.
* **No second stage.** The reference switches, for the last 200 of 1,001 epochs, to soft labels
  over each image's last 5 labels and to averaged centroids (``stage``, ``ls``, ``t``). That is a
  refinement of a very long schedule; the budgets here are 40-100 epochs, the same as the other
  methods', and stage 1 is the method the paper's Sec. 3 describes.
* **Epoch 0.** The reference spends its first epoch at learning rate 0, only to assign labels and
  build centroids from random ones. ``setup`` does that pass on the features the run extracts for
  its random-init evaluation (eval mode, no augmentation), as ODC's initial k-means does, so that
  all three methods train for the same number of epochs.
* **Optimiser and schedule**: the run's SGD, learning rate and schedule, as for ODC and
  DeepCluster (the reference: LARS, lr 1.6 at batch 1,024, cosine with 11 warm-up epochs), so
  that the budget is equal.
* **Order**: a permutation per epoch (the reference's ``DistributedSampler``), whatever
  ``sampler`` says: "the label from the previous epoch" needs every image once per epoch. The
  loop drops an epoch's last partial batch; those few images keep their label.
* The per-cluster sums are a one-hot matrix product rather than ``index_add_``: the same sums,
  without the atomic additions that make a GPU's result vary from run to run.
* The reference resets its counters by rebinding a list entry (``self.counters[i] = zeros``),
  which leaves the registered buffer stale in its checkpoints; here the buffer itself is reset.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from .kmeans import l2_normalize
from .method import Method, Step


REFERENCE_DUAL_LR, REFERENCE_BATCH, REFERENCE_K = 20.0, 1024, 3000   # run_single_view.sh


def dual_step(cfg) -> float:
    """The run's dual step size: ``cfg.coke_dual_lr``, or the reference's scaled to the run's batch
    and K so that each step moves the duals as much as the reference's do (module docstring)."""
    if cfg.coke_dual_lr is not None:
        return float(cfg.coke_dual_lr)
    return REFERENCE_DUAL_LR * (cfg.batch_size * cfg.num_clusters
                                / (REFERENCE_BATCH * REFERENCE_K)) ** 0.5


class CoKe(Method):
    name = "coke"

    def __init__(self, model, images, cfg, generator, **precision):
        super().__init__(model, images, cfg, generator, **precision)
        k, d, device = cfg.num_clusters, cfg.coke_dim, images.device
        self.lower_bound = cfg.coke_ratio / k
        self.dual_lr = dual_step(cfg)
        # the reference's F.normalize(torch.randn(dim, K), dim=0), stored as rows (K, D)
        start = l2_normalize(torch.randn(k, d, generator=generator)).to(device)
        self.register_buffer("centroids", start.clone())      # running means of this epoch
        self.register_buffer("classifier", start.clone())     # last epoch's: the logits' weights
        self.register_buffer("duals", torch.zeros(k, device=device))
        self.register_buffer("counts", torch.zeros(k, device=device))   # members this epoch
        self.register_buffer("labels", torch.zeros(self.num_samples, dtype=torch.long,
                                                   device=device))

    # ------------------------------------------------------------------ the constrained k-means
    @torch.no_grad()
    def assign(self, z: torch.Tensor) -> torch.Tensor:
        """(B,) labels of unit features z (B, D): nearest running centroid, shifted by the duals
        (the reference's ``gen_label``)."""
        return torch.argmax(z @ self.centroids.T + self.duals, dim=1)

    @torch.no_grad()
    def update(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        """One dual step and the running means after a batch (``update_center_mini_batch``)."""
        n = torch.bincount(labels, minlength=self.cfg.num_clusters).to(self.duals.dtype)
        lr = self.dual_lr
        self.duals -= lr / len(labels) * n
        self.duals += lr * self.lower_bound
        if self.cfg.coke_ratio < 1:
            self.duals.clamp_(min=0)
        seen = n > 0
        before = self.counts.clone()
        self.counts += n
        total = self.counts.clamp(min=1)
        keep = torch.where(seen, before / total, torch.ones_like(total))
        sums = F.one_hot(labels, self.cfg.num_clusters).to(z.dtype).T @ z   # (K, D)
        self.centroids.mul_(keep[:, None]).add_(sums / total[:, None])
        # back on the sphere, the clusters of this batch only (a select, not a masked write: no
        # wait for the GPU); the same bits as normalising those rows alone
        self.centroids.copy_(torch.where(seen[:, None], l2_normalize(self.centroids),
                                         self.centroids))

    @torch.no_grad()
    def end_epoch(self) -> None:
        """The epoch's running centroids become the classifier; the counts restart
        (``update_center``, first stage)."""
        self.classifier.copy_(self.centroids)
        self.counts.zero_()

    # ------------------------------------------------------------------ the loop's contract
    @torch.no_grad()
    def setup(self) -> None:
        """The reference's epoch 0 (learning rate 0): assign every image batch by batch in a random
        order, starting from the random centroids, then make the result the classifier."""
        z = l2_normalize(self.embed().neck)
        order = torch.randperm(self.num_samples, generator=self.generator).to(self.device)
        for start in range(0, self.num_samples, self.cfg.batch_size):
            idx = order[start:start + self.cfg.batch_size]
            labels = self.assign(z[idx])
            self.update(z[idx], labels)
            self.labels[idx] = labels
        self.end_epoch()

    def start_epoch(self, epoch: int) -> torch.Tensor:
        """Every image once, in a new random order; from the second epoch on, the previous
        epoch's centroids become the classifier first."""
        if epoch > 1:
            self.end_epoch()
        return torch.randperm(self.num_samples, generator=self.generator)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Cosine to each classifier centroid over the temperature: (B, D) -> (B, K)."""
        return l2_normalize(features.float()) @ self.classifier.T / self.cfg.coke_temperature

    def train_step(self, x: torch.Tensor, idx: torch.Tensor) -> Step:
        z, p = self.forward(x)
        target = self.labels[idx]              # the label of the previous epoch
        beta = self.cfg.coke_beta
        prediction = self.logits(p)
        loss = beta * self.loss(prediction, target, None)
        if beta < 1:
            loss = loss + (1 - beta) * self.loss(self.logits(z), target, None)
        loss, acc, finite = self.sgd_step(prediction, target, loss=loss)
        z, idx = self.global_batch(l2_normalize(z.detach().float()), idx)
        labels = self.assign(z)
        self.update(z, labels)
        changed = (labels != self.labels[idx]).float().mean()
        self.labels[idx] = labels
        return Step(loss, acc, changed, finite & torch.isfinite(z).all())

    def pseudo_labels(self) -> torch.Tensor:
        return self.labels

    def drift_centroids(self) -> torch.Tensor:
        # Ids persist (no re-clustering): this epoch's running means, the next classifier.
        return self.centroids.clone()
