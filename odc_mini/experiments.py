"""The experiments behind the book's numbers: each a name, a config and what its saved run keeps.

    python -m odc_mini experiment --list
    python -m odc_mini experiment quick-odc-k100-m0.5         # train it here and save it

Every saved run in ``odc_mini/saved_runs/`` (see :mod:`odc_mini.saved`) is one of these, trained by
the command its ``provenance.json`` records. Chapters look runs up by config, so a chapter that
asks for the config of an experiment replays its saved run instead of training.

* ``quick-*``: the quick profile (10,000 images, small CNN, 10 epochs), one knob at a time:
  K ∈ {10, 100, 1000} for both methods at the default memory momentum m = 0.5, and, for ODC,
  m ∈ {0.1, 0.5, 0.9} at the default K = 100. ``min_cluster`` keeps the profile's ratio
  to the mean cluster size N/K (15 at K = 100, so 150 at K = 10 and 2 at K = 1000; the profile's
  15 at K = 1000 would ask for 15,000 images in clusters of at least 15, more than there are).
  The two K = 100, m = 0.5 runs are the chapters' own quick runs.
* ``cpu50k-*``: the quick profile's network and settings on all 50,000 images for 50 epochs, a
  background run of about an hour per method on a 2-core CPU (checkpointed: an interrupted run
  continues where it stopped when the command is run again).
* ``gpu-*``: the full profile (ResNet-18, all of CIFAR-10) on one GPU, by ``bench/gpu_run.py``.
* ``golden-*``: short quick-profile runs that ``tests/test_golden.py`` re-runs on every CI
  build: bit for bit on the pinned kernel path (:mod:`odc_mini.kernels`), which they are
  trained on, and against the spread of their seeds (``golden-*-seedS``) on the machine's own.
* ``*-seedS``: the same config with seed S. A config's seeds (:func:`seed_group`) measure the
  noise that any comparison with it must stand out from (:mod:`odc_mini.seeds`).
* ``ablation-*``: chapter 7's tiny sweeps (1,200 images, 3 epochs), one knob at a time.
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import Config

QUICK_KS = (10, 100, 1000)
QUICK_MOMENTA = (0.1, 0.5, 0.9)

# Chapter 7: a base run and one sweep per ODC knob (each sweep passes through the base value).
ABLATION_BASE = dict(subset=1200, epochs=3, batch_size=64, num_clusters=30, min_cluster=10,
                     eval_interval=3, linear_probe=False, snapshot_size=500)
ABLATION_SWEEPS = {"momentum": [0.1, 0.5, 0.9],
                   "num_clusters": [10, 30, 100],
                   "min_cluster": [0, 10, 30],
                   "centroid_interval": [1, 10, 50]}

# The golden runs: short enough for every CI build (15 iterations per epoch), long enough for
# every per-epoch record (kNN and the linear probe each epoch, NMI between epochs, drift).
GOLDEN = dict(profile="quick", subset=2000, epochs=3, num_clusters=20, min_cluster=15,
              eval_interval=1, snapshot_size=500)
# Seeds per config whose spread the checks use: enough that the prediction band of one more run
# is not dominated by the uncertainty of the spread itself (seeds.multiplier).
GOLDEN_SEEDS = tuple(range(10))
CHAPTER_SEEDS = tuple(range(5))     # the chapters' two quick runs (K = 100, m = 0.5)


@dataclass(frozen=True)
class Experiment:
    name: str
    settings: dict                      # Config keyword arguments
    about: str
    # What the saved run keeps of the label banks and snapshots (see History.compact):
    # "all", "ends" (first and last epoch), "three" (first, middle, last) or "none".
    keep_labels: str = "none"
    keep_snapshots: str = "none"
    # How the run was trained when not by ``python -m odc_mini experiment NAME`` (a long CPU run
    # of the train CLI, the GPU script); its folder is then saved with ``--from``.
    trained_with: str | None = None
    # Trained on the pinned kernel path (odc_mini.kernels), so that any x86-64 machine with the
    # same torch can reproduce its saved run bit for bit.
    pinned: bool = False

    def config(self, **overrides) -> Config:
        return Config(**{**self.settings, **overrides})

    def command(self) -> str:
        """The command that trains this experiment's run, as its provenance records it."""
        return self.trained_with or f"python -m odc_mini experiment {self.name}"

    def with_seed(self, seed: int) -> "Experiment":
        """The same experiment with another seed, named ``<name>-seed<seed>`` (seed 0 keeps the
        name); it keeps no label banks or snapshots: only its numbers enter a spread."""
        if seed == self.settings.get("seed", 0):
            return self
        return Experiment(f"{self.name}-seed{seed}", {**self.settings, "seed": seed},
                          f"{self.about}; seed {seed}", pinned=self.pinned)


def quick_min_cluster(k: int) -> int:
    """The quick profile's min_cluster (15 at K = 100 on 10,000 images) at the same ratio to N/K."""
    return max(1, round(15 * 100 / k))


def _label(method: str) -> str:
    return "ODC" if method == "odc" else "DeepCluster"


def _quick_grid() -> list[Experiment]:
    """K at the default momentum for both methods, the momentum at the default K for ODC; the
    chapters' two runs (K = 100, m = 0.5) with their seeds."""
    runs = []
    for k in QUICK_KS:
        for method, momenta in (("odc", QUICK_MOMENTA if k == 100 else (0.5,)),
                                ("deepcluster", (0.5,))):
            for m in momenta:
                chapter = k == 100 and m == 0.5
                name = f"quick-odc-k{k}-m{m}" if method == "odc" else f"quick-deepcluster-k{k}"
                settings = dict(method=method, profile="quick", num_clusters=k,
                                min_cluster=quick_min_cluster(k))
                if method == "odc":
                    settings["momentum"] = m
                about = (f"{_label(method)}, quick profile, K = {k}"
                         + (f", memory momentum {m}" if method == "odc" else "")
                         + (" (chapters 4 and 5)" if chapter else ""))
                # the chapters' runs keep every label bank and feature snapshot: chapter 5
                # follows images from snapshot to snapshot (about 2.5 MB per run)
                runs += _seeds(CHAPTER_SEEDS if chapter else (0,), Experiment(
                    name, settings, about, keep_labels="all" if chapter else "ends",
                    keep_snapshots="all" if chapter else "none"))
    return runs


def _cpu50k() -> list[Experiment]:
    return [Experiment(
        f"cpu50k-{method}", dict(method=method, profile="quick", subset=50_000, epochs=50),
        f"{_label(method)}, small CNN on all 50,000 images, 50 epochs (quick-profile settings "
        "otherwise)", keep_labels="ends")
        for method in ("odc", "deepcluster")]


def _gpu() -> list[Experiment]:
    command = ("python bench/gpu_run.py --data-root .gpu_data --out OUT/gpu --budget-s 490 "
               "--max-epochs 100")
    runs = [Experiment(
        f"gpu-{method}", dict(method=method, profile="full", eval_interval=10),
        f"{_label(method)}, full profile (ResNet-18, all of CIFAR-10, 100 epochs) on one GPU",
        keep_labels="ends", trained_with=command) for method in ("odc", "deepcluster")]
    runs.append(Experiment(
        "gpu-deepcluster-sobel",
        dict(method="deepcluster", profile="full", sobel=True, epochs=80, eval_interval=10),
        "DeepCluster, full profile with the Sobel filter of its paper, 80 epochs, on one GPU",
        keep_labels="ends",
        trained_with="python -c \"from odc_mini import Config, train; "
                     "train(Config(method='deepcluster', profile='full', sobel=True, epochs=80, "
                     "eval_interval=10, data_root='.gpu_data'), progress=False)"
                     ".save('OUT/dcsobel', state=False)\""))
    return runs


def _golden() -> list[Experiment]:
    runs = []
    for method in ("odc", "deepcluster"):
        runs += _seeds(GOLDEN_SEEDS, Experiment(
            f"golden-{method}", dict(method=method, **GOLDEN),
            f"{_label(method)}: the short run tests/test_golden.py re-runs", keep_labels="ends",
            pinned=True))
    return runs


def _ablations() -> list[Experiment]:
    runs = []
    for key, value in ablation_keys():
        overrides = {} if key is None else {key: value}
        suffix = "base" if key is None else f"{key}-{value}"
        runs.append(Experiment(
            f"ablation-{suffix}",
            dict(method="odc", profile="quick", **{**ABLATION_BASE, **overrides}),
            f"chapter 7: tiny ODC run, {'the base settings' if key is None else f'{key} = {value}'}",
            keep_labels="ends"))
    return runs


def _registry() -> dict[str, Experiment]:
    runs = _quick_grid() + _cpu50k() + _gpu() + _golden() + _ablations()
    return {run.name: run for run in runs}


def _seeds(seeds, experiment: Experiment) -> list[Experiment]:
    return [experiment.with_seed(s) for s in seeds]


def ablation_keys() -> list[tuple[str | None, object]]:
    """Chapter 7's distinct runs: (None, None) for the base, (knob, value) for each sweep value
    other than the base's, and ("seed", 1) for the base with another seed."""
    base = Config(profile="quick", **ABLATION_BASE)
    keys: list[tuple[str | None, object]] = [(None, None)]
    for knob, values in ABLATION_SWEEPS.items():
        keys += [(knob, v) for v in values if v != getattr(base, knob)]
    return keys + [("seed", 1)]


EXPERIMENTS: dict[str, Experiment] = _registry()


def seed_group(name: str) -> list[str]:
    """The experiments that differ from ``name`` in their seed alone (``name`` included), by seed."""
    settings = {k: v for k, v in get(name).config().to_dict().items() if k != "seed"}
    group = [e for e in EXPERIMENTS.values()
             if {k: v for k, v in e.config().to_dict().items() if k != "seed"} == settings]
    return [e.name for e in sorted(group, key=lambda e: e.config().seed)]


def get(name: str) -> Experiment:
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise ValueError(f"unknown experiment {name!r}; accepted: "
                         f"{', '.join(EXPERIMENTS)}") from None
