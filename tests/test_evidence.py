"""The evidence behind comparisons: verdicts over seeds, the learning-rate schedule each method's
reference uses, and drift measured alike for both methods (checked against the runs' own
snapshots, recomputed here with numpy)."""
import numpy as np
import pytest

from odc_mini import Config, train
from odc_mini.study import analysis
from odc_mini.history import History

TINY = dict(profile="quick", dataset="synthetic", subset=240, epochs=5, batch_size=40, lr=0.05,
            num_clusters=6, min_cluster=4, pca_dim=16, snapshot_size=240, snapshot_interval=1,
            eval_batch_size=240, eval_interval=2, linear_probe=False, device="cpu")


def fake(knn: float, churn: float = 0.1, linear: float = 0.4) -> History:
    """A one-epoch history whose summary has the given kNN and linear accuracy and churn."""
    h = History()
    h.add_iterations(change_ratio=np.full(4, churn), epoch=np.linspace(0.25, 1, 4))
    h.add_epoch(epoch=0, knn_top1=0.3, linear_top1=0.3)
    h.add_epoch(epoch=1, knn_top1=knn, linear_top1=linear, drift=0.1)
    return h


def test_verdicts_count_the_seeds_paired():
    a = {0: fake(0.50), 1: fake(0.41), 2: fake(0.46)}
    b = {0: fake(0.48), 1: fake(0.40), 2: fake(0.45)}
    c = analysis.compare(a, b, "knn_top1")
    np.testing.assert_allclose(c.differences, [0.02, 0.01, 0.01])
    assert c.verdict == "higher in all 3 seeds"
    assert analysis.compare(b, a, "knn_top1").verdict == "lower in all 3 seeds"
    # unpaired, a's mean is higher, but seed 1 goes the other way: no verdict
    b[1] = fake(0.42)
    assert analysis.compare(a, b, "knn_top1").verdict == "within seed noise"
    s = analysis.compare(a, b, "knn_top1").sentence("ODC", "DeepCluster")
    assert s.startswith("kNN top-1 is within seed noise between ODC and DeepCluster")
    assert "+0.7 points on average; per seed -1.0 points to +2.0 points" in s
    # only the seeds both groups have are compared, and one is too few
    with pytest.raises(ValueError, match="at least 2 seeds"):
        analysis.compare({0: fake(0.5)}, {0: fake(0.4), 1: fake(0.4)}, "knn_top1")


def test_gaps_pair_the_seeds_at_the_epochs_all_measured():
    def run(knn):
        h = History()
        for epoch, value in enumerate(knn):
            h.add_epoch(epoch=epoch, knn_top1=value)
        return h
    nan = float("nan")
    a = {0: run([0.3, nan, 0.5, 0.6]), 1: run([0.2, 0.3, 0.4, 0.5]), 7: run([0.1, 0.1, 0.1, 0.1])}
    b = {0: run([0.3, 0.2, 0.4, 0.4]), 1: run([0.3, 0.3, nan, 0.3])}
    epochs, d = analysis.gaps(a, b, "knn_top1")
    assert epochs.tolist() == [0, 3]                   # epoch 1 and 2 each miss one value
    np.testing.assert_allclose(d, [[0.0, 0.2], [-0.1, 0.2]])   # seeds 0 and 1; seed 7 is unpaired


def test_table_gives_mean_and_sample_sd_per_group():
    groups = {"A": {0: fake(0.50), 1: fake(0.40)}, "B": {0: fake(0.30), 1: fake(0.20)}}
    header, rows = analysis.table(groups, metrics=("knn_top1", "change_ratio"), compare_to="A")
    assert header == ["measure", "A (2 seeds)", "B (2 seeds)", "B vs A"]
    sd = np.std([0.5, 0.4], ddof=1)
    assert rows[0] == ["kNN top-1", f"45.0 ± {100 * sd:.1f}%", f"25.0 ± {100 * sd:.1f}%",
                       "lower in all 2 seeds"]
    assert rows[1][-1] == "within seed noise"          # equal churn: no sign at all


def test_lr_decay_sets_the_last_tenth_of_epochs_and_snapshots_follow_evaluations():
    for decay in (0.4, 1.0):
        run = train(Config(method="odc", **{**TINY, "epochs": 10, "lr_decay": decay,
                                            "snapshot_interval": 3}), progress=False)
        lr = run.history.epoch("lr")[1:]                  # epochs 1..10
        np.testing.assert_allclose(lr, [0.05] * 9 + [0.05 * decay])
        # snapshots need an evaluation (every 2 epochs): the first one at least 3 epochs after
        # the previous snapshot, and the last epoch
        assert run.history.snapshot_epochs == [0, 4, 8, 10]
    with pytest.raises(ValueError, match="lr_decay=0 must be a number in"):
        Config(lr_decay=0).validate()


def test_a_saved_config_without_lr_decay_means_the_old_schedule():
    cfg = Config(method="odc", **TINY)
    saved = {k: v for k, v in cfg.identity().items() if k != "lr_decay"}
    assert cfg.differences(saved) == []
    assert Config(method="odc", **{**TINY, "lr_decay": 1.0}).differences(saved) == [
        "lr_decay (saved 0.4, now 1.0)"]


@pytest.mark.parametrize("method", ["odc", "deepcluster"])
def test_feature_drift_is_the_same_measure_for_both_methods(method):
    """Recomputed from the run's snapshots (all images, every epoch): the centroids of the current
    network's unit features under the labels at each evaluation, moved since the evaluation
    before, over the clusters non-empty at both."""
    h = train(Config(method=method, **TINY), progress=False).history
    recorded = h.epoch("feature_drift")
    evaluated = [e for e in range(1, h.num_epochs + 1) if e % 2 == 0 or e == h.num_epochs]

    def centroids(e):
        z = h.snapshot(e)[0].astype(np.float64)           # unit neck features (float16)
        y = h.snapshot(e)[1].astype(int)
        sums = np.zeros((6, z.shape[1]))
        np.add.at(sums, y, z)
        counts = np.bincount(y, minlength=6)
        return sums / np.maximum(counts, 1)[:, None], counts

    expected = np.full(h.num_epochs + 1, np.nan)
    for before, now in zip(evaluated, evaluated[1:]):
        (a, na), (b, nb) = centroids(before), centroids(now)
        both = (na > 0) & (nb > 0)
        expected[now] = np.linalg.norm(b[both] - a[both], axis=1).mean()
    np.testing.assert_allclose(recorded, expected, atol=2e-3)      # float16 snapshots
    assert np.isfinite(recorded[evaluated[1:]]).all()


def test_headline_names_the_winner_only_when_every_measure_agrees_in_every_seed():
    def group(knns, linears):
        return {seed: fake(knn, linear=linear) for seed, (knn, linear) in enumerate(zip(knns, linears))}
    a = group([0.50, 0.41, 0.46], [0.60, 0.55, 0.58])
    b = group([0.48, 0.40, 0.45], [0.59, 0.54, 0.57])
    knn_a, knn_b = np.array([50, 41, 46.0]), np.array([48, 40, 45.0])
    text = analysis.headline(a, b, "ODC", "DC")
    assert text.startswith("ODC learns better features than DC: ")
    assert (f"kNN top-1 {knn_a.mean():.1f} ± {knn_a.std(ddof=1):.1f}% against "
            f"{knn_b.mean():.1f} ± {knn_b.std(ddof=1):.1f}%, higher for ODC in all 3 seeds "
            f"(by {np.mean(knn_a - knn_b):+.1f} points on average)") in text
    assert analysis.headline(b, a, "DC", "ODC").startswith("ODC learns better features than DC")
    b[2] = fake(0.45, linear=0.59)      # one seed of one measure goes the other way
    assert analysis.headline(a, b, "ODC", "DC").startswith(
        "neither ODC nor DC learns better features by every measure in every seed")
