"""Golden trajectories: the short quick-profile runs ``golden-odc`` and ``golden-deepcluster``,
re-trained on real CIFAR-10 and held to their saved runs in two ways, each for what it can show:

* **exact**, on the pinned kernel path (``odc_mini.run.kernels``) the saved runs were trained on:
  every record and every label bit-identical. It catches any change that moves a number. It
  runs where the pinned path computes what it computed for the saved runs (same torch, and the
  same kernel fingerprint: a hash of fixed torch operations, independent of odc_mini's code);
  elsewhere it is skipped with the reason.
* **statistical**, on this machine's own kernels (what a reader's run takes): every epoch's loss,
  kNN, linear probe, NMI, churn and drift within the spread of the config's other nine seeds
  (``odc_mini.study.seeds``). It holds on any processor, and catches changes of several seeds' spread.
"""
import subprocess
from pathlib import Path

import pytest
import torch

from odc_mini import train
from odc_mini.run import kernels
from odc_mini.study import experiments, saved, seeds

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
METHODS = ["odc", "deepcluster"]

pytestmark = pytest.mark.skipif(
    not (DATA / "cifar10.npz").is_file(),
    reason="data/cifar10.npz is absent (decode ../shared/data/cifar10/cifar10-jpeg.npz)")


@pytest.mark.parametrize("method", METHODS)
def test_golden_run_is_bit_identical_on_the_pinned_kernel_path(method, tmp_path):
    name = f"golden-{method}"
    book = saved.load(name)
    ok, why = kernels.pinnable()
    if not ok:
        pytest.skip(why)
    if book.provenance["torch"] != torch.__version__:
        pytest.skip(f"bit-exact holds per torch build: {name} was saved with torch "
                    f"{book.provenance['torch']}, this is {torch.__version__}")
    assert book.provenance["kernels"].startswith("pinned:"), book.provenance
    here = kernels.pinned_fingerprint()
    if here != book.provenance["kernel_fingerprint"]:
        pytest.skip(f"the pinned kernel path computes other bits on this processor "
                    f"({kernels.cpu_model()}: fingerprint {here}) than where {name} was saved "
                    f"({book.provenance['cpu']}: {book.provenance['kernel_fingerprint']}); "
                    "the seed-noise check still applies")
    # The maintainers' own command, into a scratch folder: it starts a pinned process itself.
    command, env = kernels.pinned_command(
        ["experiment", name, "--work", str(tmp_path / "work"), "--saved-dir",
         str(tmp_path / "saved"), "--data-root", str(DATA), "--no-progress"])
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    mine = saved.load(name, tmp_path / "saved")
    assert mine.provenance["kernels"] == book.provenance["kernels"]
    differ = saved.differences(mine.history, book.history)
    assert not differ, f"{name} moved on the pinned kernel path:\n" + "\n".join(differ)


@pytest.mark.parametrize("method", METHODS)
def test_golden_run_is_within_seed_noise_on_this_machines_kernels(method):
    name = f"golden-{method}"
    config = experiments.get(name).config(data_root=str(DATA), device="cpu")
    mine = train(config, progress=False).history
    spread = seeds.spread_of(name, exclude=[config.seed])      # the other seeds, not its own
    positions = seeds.locate(mine, spread)
    report = "\n".join(p.describe() for p in positions)
    print(f"{name} on {kernels.describe()} vs {spread.n} other seeds:\n{report}")
    assert {p.metric for p in positions} == set(seeds.FLOORS)
    for p in positions:
        assert len(p.epochs) >= 2, p            # kNN every epoch, the linear probe at 0 and 3
    assert all(p.within for p in positions), report
    finals = seeds.locate(mine, spread, seeds.FINAL_METRICS, last_only=True)   # chapter 8's
    assert [p.metric for p in finals] == list(seeds.FINAL_METRICS)
    assert all(p.within for p in finals), "\n".join(p.describe() for p in finals)


def broken_runs():
    """ODC broken two ways: a memory that hardly moves, and labels never re-assigned."""
    yield "momentum 0.01", {"momentum": 0.01}, None
    frozen = lambda self, idx, feats, iteration: (torch.zeros(()), 0)   # no memory update
    yield "labels never re-assigned", {}, frozen


@pytest.mark.parametrize("why, overrides, step", list(broken_runs()),
                         ids=[why for why, _, _ in broken_runs()])
def test_a_broken_odc_run_fails_the_final_check(why, overrides, step, monkeypatch):
    from odc_mini.memory import ODCMemory
    if step is not None:
        monkeypatch.setattr(ODCMemory, "step", step)
    config = experiments.get("golden-odc").config(data_root=str(DATA), device="cpu", **overrides)
    broken = train(config, progress=False).history
    finals = seeds.locate(broken, seeds.spread_of("golden-odc", exclude=[0]), seeds.FINAL_METRICS,
                          last_only=True)
    report = "\n".join(p.describe() for p in finals)
    print(f"golden-odc with {why}:\n{report}")
    assert not all(p.within for p in finals), report
