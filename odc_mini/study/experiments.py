"""The experiments behind the book's numbers: each a name, a config and what its saved run keeps.

    python -m odc_mini experiment --list
    python -m odc_mini experiment quick-odc          # train it here and save it

Every saved run in ``odc_mini/study/saved_runs/`` (see :mod:`odc_mini.study.saved`) is one of these, trained by
the command its ``provenance.json`` records. Chapters look runs up by config, so a chapter that
asks for the config of an experiment replays its saved run instead of training.

* ``quick-*``: the quick profile (see :mod:`odc_mini.config`). ``quick-odc`` and
  ``quick-deepcluster`` are the chapters' runs, the two methods at shared settings (ODC's
  optimisation); ``quick-deepcluster-ref`` is DeepCluster at its own reference optimisation
  (constant learning rate, 0.1 / 0.06 of ODC's, as in the authors' configs); ``*-lrX`` sweep
  each method's learning rate around its own.
* ``medium-*``: the medium profile (the quick profile's network and settings on all 50,000
  images, about 20 minutes per run on 2 cores with native bf16), ODC and DeepCluster at its
  reference settings (the fair baseline), three seeds each, trained in the background
  (``experiment`` resumes a run where it stopped).
* ``gpu-*``: the full profile (ResNet-18, all of CIFAR-10) on one GPU, by ``bench/gpu_run.py``,
  one seed, DeepCluster at ODC's optimisation settings; ``full-*``: both methods at their own
  reference settings with two seeds each, by ``bench/gpu_evidence.py`` in one GPU call.
* ``golden-*``: short quick-profile runs that ``tests/test_golden.py`` re-runs on every CI
  build: bit for bit on the pinned kernel path (:mod:`odc_mini.run.kernels`), which they are
  trained on, and against the spread of their seeds (``golden-*-seedS``) on the machine's own.
* ``*-seedS``: the same config with seed S. A config's seeds (:func:`seed_group`) measure the
  noise that any comparison with it must stand out from (:mod:`odc_mini.study.seeds`).
* ``ablation-*``: chapter 7's sweeps at the quick profile, one knob at a time, three seeds each;
  the base setting of every sweep is ``quick-odc`` (seeds 0-2).
* ``quick-coke`` and ``medium-coke`` (seeds 0-2): chapter 9's third method, CoKe, at the quick
  and medium profiles.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..config import METHOD_NAMES, Config

# The quick profile of odc_mini 0.3 and earlier (10 epochs; a linear probe at the first and last
# epoch only). The golden runs were trained with it and keep it, whatever the profile is now.
QUICK_0_3 = dict(profile="quick", arch="small_cnn", dataset="cifar10", subset=10_000, epochs=10,
                 batch_size=128, lr=0.1, num_clusters=100, min_cluster=15, sobel=True,
                 saturation=0.4, hue=0.1, jitter_p=0.8, crop_min_scale=0.2, snapshot_size=2000,
                 eval_batch_size=256, eval_interval=2, probe_interval=0)
# Before odc_mini 0.5 a subset's test images were a stratified fifth of its size, at least 1,000;
# the golden runs and chapter 7's ablations keep that, so that CI's checks keep their saved runs.
OLD_TEST_SUBSET = 1000

# Chapter 7: one sweep per ODC knob around the quick profile (whose ODC runs, quick-odc seeds 0-2,
# are every sweep's base). The K sweep keeps min_cluster at the quick profile's share of the mean
# cluster size N / K (see ablation_overrides), so that it varies K and not how strict the rule is.
ABLATION_SWEEPS = {"momentum": [0.1, 0.5, 0.9], "num_clusters": [30, 100, 300],
                   "min_cluster": [0, 8, 25], "centroid_interval": [1, 10, 50]}

# The golden runs: short enough for every CI build (15 iterations per epoch), long enough for
# every per-epoch record (kNN and the linear probe each epoch, NMI between epochs, drift).
GOLDEN = {**QUICK_0_3, **dict(subset=2000, epochs=3, num_clusters=20, min_cluster=15,
                              eval_interval=1, snapshot_size=500, test_subset=OLD_TEST_SUBSET)}
# Seeds per config whose spread the checks use: enough that the prediction band of one more run
# is not dominated by the uncertainty of the spread itself (seeds.multiplier).
GOLDEN_SEEDS = tuple(range(10))
# The quick profile's runs behind a claim: 6 seeds each for the chapters' two (one is a reader's
# run and chapter 8 places it among the other 5), 3 for DeepCluster at its reference settings.
CHAPTER_SEEDS = tuple(range(6))
REFERENCE_SEEDS = tuple(range(3))
COKE_SEEDS = tuple(range(3))
# The medium profile (all 50,000 images on a CPU): each configuration with these seeds.
MEDIUM_SEEDS = tuple(range(3))
# The learning-rate sweep: each method's own rate times these factors (seed 0).
LR_FACTORS = (0.5, 1.0, 2.0)
ABLATION_SEEDS = tuple(range(3))


@dataclass(frozen=True)
class Experiment:
    name: str
    settings: dict                      # Config keyword arguments
    about: str
    # What the saved run keeps of the label banks and snapshots (see History.compact):
    # "all", "ends" (first and last epoch) or "none".
    keep_labels: str = "none"
    keep_snapshots: str = "none"
    # How the run was trained when not by ``python -m odc_mini experiment NAME`` (a long CPU run
    # of the train CLI, the GPU script); its folder is then saved with ``--from``.
    trained_with: str | None = None
    # Trained on the pinned kernel path (odc_mini.run.kernels), so that any x86-64 machine with the
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
                          f"{self.about}; seed {seed}", trained_with=self.trained_with,
                          pinned=self.pinned)


def _quick() -> list[Experiment]:
    """The quick profile: the chapters' two runs at shared settings, DeepCluster at its own
    reference settings, and a learning-rate sweep of each method at its own settings."""
    odc_lr, quick = Config(profile="quick").lr, dict(profile="quick", precision="fp32")
    # fp32: what the chapters train on a CPU (odc_mini.study.notebook.Environment.config). The
    # chapters' runs keep every label bank and feature snapshot: chapter 5 follows images from
    # snapshot to snapshot.
    odc = Experiment("quick-odc", dict(method="odc", **quick),
                     "ODC, quick profile (chapters 2-5)", keep_labels="all", keep_snapshots="all")
    dc = Experiment("quick-deepcluster", dict(method="deepcluster", **quick),
                    "DeepCluster, quick profile at ODC's optimisation settings (chapters 2-5)",
                    keep_labels="all", keep_snapshots="all")
    ref = Experiment("quick-deepcluster-ref", dict(**quick, **deepcluster_reference(odc_lr)),
                     "DeepCluster, quick profile at its own reference optimisation (constant "
                     "rate, 0.1 / 0.06 of ODC's)", keep_labels="ends")
    # Chapter 9's third method at its own reference's settings (odc_mini.coke), the profile's
    # budget and optimisation.
    coke = Experiment("quick-coke", dict(method="coke", **quick),
                      "CoKe, quick profile (chapter 9)", keep_labels="ends")
    runs = _seeds(CHAPTER_SEEDS, odc) + _seeds(CHAPTER_SEEDS, dc) + _seeds(REFERENCE_SEEDS, ref)
    runs += _seeds(COKE_SEEDS, coke)
    runs.append(Experiment("quick-odc-broken", {**odc.settings, "momentum": 0.01},
                           "ODC with a memory momentum of 0.01, a memory that hardly moves (a "
                           "broken run that chapter 8's check must fail)"))
    for base, own_lr in ((odc, odc_lr), (ref, odc_lr * DEEPCLUSTER_LR_RATIO)):
        for lr in [round(own_lr * factor, 4) for factor in LR_FACTORS if factor != 1.0]:
            runs.append(Experiment(f"{base.name}-lr{lr:g}", {**base.settings, "lr": lr},
                                   f"{base.about.split(' (')[0]}, learning rate {lr:g}"))
    return runs


def _medium() -> list[Experiment]:
    """The medium profile: ODC and DeepCluster at its reference settings, paired by seed (ordered
    so that a queue of them completes one seed pair after another)."""
    odc = Experiment("medium-odc", dict(method="odc", profile="medium"),
                     "ODC, medium profile (small CNN, all 50,000 images, CPU)", keep_labels="ends")
    ref = Experiment("medium-deepcluster-ref",
                     dict(profile="medium", **deepcluster_reference(Config(profile="medium").lr)),
                     "DeepCluster, medium profile at its own reference optimisation",
                     keep_labels="ends")
    coke = Experiment("medium-coke", dict(method="coke", profile="medium"),
                      "CoKe, medium profile (chapter 9)")
    return [e.with_seed(s) for s in MEDIUM_SEEDS for e in (odc, ref)] + _seeds(MEDIUM_SEEDS, coke)


# Each method at its own reference's optimisation settings (OpenSelfSup configs/selfsup/odc/r50_v1.py
# and configs/selfsup/deepcluster/r50.py): ODC trains at lr 0.06 with
# batch 512 and x0.4 for the last 10% of epochs; DeepCluster (OpenSelfSup's r50.py, with Sobel)
# at lr 0.1 with batch 512, constant. At a scale where ODC's rate is ``lr``, DeepCluster's
# reference is the same ratio, 0.1 / 0.06 times ``lr``, with no decay.
DEEPCLUSTER_LR_RATIO = 0.1 / 0.06
FULL_EPOCHS = 50        # what two seeds of both methods fit in one GPU call of <= 9 minutes
FULL_SEEDS = (0, 1)


def deepcluster_reference(lr: float) -> dict:
    """DeepCluster's own optimisation settings where ODC's learning rate is ``lr``."""
    return dict(method="deepcluster", lr=round(lr * DEEPCLUSTER_LR_RATIO, 4), lr_decay=1.0)


def _full() -> list[Experiment]:
    """Both methods at their reference settings on one GPU, ResNet-18, all of CIFAR-10, two seeds
    each, trained by ``bench/gpu_evidence.py`` in one GPU call."""
    command = "python bench/gpu_evidence.py --data-root .gpu_data --out OUT/evidence"
    odc = Experiment("full-odc", dict(method="odc", profile="full", epochs=FULL_EPOCHS,
                                      eval_interval=5),
                     "ODC at its reference settings, ResNet-18 on all of CIFAR-10, one GPU",
                     keep_labels="ends", trained_with=command)
    dc = Experiment("full-deepcluster-ref",
                    dict(profile="full", sobel=True, epochs=FULL_EPOCHS, eval_interval=5,
                         **deepcluster_reference(Config(profile="full").lr)),
                    "DeepCluster at its reference settings (Sobel, constant lr 0.1), ResNet-18 "
                    "on all of CIFAR-10, one GPU", keep_labels="ends", trained_with=command)
    return [e.with_seed(s) for e in (odc, dc) for s in FULL_SEEDS]


def _gpu() -> list[Experiment]:
    command = ("python bench/gpu_run.py --data-root .gpu_data --out OUT/gpu --budget-s 490 "
               "--max-epochs 100")
    runs = [Experiment(
        f"gpu-{method}", dict(method=method, profile="full", eval_interval=10, probe_interval=0),
        f"{METHOD_NAMES[method]}, full profile (ResNet-18, all of CIFAR-10, 100 epochs) on one GPU",
        keep_labels="ends", trained_with=command) for method in ("odc", "deepcluster")]
    runs.append(Experiment(
        "gpu-deepcluster-sobel",
        dict(method="deepcluster", profile="full", sobel=True, epochs=80, eval_interval=10,
             probe_interval=0),
        "DeepCluster, full profile with the Sobel filter of its paper, 80 epochs, on one GPU",
        keep_labels="ends",
        trained_with="python -c \"from odc_mini import Config, train; "
                     "train(Config(method='deepcluster', profile='full', sobel=True, epochs=80, "
                     "eval_interval=10, data_root='.gpu_data'), progress=False)"
                     ".save('OUT/dcsobel', state=False)\""))
    return runs


def _golden() -> list[Experiment]:
    bases = [Experiment(f"golden-{method}", dict(method=method, **GOLDEN),
                        f"{METHOD_NAMES[method]}: the short run tests/test_golden.py re-runs",
                        keep_labels="ends", pinned=True) for method in ("odc", "deepcluster")]
    return [e.with_seed(s) for e in bases for s in GOLDEN_SEEDS]


def _ablations() -> list[Experiment]:
    runs = []
    for knob, value in ablation_keys():
        overrides = ablation_overrides(knob, value)
        runs += _seeds(ABLATION_SEEDS, Experiment(
            f"ablation-{knob}-{value}", dict(method="odc", profile="quick", precision="fp32",
                                             **overrides),
            "chapter 7: ODC, quick profile, " + ", ".join(f"{k} = {v}"
                                                          for k, v in overrides.items())))
    return runs


def _seeds(seeds, experiment: Experiment) -> list[Experiment]:
    return [experiment.with_seed(s) for s in seeds]


def ablation_overrides(knob: str, value) -> dict:
    """The quick profile's settings that chapter 7's run with ``knob`` = ``value`` changes. In the
    K sweep ``min_cluster`` keeps its share of the mean cluster size N / K (rounded)."""
    if knob not in ABLATION_SWEEPS:
        raise ValueError(f"unknown ablation knob {knob!r}; accepted: {', '.join(ABLATION_SWEEPS)}")
    overrides = {knob: value}
    if knob == "num_clusters":
        quick = Config(profile="quick")
        overrides["min_cluster"] = round(quick.min_cluster * quick.num_clusters / value)
    return overrides


def ablation_keys() -> list[tuple[str, object]]:
    """Chapter 7's settings other than the quick profile's: (knob, value) for each sweep value
    other than the profile's own. Each is run with the seeds ``ABLATION_SEEDS``."""
    quick = Config(profile="quick")
    return [(knob, v) for knob, values in ABLATION_SWEEPS.items() for v in values
            if v != getattr(quick, knob)]


EXPERIMENTS: dict[str, Experiment] = {
    run.name: run for run in _quick() + _medium() + _gpu() + _full() + _golden() + _ablations()}


def seed_group(name: str) -> list[str]:
    """The experiments that differ from ``name`` in their seed alone (``name`` included), by seed."""
    unseeded = replace(get(name).config(), seed=0)
    group = [e for e in EXPERIMENTS.values() if replace(e.config(), seed=0) == unseeded]
    return [e.name for e in sorted(group, key=lambda e: e.config().seed)]


def get(name: str) -> Experiment:
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise ValueError(f"unknown experiment {name!r}; accepted: "
                         f"{', '.join(EXPERIMENTS)}") from None
