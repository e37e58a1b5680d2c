"""Seed noise: how far runs of one config lie apart when only the seed changes, and whether
another run lies within that spread.

    spread = seeds.spread_of("golden-odc", exclude=[0])   # the saved runs of its other seeds
    for p in seeds.locate(my_history, spread):            # one Position per metric
        print(p.metric, p.within, p.worst_epoch)

A run of the same code on another processor follows another kernel path
(:mod:`odc_mini.run.kernels`): its numbers are not the saved run's, but they must look like one more
seed. For each metric and epoch, with the other seeds' mean ``m`` and sample standard deviation
``s``, a run is *within seed noise* when

    |value - m| <= max(k * s, floor)

with one multiplier ``k`` per metric, the larger of two:

* **the normal band**: ``t * sqrt(1 + 1/n)``, the two-sided prediction interval of one more
  normal draw from ``n`` seeds, ``t`` being Student's t quantile with ``n - 1`` degrees of freedom
  at ``1 - alpha / (2 c)`` for ``c`` comparisons (metrics x epochs): a fresh seed of unchanged
  code falls outside any of them with probability at most ``alpha`` (1 %, Bonferroni), *if* seed
  noise were normal;
* **the tails the seeds show**: seed noise is not normal. A run now and then takes another turn
  (a cluster collapses and re-forms, a k-means lands elsewhere) and its loss, churn or NMI lies 5
  to 10 standard deviations from the other seeds at some epoch; in the book's configs about one
  run in ten does. So each of the ``n`` seeds is held out in turn and placed among the others,
  and ``k`` is at least :data:`TAIL_MARGIN` times the largest ``|z|`` a held-out seed reaches in
  that metric: the seeds' own worst case, with room to spare.

``floor`` (per metric, :data:`FLOORS`) is a difference too small to change anything the book
says; it matters only where the seeds happen to agree closely. The check is meant never to call
a run wrong that is within seed noise; it catches a change that moves a metric further than any
seed does, not a small one — that is the pinned exact check's job (``tests/test_golden.py``).

With ``last_only=True`` only the last epoch is compared, and with a few metrics
(:data:`FINAL_METRICS`) ``c`` is small: with 5 other seeds the band is about 8 standard
deviations instead of hundreds for every epoch of every metric, narrow enough to fail a broken
run (labels that stop moving) while its false-alarm rate stays ``alpha`` under normal noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..history import History

# The per-epoch metrics compared, with their floors (same units as the metric: accuracies and
# churn as fractions, NMI in [0, 1], loss in nats, drift as an L2 distance between unit vectors).
FLOORS = {"loss": 0.02, "knn_top1": 0.01, "linear_top1": 0.015, "nmi_classes": 0.01,
          "nmi_previous": 0.02, "change_ratio": 0.02, "drift": 0.02}
FAMILY_ALPHA = 0.01
TAIL_MARGIN = 1.5
# The few final numbers a reader's run is judged on (chapter 8, ``locate(..., FINAL_METRICS,
# last_only=True)``): what the features are worth, how the clusters match the classes, and how
# steady the labels are.
FINAL_METRICS = ("knn_top1", "linear_top1", "nmi_classes", "nmi_previous", "change_ratio")


@dataclass
class SeedSpread:
    """Per metric, a (seeds, epochs + 1) array of the values of runs that differ only in seed."""
    seeds: list[int]
    values: dict[str, np.ndarray]

    @property
    def n(self) -> int:
        return len(self.seeds)

    def mean(self, metric: str) -> np.ndarray:
        return np.mean(self.values[metric], axis=0)

    def std(self, metric: str) -> np.ndarray:
        """Sample standard deviation over seeds (ddof = 1), per epoch."""
        return np.std(self.values[metric], axis=0, ddof=1)

    def held_out_z(self, metric: str, epochs=None) -> float:
        """The largest ``|z|`` any seed reaches, at any epoch (of ``epochs``, default all), when it
        is held out and placed among the other seeds (0 with fewer than 4 seeds: too few to hold
        one out)."""
        values = self.values[metric] if epochs is None else self.values[metric][:, epochs]
        values = values[:, ~np.isnan(values).any(axis=0)]
        if self.n < 4 or values.size == 0:
            return 0.0
        worst = 0.0
        for i in range(self.n):
            others = np.delete(values, i, axis=0)
            sd = np.std(others, axis=0, ddof=1)
            dev = np.abs(values[i] - others.mean(axis=0))
            z = np.divide(dev, sd, out=np.zeros_like(dev), where=sd > 0)
            worst = max(worst, float(z.max()))
        return worst


def spread(histories: dict[int, History], metrics=tuple(FLOORS)) -> SeedSpread:
    """The spread of ``histories`` (seed -> history of one config, same epochs): at least 3."""
    if len(histories) < 3:
        raise ValueError(f"a seed spread needs at least 3 runs; got {len(histories)}")
    epochs = {h.num_epochs for h in histories.values()}
    if len(epochs) != 1:
        raise ValueError(f"the runs have different numbers of epochs: {sorted(epochs)}")
    seeds = sorted(histories)
    values = {}
    for metric in metrics:
        if all(metric in histories[s].epoch_keys for s in seeds):
            rows = np.stack([histories[s].epoch(metric) for s in seeds])
            if not np.isnan(rows).all():
                values[metric] = rows
    return SeedSpread(seeds, values)


def spread_of(name: str, exclude=(), directory=None) -> SeedSpread:
    """The spread of the saved runs of experiment ``name`` and its other seeds
    (:func:`odc_mini.study.experiments.seed_group`), leaving out the seeds in ``exclude``."""
    from .analysis import load_groups
    group = load_groups({name: name}, directory)[name]
    return spread({seed: h for seed, h in group.items() if seed not in exclude})


def multiplier(n: int, comparisons: int, alpha: float = FAMILY_ALPHA) -> float:
    """``t * sqrt(1 + 1/n)``: the half-width of the prediction interval in units of ``s``."""
    from scipy.stats import t
    return float(t.ppf(1 - alpha / (2 * comparisons), n - 1) * math.sqrt(1 + 1 / n))


@dataclass
class Position:
    """Where one run sits in the seed spread for one metric, per compared epoch."""
    metric: str
    epochs: np.ndarray       # the epochs compared (both measured)
    value: np.ndarray        # the run's values there
    mean: np.ndarray         # the seeds' mean
    std: np.ndarray          # the seeds' sample standard deviation
    band: np.ndarray         # the accepted half-width: max(multiplier * std, floor)
    multiplier: float        # k: the band is max(k * std, floor)
    floor: float

    @property
    def deviation(self) -> np.ndarray:
        return self.value - self.mean

    @property
    def z(self) -> np.ndarray:
        """The deviation in seed standard deviations (inf where the seeds agree exactly)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.std > 0, self.deviation / self.std,
                            np.where(self.deviation == 0, 0.0, np.inf))

    @property
    def worst(self) -> int:
        """Index (into ``epochs``) of the epoch that uses most of its band."""
        return int(np.argmax(np.abs(self.deviation) / self.band))

    @property
    def worst_epoch(self) -> int:
        return int(self.epochs[self.worst])

    @property
    def within(self) -> bool:
        return bool(np.all(np.abs(self.deviation) <= self.band))

    def describe(self) -> str:
        i = self.worst
        return (f"{self.metric}: {'within' if self.within else 'OUTSIDE'} seed noise; largest "
                f"at epoch {self.worst_epoch}: {self.value[i]:.4f} vs seeds {self.mean[i]:.4f} "
                f"± {self.std[i]:.4f} (z = {self.z[i]:+.1f}, band ±{self.band[i]:.4f})")


def locate(run: History, spread_: SeedSpread, metrics=tuple(FLOORS),
           last_only: bool = False) -> list[Position]:
    """Per metric of ``metrics`` that ``spread_`` and ``run`` measured: where ``run`` sits, epoch
    by epoch (or at its last epoch alone), with the band of the module docstring (the normal
    band's family error rate: ``FAMILY_ALPHA``). Raises ValueError for runs of another length."""
    any_seed = next(iter(spread_.values.values()))
    if run.num_epochs != any_seed.shape[1] - 1:
        raise ValueError(f"the run has {run.num_epochs} epochs and the seed runs "
                         f"{any_seed.shape[1] - 1}; compare runs of the same config")
    picked = {}   # per metric, the epochs both measured (a metric the run lacks is all NaN)
    for metric in (m for m in metrics if m in spread_.values):
        both = ~np.isnan(run.epoch(metric)) & ~np.isnan(spread_.values[metric]).any(axis=0)
        both[:-1] &= not last_only
        if both.any():
            picked[metric] = both
    # the normal band, for as many comparisons as (metric, epoch) pairs are compared
    normal = multiplier(spread_.n, sum(int(both.sum()) for both in picked.values()))
    out = []
    for metric, both in picked.items():
        k = max(normal, TAIL_MARGIN * spread_.held_out_z(metric, both))
        std = spread_.std(metric)[both]
        out.append(Position(metric, np.flatnonzero(both), run.epoch(metric)[both],
                            spread_.mean(metric)[both], std,
                            np.maximum(k * std, FLOORS[metric]), k, FLOORS[metric]))
    return out

