"""Several processes with torchrun (gloo on the CPU, 2 processes): every rank holds the same
memory, labels and weights; the run equals one process with the whole batch; rank 0 alone
writes; the sharded BatchNorm and Dropout equal the plain layers on the whole batch."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from odc_mini import load_run
from odc_mini.run import runfolder

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = str(Path(sys.executable).parent / "torchrun")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}    # two processes on two cores


def tiny(method: str) -> dict:
    # 4 steps of 64 images per epoch, 2 epochs. The step size is kept small because training
    # amplifies rounding: with lr 0.05, two one-process runs that differ only in their thread
    # count (so in the order of their float sums) were 1e-4 apart in loss after 4 steps. fp32,
    # not "auto": the tolerances below are those of float32 sums in another order, and auto is
    # bf16 on a processor with bf16 instructions, whose rounding is 2^16 times coarser.
    return dict(method=method, profile="quick", dataset="synthetic", subset=256, epochs=2,
                batch_size=64, lr=0.02, num_clusters=8, min_cluster=4, pca_dim=16,
                snapshot_size=64, eval_batch_size=256, eval_interval=1, device="cpu", seed=0,
                linear_probe=False, precision="fp32")


def launch(config: dict, out: Path, dump: Path, processes: int) -> None:
    worker = [str(ROOT / "tests" / "ddp_worker.py"), json.dumps(config), str(out), str(dump)]
    cmd = ([TORCHRUN, "--standalone", f"--nproc_per_node={processes}", *worker] if processes > 1
           else [sys.executable, *worker])
    result = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module", params=["odc", "deepcluster", "coke"])
def runs(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    launch(tiny(request.param), root / "out2", root / "dump2", processes=2)
    launch(tiny(request.param), root / "out1", root / "dump1", processes=1)
    return {"method": request.param, "root": root,
            "ranks": [torch.load(root / "dump2" / f"rank{r}.pt") for r in (0, 1)],
            "one": torch.load(root / "dump1" / "rank0.pt")}


def tensors(held: dict) -> dict:
    flat = {k: v for k, v in held.items() if isinstance(v, torch.Tensor)}
    flat.update({f"model.{k}": v for k, v in held["model"].items()})
    return flat


def test_every_rank_holds_the_same_state(runs):
    a, b = (tensors(r) for r in runs["ranks"])
    assert a.keys() == b.keys()
    if runs["method"] == "odc":
        assert {"features", "memory_labels", "centroids", "counts", "weights"} <= a.keys()
    for key in a:                              # bit for bit (NaN: DeepCluster's first churn)
        assert torch.equal(a[key].isnan(), b[key].isnan()) if a[key].is_floating_point() else True
        assert torch.equal(a[key].nan_to_num(), b[key].nan_to_num()), key
    assert runs["ranks"][0]["processes"] == 2 and runs["one"]["processes"] == 1


def test_two_processes_equal_one_process_with_the_whole_batch(runs):
    two, one = runs["ranks"][0], runs["one"]
    if runs["method"] == "coke":
        # CoKe amplifies rounding far more than ODC (an argmax over cosines plus duals, logits
        # over a temperature of 0.1): one process run with 1 and with 2 threads, so only the
        # order of its float sums differs, was 1.3e-2 apart in loss after 8 steps and 12 of 256
        # labels apart. So the check is the first epoch, before a flipped near-tie can spread:
        # the same churn at every step and the same loss at the first two.
        torch.testing.assert_close(two["loss"][:2], one["loss"][:2], atol=1e-4, rtol=0)
        torch.testing.assert_close(two["change_ratio"][:4], one["change_ratio"][:4])
        return
    assert torch.equal(two["labels"], one["labels"])              # the final pseudo-labels
    # Weights and features: within float tolerance (sums in another order), about ten times
    # the difference between two one-process runs with 1 and 2 threads.
    for key, value in one["model"].items():
        if value.is_floating_point():
            torch.testing.assert_close(two["model"][key], value, atol=2e-3, rtol=1e-3, msg=key)
        else:
            assert torch.equal(two["model"][key], value), key
    torch.testing.assert_close(two["loss"], one["loss"], atol=1e-4, rtol=0)
    torch.testing.assert_close(two["change_ratio"], one["change_ratio"], equal_nan=True)
    if runs["method"] == "odc":
        assert torch.equal(two["memory_labels"], one["memory_labels"])
        assert torch.equal(two["counts"], one["counts"])
        torch.testing.assert_close(two["features"], one["features"], atol=1e-3, rtol=0)
        torch.testing.assert_close(two["centroids"], one["centroids"], atol=1e-3, rtol=0)
        torch.testing.assert_close(two["weights"], one["weights"])


def test_rank_0_alone_writes(runs):
    rank0, rank1 = (r["writes"] for r in runs["ranks"])
    assert rank1 == []
    assert rank0.count("save") == 1 and rank0.count("write_checkpoint") == 3   # initial + 2 epochs
    out = runs["root"] / "out2"
    names = {"config.json", "history.npz", "model.pt"} | ({"memory.pt"} if runs["method"] == "odc" else set())
    assert {p.name for p in out.iterdir()} == names
    run = load_run(out)
    assert run.history.meta["processes"] == 2 and run.history.num_epochs == 2


def test_sharded_layers_equal_the_plain_layers_on_the_whole_batch(tmp_path):
    result = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node=2",
                             str(ROOT / "tests" / "ddp_layers.py"), str(tmp_path / "r.json")],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    diffs = json.loads((tmp_path / "r.json").read_text())
    assert diffs.pop("types") == ["ShardedBatchNorm", "ShardedDropout"]
    assert 0.3 < diffs.pop("dropout_kept") < 0.7
    assert diffs.pop("dropout") == 0.0                      # the very mask of one process
    for key, value in diffs.items():                        # BN: float rounding only
        assert value < 1e-5, (key, value)


def torchrun_cli(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "odc_mini", *args],
                          cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


CLI_FLAGS = ["train", "--method", "odc", "--dataset", "synthetic", "--subset", "256", "--epochs", "1",
             "--batch-size", "64", "--num-clusters", "8", "--min-cluster", "4", "--device", "cpu",
             "--no-progress"]


def test_torchrun_command_line(tmp_path):
    result = torchrun_cli(*CLI_FLAGS, "--out", str(tmp_path / "run"), cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("odc: saved to") == 1 and result.stdout.count("kNN top-1 (random init") == 1
    run = load_run(tmp_path / "run")
    assert run.config.batch_size == 64 and run.history.num_epochs == 1
    assert run.history.meta["processes"] == 2


def test_batch_that_does_not_split_evenly(tmp_path):
    result = torchrun_cli(*CLI_FLAGS, "--batch-size", "63", "--out", str(tmp_path / "run"), cwd=ROOT)
    assert result.returncode != 0
    assert ("error: batch_size=63 is not a multiple of the 2 processes; each takes an equal share "
            "of every batch") in result.stderr
    assert not (tmp_path / "run").exists()


def test_torchrun_interrupted_then_resumed_is_bit_identical(tmp_path):
    """Ctrl-C reaches torchrun, which passes it on to its workers: they finish the step, rank 0
    checkpoints, and --resume ends where the uninterrupted run ends."""
    from test_resume import assert_same_run   # the same comparison as the one-process tests

    flags = [*CLI_FLAGS, "--epochs", "3"]
    reference = torchrun_cli(*flags, "--out", str(tmp_path / "reference"), cwd=ROOT)
    assert reference.returncode == 0, reference.stderr[-3000:]
    out = tmp_path / "run"
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "odc_mini", *flags, "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        path = out / runfolder.CHECKPOINT
        if path.is_file() and runfolder.read_checkpoint(path, mmap=True)["epoch"] >= 1:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, "the run ended before the signal"
    assert "SIGINT; finishing this step and saving a checkpoint" in err
    state = runfolder.read_checkpoint(out / runfolder.CHECKPOINT)
    assert state["epoch"] >= 1
    resumed = torchrun_cli(*flags, "--out", str(out), "--resume", cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(tmp_path / "reference", out)
