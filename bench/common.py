"""Timing helpers shared by the benchmark scripts.

Every benchmark compares two things *in the same run*, interleaved (A, B, A, B, ...), so that
whatever else the machine is doing affects both alike; it reports the median time of each and
their ratio. Timings synchronise the GPU before reading the clock, so they measure work done,
not work queued.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

import torch


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued GPU work (a no-op on the CPU)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device=None) -> float:
    """Seconds one call of ``fn`` takes, GPU work included."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def compare(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1,
            device=None) -> dict[str, float]:
    """Median seconds per call of each function, the calls interleaved round-robin."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
    return {name: statistics.median(values) for name, values in times.items()}


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain-text table with right-aligned columns (floats as given by the caller)."""
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for j, row in enumerate(cells):
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def verdict(ratio: float, goal: float, higher_is_better: bool = False) -> str:
    ok = ratio >= goal if higher_is_better else ratio <= goal
    return f"{'meets' if ok else 'MISSES'} goal {'>=' if higher_is_better else '<='} {goal:g}"


# ---------------------------------------------------------------------------------------------
# What the training benchmarks share: data, and the plain supervised step ODC is measured against
# ---------------------------------------------------------------------------------------------

import dataclasses  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))   # run from a clone without installing

from odc_mini.config import Config  # noqa: E402
from odc_mini.data import load_dataset  # noqa: E402
from odc_mini.method import Method, Step  # noqa: E402


def bench_data(n: int, seed: int = 0, data_root: str | None = None):
    """``n`` CIFAR-10 training images (stratified) when the local copy exists, else the synthetic
    gratings (timings do not depend on the pictures, but ODC's small-cluster repairs do, so real
    images are preferred). Returns the image set and the data set's name."""
    if data_root is None and not os.environ.get("ODC_DATA"):
        data_root = str(REPO / "data")       # the clone's data folder, wherever the script runs
    try:
        train_set, _ = load_dataset("cifar10", data_root, n, seed, download=False)
        return train_set, "cifar10"
    except (FileNotFoundError, OSError, ValueError):
        train_set, _ = load_dataset("synthetic", None, n, seed, download=False)
        return train_set, "synthetic"


def bench_config(device: torch.device, n: int, **overrides) -> tuple[Config, str]:
    """The budget a device gets (:func:`device_config`) on ``n`` training images of
    :func:`bench_data`'s data set. Returns the config and the data set's name."""
    data_root = overrides.pop("data_root", None)
    if data_root is None and not os.environ.get("ODC_DATA"):
        data_root = str(REPO / "data")
    _, dataset = bench_data(n, data_root=data_root)
    return device_config(device, subset=n, dataset=dataset, data_root=data_root,
                         **overrides), dataset


class Supervised(Method):
    """Plain supervised training: the same network, optimiser, batch and forward/backward as the
    clustering methods, but the targets are the true classes, fixed from the start."""

    name = "supervised"

    def __init__(self, model, images, targets: torch.Tensor, cfg: Config, generator, **precision):
        super().__init__(model, images, cfg, generator, **precision)
        self.targets = targets.to(images.device)

    def setup(self) -> None:
        pass

    def start_epoch(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.num_samples, generator=self.generator)

    def train_step(self, x: torch.Tensor, idx: torch.Tensor) -> Step:
        _, logits = self.forward(x)
        loss, acc, finite = self.sgd_step(logits, self.targets[idx])
        return Step(loss, acc, torch.zeros((), device=x.device), finite)

    def pseudo_labels(self) -> torch.Tensor:
        return self.targets


def make_method(name: str, cfg: Config, device: torch.device) -> Method:
    """The start of ``cfg``'s run (``odc_mini.run.start.build``) with method ``name`` ("supervised": the
    true classes as fixed targets), set up (ODC: initial clustering) and ready to step."""
    from odc_mini.run.start import build

    start = build(dataclasses.replace(cfg, method="odc" if name == "supervised" else name), device)
    method = start.method
    if name == "supervised":
        method = Supervised(start.model, start.train_set.images, start.train_set.labels, cfg,
                            start.generators["sampler"], autocast=method.autocast,
                            scaler=method.scaler)
    if cfg.compile:
        object.__setattr__(method, "forward_model", torch.compile(method.forward_model))
    method.setup()
    start.model.train()
    return method


def device_config(device: torch.device, **overrides) -> Config:
    """The budget a device gets: the quick profile's small CNN on the CPU, the full profile's
    ResNet-18 on a GPU."""
    profile = "full" if device.type == "cuda" else "quick"
    return Config(profile=profile, device=device.type, **overrides)
