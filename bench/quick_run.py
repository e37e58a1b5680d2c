"""A whole quick run against the machine's own limits: where its time goes.

In one process, in this order:

1. the machine's dense matmul rate (2048 x 2048, torch's threads) in fp32 and in bf16;
2. the *bare step*: one plain supervised SGD step of the run's network on a fixed, already
   augmented batch, in the run's precision (median of blocks), its FLOPs per image (torch's
   ``FlopCounterMode``) and its model FLOP utilisation (achieved FLOP/s / the matmul rate of the
   same precision);
3. each method's quick run through ``odc_mini.train`` exactly as the CLI trains it (run folder,
   checkpoints, evaluations), with its wall time split into phases. Every phase's time is
   *exclusive* (a call's time less that of the timed calls inside it), so the phases add up to
   the wall time; what no timer covers is the loop itself (batch slicing, the progress bar).

Two ratios to the bare step (sampled during each run: a few steps at every epoch end):

* **the run's training step**: the time of everything done per step (augmentation, forward,
  backward and update, ODC's memory work, the loop) over the steps taken. Goal <= 1.15.
* **the whole run per step**: the run's wall time over its steps, so also the start, the
  evaluations, the checkpoints and DeepCluster's per-epoch extraction and k-means (its
  algorithm: it extracts every training image once per epoch).

    python bench/quick_run.py                        # both methods, precision "auto"
    python bench/quick_run.py --precision fp32 --methods odc
    python bench/quick_run.py --epochs 7             # a shorter run, same per-step costs
    python bench/quick_run.py --tiny                 # seconds; for the test suite

The wall times of the quick runs through the CLI (``python -m odc_mini train``) add the
interpreter's start and imports to ``wall``; time them with ``/usr/bin/time``.
"""
from __future__ import annotations

import argparse
import json
import dataclasses
import statistics
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import REPO, compare, make_method, print_table, verdict

import odc_mini
import odc_mini.recorder
import odc_mini.run.runfolder
import odc_mini.run.session
import sys
from odc_mini.augment import AugmentConfig, augment
from odc_mini.config import Config
from odc_mini.deepcluster import DeepCluster
from odc_mini.memory import ODCMemory
from odc_mini.method import Method
from odc_mini.odc import ODC
from odc_mini.recorder import Recorder
from odc_mini.run import kernels
from odc_mini.run.precision import resolve_precision

GOAL = 1.15
# What is timed, in the order of the breakdown: (module name or class, function, phase). The
# loop's module is named by string: ``odc_mini.train`` is also the name of the function.
TIMED = [
    ("odc_mini.run.session", "build", "start: data, network, BN recalibration"),
    ("odc_mini.train", "augment", "augmentation"),
    (Method, "forward", "forward"),
    (Method, "sgd_step", "loss, backward, SGD update"),
    (ODCMemory, "step", "ODC memory step"),
    (ODC, "refresh_weights", "ODC loss weights"),
    (ODC, "setup", "ODC initial memory (rest)"),
    (Method, "extract", "feature extraction, training images"),
    ("odc_mini.recorder", "embed_images", "feature extraction, test images"),
    (Method, "kmeans_labels", "k-means"),
    (DeepCluster, "start_epoch", "DeepCluster PCA, matching, sampler"),
    (Recorder, "measure_features", "evaluation: kNN, probe, snapshots"),
    (Recorder, "measure_clusters", "evaluation: NMI, sizes, drift"),
    (odc_mini.run.session.Session, "_save_checkpoint", "checkpoints"),
    ("odc_mini.run.runfolder", "finish", "saving the finished run")]
PHASES = [phase for _, _, phase in TIMED] + ["loop, progress, other"]
# The phases of a training step: what the bare step does, and what the run adds to every step.
STEP_PHASES = ("augmentation", "forward", "loss, backward, SGD update", "ODC memory step",
               "ODC loss weights", "loop, progress, other")


def matmul_rate(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n x n matmul on the CPU (median of ``repeats`` after a warm-up)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times)


class BareStep:
    """The plain supervised step of ``cfg``'s network and batch on a fixed, augmented batch.

    It is timed *during* each run, a few steps at every epoch end (the run's callback; that time
    is taken out of the run's), so that the run and its yardstick share whatever else the
    machine is doing: on a shared 2-core machine the speed of both drifts by 10-40 % within
    minutes. FLOPs are counted once."""

    def __init__(self, cfg: Config, steps: int):
        self.method = make_method("supervised", cfg, torch.device("cpu"))
        self.x = augment(self.method.images[:cfg.batch_size], AugmentConfig.of(cfg),
                         torch.Generator().manual_seed(0))
        self.idx = torch.arange(cfg.batch_size)
        self.steps = steps
        self.samples: dict[str, list[float]] = defaultdict(list)   # seconds per step, per run
        with FlopCounterMode(display=False) as counter:
            self.method.train_step(self.x, self.idx)
        self.flops = counter.get_total_flops()
        self.sample("warm-up")

    def sample(self, run: str) -> None:
        t0 = time.perf_counter()
        for _ in range(self.steps):
            self.method.train_step(self.x, self.idx)
        self.samples[run].append((time.perf_counter() - t0) / self.steps)

    def seconds(self, run: str) -> float:
        """Mean seconds per bare step over the samples taken during ``run``."""
        return statistics.fmean(self.samples[run])


class Phases:
    """Exclusive wall seconds per phase, from wrappers around the functions a run calls."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.inner: list[float] = []        # time of timed calls inside each open call
        self.patched: list[tuple[object, str, object]] = []
        self.paused = False                 # True while the bare step is sampled

    def wrap(self, owner, name: str, phase: str) -> None:
        original = owner.__dict__[name]

        def timed(*args, **kwargs):
            if self.paused:
                return original(*args, **kwargs)
            t0 = time.perf_counter()
            self.inner.append(0.0)
            try:
                return original(*args, **kwargs)
            finally:
                total, inner = time.perf_counter() - t0, self.inner.pop()
                self.seconds[phase] += total - inner
                if self.inner:
                    self.inner[-1] += total

        self.patched.append((owner, name, original))
        setattr(owner, name, timed)

    @contextmanager
    def installed(self):
        for owner, name, phase in TIMED:

            self.wrap(sys.modules.get(owner, owner), name, phase)
        try:
            yield self
        finally:
            for owner, name, original in reversed(self.patched):
                setattr(owner, name, original)
            self.patched.clear()


def timed_run(cfg: Config, bare: BareStep) -> dict:
    """One run through ``odc_mini.train`` (a run folder, as the CLI makes), timed by phase, with
    bare steps sampled at every epoch end (their time is not the run's)."""
    with tempfile.TemporaryDirectory() as tmp, Phases().installed() as phases:
        sampling = []

        def callback(history):
            t0 = time.perf_counter()
            phases.paused = True            # the bare step's passes are not the run's
            bare.sample(cfg.method)
            phases.paused = False
            sampling.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        run = odc_mini.train(cfg, progress=False, out=Path(tmp) / "run", callback=callback)
        wall = time.perf_counter() - t0 - sum(sampling)
    steps = len(run.history.iteration("loss"))
    seconds = dict(phases.seconds)
    seconds["loop, progress, other"] = wall - sum(seconds.values())
    return {"wall": wall, "steps": steps, "seconds": seconds, "bare": bare.seconds(cfg.method),
            "bare_samples": len(bare.samples[cfg.method]),
            "precision": run.history.meta["precision"],
            "knn": run.history.epoch("knn_top1")[-1] - run.history.epoch("knn_top1")[0]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", nargs="+", default=["odc", "deepcluster"])
    p.add_argument("--precision", default="auto", help="auto, bf16 or fp32 (default: auto)")
    p.add_argument("--epochs", type=int, default=None, help="default: the quick profile's")
    p.add_argument("--steps", type=int, default=4, help="bare steps sampled per epoch")
    p.add_argument("--tiny", action="store_true", help="a few seconds, for tests")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    a = p.parse_args(argv)
    cpu = torch.device("cpu")
    overrides = dict(data_root=str(REPO / "data"), precision=a.precision, device="cpu")
    if a.epochs:
        overrides["epochs"] = a.epochs
    if a.tiny:
        overrides.update(dataset="synthetic", subset=256, epochs=2, batch_size=32, num_clusters=10,
                         min_cluster=2, eval_batch_size=128, eval_interval=1, snapshot_size=64)
        a.steps = 2
    try:
        cfg = Config(profile="quick", **overrides).validate()
        odc_mini.data.load_dataset(cfg.dataset, cfg.data_root, cfg.subset, cfg.seed, download=False)
    except (FileNotFoundError, OSError, ValueError):     # no local CIFAR-10: the synthetic set
        cfg = Config(profile="quick", **{**overrides, "dataset": "synthetic"}).validate()
    precision = resolve_precision(cfg.precision, cpu)
    rates = [(matmul_rate(torch.float32), matmul_rate(torch.bfloat16))]
    bare = BareStep(cfg, a.steps)
    runs = {m: timed_run(dataclasses.replace(cfg, method=m), bare) for m in a.methods}
    rates.append((matmul_rate(torch.float32), matmul_rate(torch.bfloat16)))   # before and after
    peak = {"fp32": statistics.fmean(r[0] for r in rates),
            "bf16": statistics.fmean(r[1] for r in rates)}
    bare_all = statistics.fmean(t for m in a.methods for t in bare.samples[m])

    features = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
                        if f in kernels.cpu_flags()) or "none reported"
    print(f"\nmachine: {kernels.cpu_model()}; {torch.get_num_threads()} threads; "
          f"CPU features: {features}; precision auto -> {resolve_precision('auto', cpu)}")
    flop_rate = bare.flops / bare_all
    print_table(f"the machine's limit and the bare step ({cfg.arch}, batch {cfg.batch_size}, "
                f"{cfg.dataset}, {precision}; means over the runs)",
                ["what", "value"],
                [["matmul 2048^2, fp32 (before, after)",
                  ", ".join(f"{r[0] / 1e9:,.0f}" for r in rates) + " GFLOP/s"],
                 ["matmul 2048^2, bf16 (before, after)",
                  ", ".join(f"{r[1] / 1e9:,.0f}" for r in rates) + " GFLOP/s"],
                 ["bare step", f"{1e3 * bare_all:.1f} ms ({cfg.batch_size / bare_all:,.0f} img/s)"],
                 ["bare step FLOPs per image", f"{bare.flops / cfg.batch_size / 1e6:.1f} M"],
                 ["bare step model FLOP utilisation",
                  f"{flop_rate / 1e9:,.0f} GFLOP/s = {flop_rate / peak[precision]:.2f} of the "
                  f"{precision} matmul rate"]])
    phases = [ph for ph in PHASES if any(ph in r["seconds"] for r in runs.values())]
    rows = [[ph] + [f"{r['seconds'].get(ph, 0.0):7.1f} s {100 * r['seconds'].get(ph, 0.0) / r['wall']:5.1f} %"
                    for r in runs.values()] for ph in phases]
    step = {m: sum(r["seconds"].get(ph, 0.0) for ph in STEP_PHASES) / r["steps"]
            for m, r in runs.items()}
    ratios = {m: step[m] / r["bare"] for m, r in runs.items()}
    rows += [["wall (odc_mini.train, less the bare samples)"] + [f"{r['wall']:7.1f} s" for r in runs.values()],
             ["training steps"] + [f"{r['steps']:,}" for r in runs.values()],
             ["bare step during the run (mean)"] +
             [f"{1e3 * r['bare']:.1f} ms x {r['bare_samples'] * a.steps}" for r in runs.values()],
             ["bare steps alone"] + [f"{r['steps'] * r['bare']:7.1f} s" for r in runs.values()],
             ["run's training step / bare step"] + [f"{q:.3f}" for q in ratios.values()],
             ["whole run per step / bare step"] +
             [f"{r['wall'] / (r['steps'] * r['bare']):.3f}" for r in runs.values()],
             ["kNN gain (points)"] + [f"{100 * r['knn']:+.1f}" for r in runs.values()]]
    print_table(f"where a quick run's time goes ({precision}; the run's own precision record: "
                f"{', '.join(sorted({r['precision'] for r in runs.values()}))})",
                ["phase"] + list(runs), rows)
    for m, q in ratios.items():
        print(f"{m}: the run's training step (augmentation, passes, memory, loop) / bare step: "
              f"{q:.3f} ({verdict(q, GOAL)})")
    result = {"precision": precision, "peak": peak, "rates": rates, "bare_seconds": bare_all,
              "bare_flops": bare.flops, "batch_size": cfg.batch_size, "steps_per_sample": a.steps,
              "runs": runs, "ratios": ratios}
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
