"""Both methods end to end on synthetic images, the run record, save/load and the CLI."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import odc_mini
from odc_mini import Config, load_run, train
from odc_mini.data import default_root
from odc_mini.deepcluster import DeepCluster, uniform_cluster_sampler
from odc_mini.evaluate import nmi

ROOT = Path(__file__).resolve().parents[1]


def synthetic_config(method, **kw):
    # 800 grating images in 10 classes, K = 10. DeepCluster whitens only 16 PCA dimensions: with
    # 800 points, whitening 128 would blow the noise directions up to the size of the signal.
    values = dict(method=method, profile="quick", dataset="synthetic", subset=800, epochs=10,
                  batch_size=64, lr=0.05, num_clusters=10, min_cluster=10, pca_dim=16,
                  snapshot_size=200, eval_batch_size=400, eval_interval=1, device="cpu", seed=0,
                  linear_probe=False)
    values.update(kw)
    return Config(**values)


@pytest.fixture(scope="module")
def odc_run():
    return train(synthetic_config("odc"), progress=False)


@pytest.fixture(scope="module")
def dc_run():
    return train(synthetic_config("deepcluster"), progress=False)


def test_odc_recovers_synthetic_classes(odc_run):
    h = odc_run.history
    labels = h.labels(h.num_epochs)
    assert nmi(labels, h.arrays["targets"]) >= 0.9          # recomputed here from the raw labels
    assert h.last("nmi_classes") == pytest.approx(nmi(labels, h.arrays["targets"]))
    assert torch.allclose(odc_run.memory.features.norm(dim=1), torch.ones(800), atol=1e-5)
    assert torch.equal(torch.from_numpy(labels.astype(np.int64)), odc_run.memory.labels)


def test_deepcluster_recovers_synthetic_classes(dc_run):
    h = dc_run.history
    labels = h.labels(h.num_epochs)
    assert nmi(labels, h.arrays["targets"]) >= 0.9


def test_history_records_what_the_book_draws(odc_run, dc_run):
    for run in (odc_run, dc_run):
        h = run.history
        iters = 10 * (800 // 64)
        for key in ("loss", "acc", "change_ratio", "epoch", "lr"):
            assert h.iteration(key).shape == (iters,)
        assert h.num_epochs == 10
        assert np.all(np.isfinite(h.epoch("knn_top1")))
        assert np.isfinite(h.epoch("nmi_previous")[2:]).all() and np.isfinite(h.epoch("drift")[2:]).all()
        assert h.sizes(10).sum() == 800 and len(h.sizes(10)) == 10
        feats, labels = h.snapshot(10)
        assert feats.shape == (200, 256) and labels.shape == (200,)
    # ODC's per-iteration churn is a real fraction every step; DeepCluster's is undefined in its
    # first epoch (no previous clustering) and constant-in-expectation afterwards
    assert np.all((odc_run.history.iteration("change_ratio") >= 0) & (odc_run.history.iteration("change_ratio") <= 1))
    assert np.isnan(dc_run.history.iteration("change_ratio")[:12]).all()


def test_linear_probe_at_the_ends_and_every_probe_interval_at_evaluations():
    cfg = synthetic_config("odc", subset=200, batch_size=50, epochs=5, eval_interval=2,
                           linear_probe=True, probe_interval=4, min_cluster=2)
    h = train(cfg, progress=False).history
    assert np.flatnonzero(~np.isnan(h.epoch("knn_top1"))).tolist() == [0, 2, 4, 5]
    assert np.flatnonzero(~np.isnan(h.epoch("linear_top1"))).tolist() == [0, 4, 5]


def test_relabelled_fraction_matches_label_arrays(odc_run):
    h = odc_run.history
    for e in range(1, h.num_epochs + 1):
        want = float((h.labels(e) != h.labels(e - 1)).mean())
        assert h.epoch("relabelled")[e] == pytest.approx(want)
        assert h.epoch("nmi_previous")[e] == pytest.approx(nmi(h.labels(e), h.labels(e - 1)))


def test_deepcluster_head_reset_every_epoch(monkeypatch):
    calls = []
    original = DeepCluster.cluster

    def spy(self, epoch):
        original(self, epoch)
        w, b = self.model.head.weight.detach(), self.model.head.bias.detach()
        calls.append((epoch, float(w.std()), float(b.abs().max())))

    monkeypatch.setattr(DeepCluster, "cluster", spy)
    train(synthetic_config("deepcluster", epochs=3, subset=400), progress=False)
    assert [c[0] for c in calls] == [1, 2, 3]
    for _, std, bias in calls:
        assert std == pytest.approx(0.01, rel=0.1) and bias == 0.0


def test_uniform_sampler_counts():
    labels = torch.tensor([0] * 70 + [1] * 20 + [2] * 10)
    g = torch.Generator().manual_seed(0)
    idx = uniform_cluster_sampler(labels, 99, g)
    counts = torch.bincount(labels[idx], minlength=3)
    # 99 // 3 + 1 = 34 per cluster drawn, truncated to 99 after shuffling
    assert idx.numel() == 99 and counts.sum() == 99 and counts.min() >= 32 and counts.max() <= 34
    big = idx[labels[idx] == 0]
    assert big.unique().numel() == big.numel()     # the big cluster is drawn without replacement


def test_training_is_deterministic_on_cpu():
    a = train(synthetic_config("odc", epochs=1, subset=300), progress=False)
    b = train(synthetic_config("odc", epochs=1, subset=300), progress=False)
    np.testing.assert_array_equal(a.history.iteration("loss"), b.history.iteration("loss"))
    assert torch.equal(a.memory.labels, b.memory.labels)


def test_save_load_round_trip(odc_run, tmp_path):
    odc_run.save(tmp_path / "run")
    loaded = load_run(tmp_path / "run")
    assert loaded.config == odc_run.config
    for key in odc_run.history.iteration_keys:
        np.testing.assert_array_equal(loaded.history.iteration(key), odc_run.history.iteration(key))
    for key in odc_run.history.epoch_keys:
        np.testing.assert_array_equal(loaded.history.epoch(key), odc_run.history.epoch(key))
    assert loaded.history.arrays.keys() == odc_run.history.arrays.keys()
    for key, value in odc_run.history.arrays.items():
        np.testing.assert_array_equal(loaded.history.arrays[key], value)
    for key, value in odc_run.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    assert torch.equal(loaded.memory.features, odc_run.memory.features)
    assert torch.equal(loaded.memory.labels, odc_run.memory.labels)
    # the loss weights of the loaded memory come from its real cluster sizes
    assert torch.equal(loaded.memory.counts, torch.bincount(odc_run.memory.labels, minlength=10))
    assert torch.allclose(loaded.memory.class_weights(), odc_run.memory.class_weights())
    assert (tmp_path / "run" / "history.npz").stat().st_size < 10 * 2**20
    # the history loads with plain numpy, without pickles
    with np.load(tmp_path / "run" / "history.npz", allow_pickle=False) as data:
        assert json.loads(str(data["meta"]))["config"]["method"] == "odc"


@pytest.mark.parametrize("bad, message", [
    (dict(method="kmeans"), "unknown method 'kmeans'; accepted: odc, deepcluster, coke"),
    (dict(momentum=1.5), "momentum=1.5 is outside [0, 1]"),
    (dict(num_clusters=1), "num_clusters=1 must be an integer, at least 2"),
    (dict(num_clusters=900, min_cluster=0), "num_clusters=900 exceeds the 800 training images"),
    (dict(min_cluster=100), "min_cluster x num_clusters = 100 x 10 exceeds the 800 training images; lower either"),
    (dict(epochs=0), "epochs=0 must be a positive integer"),
    (dict(lr=0.0), "lr=0.0 must be a finite number > 0"),
])
def test_bad_config_one_line_error(bad, message):
    with pytest.raises(ValueError) as err:
        train(synthetic_config(**{"method": "odc", **bad}), progress=False)
    assert str(err.value) == message


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "odc_mini", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_cli_compare_end_to_end(tmp_path):
    result = run_cli("compare", "--dataset", "synthetic", "--subset", "300", "--epochs", "2",
                     "--batch-size", "64", "--num-clusters", "10", "--min-cluster", "5",
                     "--device", "cpu", "--no-progress", "--out", str(tmp_path / "cmp"), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    for method in ("odc", "deepcluster", "coke"):
        run = load_run(tmp_path / "cmp" / method)
        assert run.config.method == method and run.history.num_epochs == 2
        # the quick profile measures kNN every 2 epochs (and always at the end)
        assert np.isnan(run.history.epoch("knn_top1")[1]) and np.isfinite(run.history.epoch("knn_top1")[[0, 2]]).all()
        assert f"{run.history.last('knn_top1'):.1%}" in result.stdout   # the results table
    assert "kNN top-1 (random init: " in result.stdout


def test_cli_bad_input_is_one_line_without_traceback(tmp_path):
    result = run_cli("train", "--method", "odc", "--momentum", "2", "--out", str(tmp_path / "x"), cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: momentum=2.0 is outside [0, 1]"
    assert not (tmp_path / "x").exists()


cifar = pytest.mark.skipif(not (default_root() / "cifar10.npz").is_file() and
                           not (ROOT / "data" / "cifar10.npz").is_file(),
                           reason="data/cifar10.npz is absent (decode ../shared/data/cifar10/cifar10-jpeg.npz)")


@cifar
def test_odc_on_real_cifar10_subset(monkeypatch):
    monkeypatch.setenv("ODC_DATA", str(ROOT / "data"))
    run = train(Config(method="odc", profile="quick", subset=1000, epochs=1, num_clusters=20,
                       min_cluster=10, batch_size=128, device="cpu", linear_probe=False,
                       snapshot_size=100), progress=False)
    h = run.history
    assert h.arrays["targets"].shape == (1000,) and h.num_epochs == 1
    assert 0.1 < h.last("knn_top1") < 1.0
    assert odc_mini.__version__ == h.meta["version"]
