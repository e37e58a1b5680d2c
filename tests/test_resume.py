"""Checkpoints and exact resume: runs killed for real (SIGKILL, SIGINT) in the middle of an epoch
end bit-identical to the same runs left alone."""
import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from odc_mini import Config, load_run, train
from odc_mini.run import runfolder
from odc_mini.history import History

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "resume_worker.py"
TIMING = {"train_seconds", "wall_seconds", "eval_seconds"}   # the only columns allowed to differ
ITERS = 320 // 32                                               # steps per epoch below


def tiny(method, **kw):
    values = dict(method=method, profile="quick", dataset="synthetic", subset=320, epochs=3,
                  batch_size=32, lr=0.05, num_clusters=10, min_cluster=5, pca_dim=16,
                  snapshot_size=100, eval_batch_size=320, eval_interval=1, device="cpu", seed=0,
                  linear_probe=False)
    values.update(kw)
    return Config(**values)


def worker(cfg: Config, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(WORKER), json.dumps(dataclasses.asdict(cfg)), str(out),
                           *extra], capture_output=True, text=True, timeout=600, cwd=ROOT)


def assert_same_run(a_dir: Path, b_dir: Path) -> None:
    """Weights, memory, labels and history equal bit for bit (timings aside)."""
    a, b = load_run(a_dir), load_run(b_dir)
    assert a.config == b.config
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    if a.memory is not None:
        for name in ("features", "labels", "centroids", "counts"):
            assert torch.equal(getattr(a.memory, name), getattr(b.memory, name)), name
    ha, hb = a.history, b.history
    assert ha.iteration_keys == hb.iteration_keys
    for key in ha.iteration_keys:
        np.testing.assert_array_equal(ha.iteration(key), hb.iteration(key), err_msg=key)
    assert ha.epoch_keys == hb.epoch_keys
    for key in set(ha.epoch_keys) - TIMING:
        np.testing.assert_array_equal(ha.epoch(key), hb.epoch(key), err_msg=key)
    assert ha.arrays.keys() == hb.arrays.keys()
    for key in ha.arrays:
        np.testing.assert_array_equal(ha.arrays[key], hb.arrays[key], err_msg=key)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Each method trained once without interruption, in a process of its own."""
    runs = {}
    for method in ("odc", "deepcluster"):
        out = tmp_path_factory.mktemp(method) / "run"
        result = worker(tiny(method), out)
        assert result.returncode == 0, result.stderr
        runs[method] = out
    return runs


@pytest.mark.parametrize("method", ["odc", "deepcluster"])
def test_sigkill_mid_epoch_then_resume_is_bit_identical(method, uninterrupted, tmp_path):
    out = tmp_path / "run"
    at = ITERS + 4           # in epoch 2, after its 4th step's SGD update, before the memory's
    killed = worker(tiny(method), out, "--signal", "KILL", "--at", str(at))
    assert killed.returncode == -signal.SIGKILL
    state = runfolder.read_checkpoint(out / runfolder.CHECKPOINT)
    assert state["epoch"] == 1 and state["partial"] is None      # the last epoch end survived
    assert not (out / "config.json").exists()
    resumed = worker(tiny(method), out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert not (out / runfolder.CHECKPOINT).exists()             # replaced by the finished run
    assert_same_run(uninterrupted[method], out)
    assert History.load(out / "history.npz").meta["resumed"] == [{"epoch": 1, "step": 0}]


@pytest.mark.parametrize("method", ["odc", "deepcluster"])
def test_sigint_mid_step_checkpoints_after_the_step_and_resumes_bit_identical(method, uninterrupted,
                                                                              tmp_path):
    out = tmp_path / "run"
    at = 2 * ITERS + 3       # epoch 3, in the middle of its 3rd step
    stopped = worker(tiny(method), out, "--signal", "INT", "--at", str(at))
    assert stopped.returncode == 130, stopped.stderr
    assert "stopped in epoch 3 of 3, after step 3 of 10" in stopped.stderr
    assert "--resume" in stopped.stderr
    state = runfolder.read_checkpoint(out / runfolder.CHECKPOINT)
    assert state["epoch"] == 2 and state["partial"]["step"] == 3
    assert state["partial"]["rows"].shape == (3, 4)
    resumed = worker(tiny(method), out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(uninterrupted[method], out)


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(uninterrupted, tmp_path):
    out = tmp_path / "run"
    killed = worker(tiny("odc"), out, "--kill-in-save", "3")    # 1: initial, 2: epoch 1, 3: epoch 2
    assert killed.returncode == -signal.SIGKILL
    assert len(list(out.glob(".checkpoint.pt.*.tmp"))) == 1     # the half-written file
    assert runfolder.read_checkpoint(out / runfolder.CHECKPOINT)["epoch"] == 1
    resumed = worker(tiny("odc"), out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert not list(out.glob(".*"))
    assert_same_run(uninterrupted["odc"], out)


def test_cli_killed_from_outside_resumes_bit_identical(uninterrupted, tmp_path):
    """The whole command line, killed by another process as soon as epoch 1 is checkpointed."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "odc_mini", "train", "--method", "odc", "--dataset", "synthetic",
            "--subset", "320", "--epochs", "3", "--batch-size", "32", "--lr", "0.05",
            "--num-clusters", "10", "--min-cluster", "5", "--pca-dim", "16", "--device", "cpu",
            "--no-progress", "--out", str(out)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        path = out / runfolder.CHECKPOINT
        if path.is_file() and runfolder.read_checkpoint(path, mmap=True)["epoch"] >= 1:
            break
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    resumed = subprocess.run(args + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    # The same config trained in one go by the worker.
    cfg = load_run(out).config
    reference = tmp_path / "reference"
    assert worker(cfg, reference).returncode == 0
    assert_same_run(reference, out)


def test_checkpoint_holds_every_piece_of_state(tmp_path):
    """The checkpoint after epoch 1 against the live objects of a run stopped there."""
    seen = {}

    def grab(history):
        if history.num_epochs == 1:
            seen["state"] = runfolder.read_checkpoint(tmp_path / "run" / runfolder.CHECKPOINT)
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(tiny("odc"), progress=False, callback=grab, out=tmp_path / "run")
    state = seen["state"]
    assert state["version"] and state["config"] == tiny("odc").to_dict()
    method = state["method"]           # the method module's state dict: network, memories, optimiser
    memory = {k.removeprefix("memory."): v for k, v in method.items() if k.startswith("memory.")}
    assert set(memory) == {"features", "labels", "centroids", "sums", "counts", "small_pending"}
    assert any(k.startswith("model.") for k in method)
    extra = method["_extra_state"]
    assert extra["iteration"] == ITERS
    # running sums and counts agree with a recount of the saved features and labels
    counts = torch.bincount(memory["labels"], minlength=10)
    assert torch.equal(memory["counts"], counts)
    sums = torch.zeros(10, 256, dtype=torch.float64).index_add_(0, memory["labels"], memory["features"].double())
    assert torch.allclose(memory["sums"], sums, atol=1e-9)
    w = (counts.float() + 1e-5).pow(-0.5)
    assert torch.allclose(method["weights"], w / w.sum())
    assert set(state["rng"]["generators"]) == {"sampler", "augment", "order"}
    assert {"torch", "numpy", "python"} <= set(state["rng"])
    assert extra["optimizer"]["state"]            # SGD momentum buffers
    history = History.from_bytes(state["history"].numpy().tobytes())
    assert history.num_epochs == 1 and len(history.iteration("loss")) == ITERS
