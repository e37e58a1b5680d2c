"""One training run's settings, as plain values, with three budgets ("profiles").

* ``quick``: the CPU budget of a laptop and of CI — a stratified 5,000-image subset of CIFAR-10,
  the small CNN, 56 epochs, 4 to 5 minutes per method on 2 cores in fp32.
* ``medium``: a CPU in the background — the quick profile's network and settings on all 50,000
  images, 40 epochs, about 20 minutes per method on 2 cores with native bf16.
* ``full``: one GPU — all 50,000 images, ResNet-18.

Every profile evaluates on all 10,000 test images (a kNN or linear-probe accuracy then has a
standard error of about half a point).

A field left at ``None`` takes its profile's value; any field can be overridden::

    cfg = Config(method="odc", profile="quick", epochs=3)

``validate()`` checks every setting that can be checked without data and raises one ``ValueError``
line naming the bad value and what is accepted; ``check_against_data`` does the rest once the
image count is known. Both run before any heavy work.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field

METHODS = ("odc", "deepcluster", "coke")
METHOD_NAMES = {"odc": "ODC", "deepcluster": "DeepCluster", "coke": "CoKe"}   # for display
ARCHS = ("small_cnn", "resnet18")
DATASETS = ("cifar10", "synthetic")   # the names data.load_dataset accepts
PROFILES = ("quick", "medium", "full")
SAMPLERS = ("replacement", "permutation")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
PROFILE_ENV = "ODC_PROFILE"
CIFAR10_TRAIN = 50_000        # images in CIFAR-10's train split
SYNTHETIC_DEFAULT = 1_000     # training images of the synthetic set when no subset is given

# Values per profile for the fields that default to None. The ODC reference values (ImageNet)
# are scaled to CIFAR-10 (OpenSelfSup has no CIFAR config): K = 100, min_cluster at ImageNet's
# share of the mean cluster size (20 of 128 in configs/selfsup/odc/r50_v1.py), lr linear in batch.
#
# The quick profile is the budget of a laptop CPU: 4 to 5 minutes per method on 2 cores in fp32,
# less in bf16 (bench/quick_run.py). Its size was searched for learning that shows
# (bench/quick_profile_search.py and its results file): on a
# stratified 5,000-image subset, 56 epochs (about 2,200 iterations) raised ODC's kNN accuracy more
# per minute than 10,000 images for half the epochs, milder crops, K = 30 or twice the learning
# rate. min_cluster keeps the reference share of the mean cluster size N/K (0.16 x 50 = 8).
# It departs from the reference in three more ways, because it has ~2,000 iterations instead of
# ~1.1 M. With the reference augmentation, on 5,000-image subsets for 6 epochs, both methods ended
# *below* the random network's kNN accuracy and the head stayed near chance on the pseudo-labels;
# with the settings below both gained a few points.
# * sobel=True: a random network clusters images by colour, and the reference colour jitter
#   (saturation 1.0, hue 0.5) makes colour clusters impossible to predict. DeepCluster's Sobel
#   filter makes the clusters about edges, which survive the jitter.
# * the milder SimCLR-style CIFAR colour jitter (0.4, 0.4, 0.4, 0.1) with probability 0.8;
# * batch 128 with lr 0.1: more, larger steps in the few minutes available.
# The full profile keeps the reference settings.
# The reference augmentation (OpenSelfSup's ODC config, scaled to CIFAR's 32 px): the one place
# its numbers are written. augment.AugmentConfig takes its defaults from here too, and
# AugmentConfig.of reads a run's values from the Config fields of these names.
AUGMENT_REFERENCE = dict(crop_min_scale=0.2, brightness=0.4, contrast=0.4, saturation=1.0,
                         hue=0.5, jitter_p=1.0, grayscale_p=0.2)
_QUICK = dict(arch="small_cnn", dataset="cifar10", subset=5_000, epochs=56, batch_size=128, lr=0.1,
              num_clusters=100, min_cluster=8, sobel=True, saturation=0.4, hue=0.1, jitter_p=0.8,
              snapshot_size=2000, eval_batch_size=256, eval_interval=7, probe_interval=14)
# The medium profile: the quick profile on all 50,000 images, as many epochs as a run of at most
# half an hour on 2 cores with native bf16 affords (measured: 18-23 minutes), min_cluster at
# the reference share of N/K (75, as in the full profile), a linear probe at every evaluation.
MEDIUM_EPOCHS, MEDIUM_EVAL = 40, 5
PROFILE_DEFAULTS = {
    "quick": _QUICK,
    "medium": {**_QUICK, **dict(subset=None, epochs=MEDIUM_EPOCHS, min_cluster=75,
                                eval_batch_size=512, eval_interval=MEDIUM_EVAL,
                                probe_interval=MEDIUM_EVAL)},
    "full": dict(arch="resnet18", dataset="cifar10", subset=None, epochs=100, batch_size=512,
                 lr=0.06, num_clusters=100, min_cluster=75, sobel=False,
                 **{key: AUGMENT_REFERENCE[key] for key in ("saturation", "hue", "jitter_p")},
                 snapshot_size=2000, eval_batch_size=1024, eval_interval=1, probe_interval=10),
}


def default_profile() -> str:
    """The profile named by $ODC_PROFILE, else "quick"."""
    return os.environ.get(PROFILE_ENV, "quick")


def setting(default=None, help: str = "", *, runs: bool = False, choices=None, factory=None,
            added: bool = False):
    """A Config field: its default, one line of help (the command line shows it), the accepted
    values, and ``runs=True`` for a field that says *where or how* a run is computed rather than
    what is trained (it is not part of the run's :func:`identity`). ``added=True`` marks a field
    added after runs were saved: at its default it is left out of :meth:`Config.key`, so those
    runs keep their keys."""
    metadata = {"help": help, "runs": runs, "choices": choices, "added": added}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


_PROFILE = "(default: the profile's)"


@dataclass
class Config:
    method: str = setting("odc", "the method", choices=METHODS)
    profile: str = setting(help="the budget: quick (CPU) or full (GPU) (default: $ODC_PROFILE, "
                                "else quick)", choices=PROFILES, factory=default_profile)
    # data
    dataset: str | None = setting(None, f"the images {_PROFILE}", choices=DATASETS)
    subset: int | None = setting(None, f"training images, a stratified subset {_PROFILE}")
    test_subset: int | None = setting(None, "test images evaluated, a stratified subset (default: "
                                            "all)")
    # network and optimisation
    arch: str | None = setting(None, f"the backbone {_PROFILE}", choices=ARCHS)
    epochs: int | None = setting(None, f"training epochs {_PROFILE}")
    batch_size: int | None = setting(None, f"images per SGD step {_PROFILE}")
    lr: float | None = setting(None, f"SGD learning rate {_PROFILE}")
    lr_decay: float = setting(0.4, "factor on the learning rate for the last 10% of epochs: 0.4 "
                                   "is ODC's reference schedule, 1.0 a constant rate "
                                   "(DeepCluster's reference)")
    sgd_momentum: float = setting(0.9, "SGD momentum (the head's is 0)")
    weight_decay: float = setting(1e-5, "SGD weight decay")
    sobel: bool | None = setting(None, f"DeepCluster's fixed Sobel filter in front of the "
                                       f"backbone {_PROFILE}")
    feat_dim: int = setting(256, "neck output size (the features clustered)")
    hid_dim: int = setting(512, "neck hidden size")
    neck_bn_momentum: float = setting(0.01, "BatchNorm momentum in the neck")
    # augmentation (OpenSelfSup's ODC pipeline at CIFAR's 32 px):
    # RandomResizedCrop(32, scale=(crop_min_scale, 1)),
    # flip, ColorJitter(brightness, contrast, saturation, hue) with probability jitter_p, grayscale
    crop_min_scale: float = setting(AUGMENT_REFERENCE["crop_min_scale"],
                                    "smallest crop, as a share of the image area")
    brightness: float = setting(AUGMENT_REFERENCE["brightness"], "brightness jitter strength")
    contrast: float = setting(AUGMENT_REFERENCE["contrast"], "contrast jitter strength")
    saturation: float | None = setting(None, f"saturation jitter strength {_PROFILE}")
    hue: float | None = setting(None, f"hue jitter, in turns {_PROFILE}")
    jitter_p: float | None = setting(None, f"probability of colour jitter {_PROFILE}")
    grayscale_p: float = setting(AUGMENT_REFERENCE["grayscale_p"], "probability of grayscale")
    # clustering (shared)
    num_clusters: int | None = setting(None, f"K, the number of clusters {_PROFILE}")
    kmeans_iters: int = setting(20, "k-means iterations")
    recalibrate_bn: bool = setting(True, "BatchNorm statistics from the data before the first "
                                         "clustering")
    # ODC
    momentum: float = setting(0.5, "ODC memory momentum (multiplies the new feature)")
    min_cluster: int | None = setting(None, f"ODC: clusters smaller than this are re-split "
                                            f"{_PROFILE}")
    centroid_interval: int = setting(1, "ODC: iterations between centroid updates")
    deal_interval: int = setting(1, "ODC: iterations between small-cluster checks")
    reweight: bool = setting(True, "ODC: weight the loss by cluster size^-power")
    reweight_power: float = setting(0.5, "ODC: the re-weighting power")
    cosine_centroids: bool = setting(False, "ODC: assign by cosine instead of the dot product")
    sampler: str = setting("replacement", "ODC: how an epoch draws its images", choices=SAMPLERS)
    # DeepCluster
    pca_dim: int = setting(128, "DeepCluster: PCA-whitened dimensions before k-means")
    # CoKe (the values of idstcv/CoKe run_single_view.sh; see odc_mini.coke)
    coke_dim: int = setting(128, "CoKe: projection size (the features clustered)", added=True)
    coke_temperature: float = setting(0.1, "CoKe: temperature of the centroid classifier",
                                      added=True)
    coke_dual_lr: float | None = setting(None, "CoKe: step size of the dual variables (default: "
                                               "the reference's 20 at batch 1,024 and K = 3,000, "
                                               "scaled to the run's batch and K)", added=True)
    coke_ratio: float = setting(0.4, "CoKe: the lower bound on every cluster's size, as a share of "
                                     "N / K (0: none, 1: balanced clusters)", added=True)
    coke_beta: float = setting(1.0, "CoKe: weight of the prediction head's loss (1 - beta: the "
                                    "projection's)", added=True)
    # evaluation and recording
    eval_interval: int | None = setting(None, f"epochs between kNN evaluations (the last is "
                                              f"always measured) {_PROFILE}")
    knn_k: int = setting(200, "kNN: neighbours")
    knn_temperature: float = setting(0.07, "kNN: temperature of the vote weights")
    snapshot_size: int | None = setting(None, f"images whose features are kept for embeddings "
                                              f"{_PROFILE}")
    snapshot_interval: int | None = setting(None, "least epochs between feature snapshots, "
                                                  "taken at evaluations (default: about 5 per run)")
    eval_batch_size: int | None = setting(None, f"batch size of feature extraction {_PROFILE}")
    linear_probe: bool = setting(True, "train linear probes (at the first and last epoch, and "
                                       "every probe_interval epochs)")
    probe_interval: int | None = setting(None, f"epochs between linear probes, at evaluations; 0: "
                                               f"the first and last epoch only {_PROFILE}")
    seed: int = setting(0, "seed of the weights, the subset, the order and the augmentation")
    # where and how it runs (not part of the run's identity)
    data_root: str | None = setting(None, "folder holding cifar10.npz (default: $ODC_DATA, "
                                          "else ./data)", runs=True)
    download: bool = setting(False, "download CIFAR-10 with torchvision if it is missing",
                             runs=True)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N", runs=True)
    precision: str = setting("auto", "float precision of the forward passes: auto is bf16 on GPUs "
                                     "with bf16 tensor cores, fp16 with a gradient scaler on "
                                     "older ones (Colab's T4); on the CPU bf16 where it has "
                                     "native bf16 (AVX512_BF16, AMX), else fp32",
                             runs=True, choices=PRECISIONS)
    compile: bool = setting(False, "torch.compile the training forward pass (CUDA only)", runs=True)

    def __post_init__(self):
        # The full profile's subset is None (all images); to use every image in the quick
        # profile, ask for subset=50000. An unknown profile fills nothing (validate refuses it).
        for key, value in PROFILE_DEFAULTS.get(self.profile, {}).items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.snapshot_interval is None and self.epochs:
            self.snapshot_interval = max(1, self.epochs // 5)

    def validate(self) -> "Config":
        """Raise ValueError (one line) for any setting that is out of range. Returns self."""
        for f in dataclasses.fields(self):     # the fields with a fixed set of values
            value, accepted = getattr(self, f.name), f.metadata["choices"]
            if accepted and value not in accepted:
                raise ValueError(f"unknown {f.name} {value!r}; accepted: {', '.join(accepted)}")
        if not isinstance(self.momentum, (int, float)) or not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"momentum={self.momentum!r} is outside [0, 1]")
        for name in ("epochs", "batch_size", "kmeans_iters", "centroid_interval", "deal_interval",
                     "eval_interval", "snapshot_interval", "eval_batch_size", "feat_dim", "hid_dim"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if not _is_int(self.probe_interval) or self.probe_interval < 0:
            raise ValueError(f"probe_interval={self.probe_interval!r} must be an integer >= 0 "
                             "(0: the first and last epoch only)")
        if not isinstance(self.lr, (int, float)) or not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr={self.lr!r} must be a finite number > 0")
        if not isinstance(self.lr_decay, (int, float)) or not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay={self.lr_decay!r} must be a number in (0, 1]")
        if not _is_int(self.num_clusters) or self.num_clusters < 2:
            raise ValueError(f"num_clusters={self.num_clusters} must be an integer, at least 2")
        if not _is_int(self.coke_dim) or self.coke_dim < 1:
            raise ValueError(f"coke_dim={self.coke_dim!r} must be a positive integer")
        checks = [("coke_temperature", lambda v: v > 0, "a number > 0"),
                  ("coke_ratio", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
                  ("coke_beta", lambda v: 0 <= v <= 1, "a number in [0, 1]")]
        if self.coke_dual_lr is not None:         # None: the reference's, scaled (coke.dual_step)
            checks.append(("coke_dual_lr", lambda v: v >= 0,
                           "a number >= 0, or None (the reference's, scaled)"))
        for name, ok, accepted in checks:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not (
                    math.isfinite(value) and ok(value)):
                raise ValueError(f"{name}={value!r} must be {accepted}")
        if not _is_int(self.min_cluster) or self.min_cluster < 0:
            raise ValueError(f"min_cluster={self.min_cluster} must be an integer >= 0")
        for name in ("subset", "test_subset"):
            if (value := getattr(self, name)) is not None and (not _is_int(value) or value < 1):
                raise ValueError(f"{name}={value!r} must be a positive number of images or None (all)")
        if not isinstance(self.device, str) or (self.device not in ("auto", "cpu")
                                                and not self.device.startswith("cuda")):
            raise ValueError(f"unknown device {self.device!r}; accepted: auto, cpu, cuda, cuda:N")
        if self.dataset == "cifar10" and self.subset is not None and self.subset > CIFAR10_TRAIN:
            raise ValueError(f"subset={self.subset} is larger than the CIFAR-10 train set "
                             f"({CIFAR10_TRAIN} images)")
        if self.subset is not None or self.dataset == "synthetic":
            # The number of training images is known without the data: check against it now.
            self.check_against_data(self.subset if self.subset is not None else SYNTHETIC_DEFAULT)
        return self

    def identity(self) -> dict:
        """What identifies the run: every field but those that say where or how it runs (data
        folder, download, device, compile). Two configs with equal identities train the same
        run, on any machine; the run store, checkpoints, the saved runs and their provenance all
        compare runs by it."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if not f.metadata["runs"]}

    def key(self) -> str:
        """A short stable hash of :meth:`identity`: the name a run is stored under."""
        identity = {k: v for k, v in self.identity().items() if k not in ADDED_DEFAULTS
                    or v != ADDED_DEFAULTS[k]}
        text = json.dumps(identity, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def differences(self, other: "Config | dict") -> list[str]:
        """``["epochs (saved 3, now 10)", ...]``: how ``other`` (saved) differs from this one
        (now) in identity."""
        saved = other.identity() if isinstance(other, Config) else \
            {**ADDED_FIELDS, **{k: v for k, v in other.items() if k not in RUNTIME_FIELDS}}
        now = self.identity()
        return [f"{k} (saved {saved.get(k)!r}, now {now.get(k)!r})"
                for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]

    def check_against_data(self, num_images: int) -> None:
        """The limits that depend on the number of training images N."""
        if self.num_clusters > num_images:
            raise ValueError(f"num_clusters={self.num_clusters} exceeds the {num_images} training images")
        if self.min_cluster * self.num_clusters > num_images:
            raise ValueError(f"min_cluster x num_clusters = {self.min_cluster} x {self.num_clusters} "
                             f"exceeds the {num_images} training images; lower either")
        if self.batch_size > num_images:
            raise ValueError(f"batch_size={self.batch_size} exceeds the {num_images} training images")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        if unknown := sorted(set(values) - {f.name for f in dataclasses.fields(cls)}):
            raise ValueError(f"unknown config field(s) {', '.join(unknown)}")
        return cls(**values)


# Fields added after runs were saved; their defaults are what every run saved before them was
# trained with, so a saved config without the field means its default.
ADDED_FIELDS = {f.name: f.default for f in dataclasses.fields(Config)
                if f.name == "lr_decay" or f.metadata["added"]}
# Of those, the ones left out of Config.key at their defaults (lr_decay is in every key already).
ADDED_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Config) if f.metadata["added"]}

RUNTIME_FIELDS = tuple(f.name for f in dataclasses.fields(Config) if f.metadata["runs"])


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
