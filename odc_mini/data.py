"""Image data for odc_mini: CIFAR-10 from a local ``cifar10.npz``, and a synthetic set for tests.

Everything is kept as one uint8 tensor of shape (N, 3, H, W) rather than a ``Dataset`` of
PIL images. CIFAR-10 is only ~180 MB as uint8, so it fits on any GPU; keeping it there and
augmenting whole batches on the device (see ``augment.py``) removes the data loader, which
is the usual bottleneck when training small networks on 32x32 images.

The on-disk format is ``<root>/cifar10.npz`` (written by ``np.savez``, loads without pickle)::

    x_train (50000, 32, 32, 3) uint8  HWC, RGB, 0-255
    y_train (50000,)           int64  0-9
    x_test  (10000, 32, 32, 3) uint8
    y_test  (10000,)           int64
    classes (10,)              <U10   class names, index = label

It is converted from torchvision's CIFAR-10 the first time (``download=True``, or an
already-extracted ``<root>/cifar-10-batches-py``), and loads in about a second afterwards.
``root`` defaults to ``$ODC_DATA`` or ``./data``.
"""
from __future__ import annotations

import math
import os
import pathlib
import warnings
import zipfile
from dataclasses import dataclass

import numpy as np
import torch

from .config import DATASETS, SYNTHETIC_DEFAULT   # DATASETS: the names load_dataset accepts
from .files import atomic_write

__all__ = ["DATA_ENV", "DATASETS", "ImageSet", "default_root", "load_cifar10", "load_dataset",
           "stratified_subset", "synthetic_images"]

DATA_ENV = "ODC_DATA"
"""Environment variable naming the data folder (the one holding ``cifar10.npz``)."""

NPZ_NAME = "cifar10.npz"
TORCHVISION_FOLDER = "cifar-10-batches-py"   # what torchvision's CIFAR10 extracts into root
CIFAR_SIZES = {"train": 50000, "test": 10000}
CIFAR_NUM_CLASSES = 10


def default_root() -> pathlib.Path:
    """The data folder: ``$ODC_DATA`` if set (and non-empty), else ``data/`` under the cwd.

    Resolved at call time, not import time, so that setting the variable in a notebook
    (or ``monkeypatch.setenv`` in a test) takes effect without re-importing.
    """
    env = os.environ.get(DATA_ENV)
    return pathlib.Path(env) if env else pathlib.Path("data")


@dataclass
class ImageSet:
    """A labelled set of images held as tensors.

    Attributes:
        images: (N, 3, H, W) uint8, RGB, 0-255. uint8 rather than float keeps CIFAR-10's
            50,000 train images at ~150 MB, so the whole set can live on the GPU.
        labels: (N,) int64 class indices into ``classes``.
        classes: the C class names.
    """

    images: torch.Tensor  # (N, 3, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    classes: list[str]

    def __post_init__(self) -> None:
        # Fail at construction, where the cause is obvious, not deep inside training.
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"ImageSet.images must be (N, 3, H, W) uint8, got "
                             f"{tuple(self.images.shape)} {self.images.dtype}")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"ImageSet.labels must be ({self.images.shape[0]},) int64, got "
                             f"{tuple(self.labels.shape)} {self.labels.dtype}")
        self.classes = [str(c) for c in self.classes]

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str) -> "ImageSet":
        """A new ImageSet with images and labels on ``device`` (shares memory if already there)."""
        return ImageSet(self.images.to(device), self.labels.to(device), list(self.classes))

    def subset(self, indices) -> "ImageSet":
        """A new ImageSet holding the rows ``indices`` ((n,) int64 tensor, list or array), in that order."""
        idx = torch.as_tensor(indices, dtype=torch.int64).to(self.images.device)
        return ImageSet(self.images[idx], self.labels[idx], list(self.classes))


# ---------------------------------------------------------------------------------------------
# CIFAR-10
# ---------------------------------------------------------------------------------------------

def _read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
    """Load and validate ``cifar10.npz``; any problem becomes a one-line ValueError naming ``path``."""
    keys = ("x_train", "y_train", "x_test", "y_test", "classes")
    try:
        # np.load reads the zip directory here but each array only when indexed, so a
        # truncated file can fail at either point: read everything inside the try.
        with np.load(path) as npz:   # allow_pickle=False (the default): never run pickled code
            found = list(npz.files)
            arrays = {k: npz[k] for k in keys if k in found}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        # ValueError: numpy's own complaints (bad array header, data too short, "allow_pickle").
        reason = " ".join(str(e).split())   # keep the message on one line
        raise ValueError(f"{path}: cannot read it as an npz file, it is probably truncated or "
                         f"corrupt ({type(e).__name__}: {reason}); delete it and convert again") from None
    if missing := [k for k in keys if k not in arrays]:
        raise ValueError(f"{path}: missing arrays {missing} (found {found})")

    for split in CIFAR_SIZES:   # sizes are not enforced: small files are fine (tests)
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
            raise ValueError(f"{path}: x_{split} must be (n, 32, 32, 3) uint8, got {x.shape} {x.dtype}")
        # Any integer dtype is accepted for labels (converted to int64 below): int32 labels
        # are harmless, but float or string labels mean the file is not what we think.
        if not np.issubdtype(y.dtype, np.integer) or y.shape != (x.shape[0],):
            raise ValueError(f"{path}: y_{split} must be ({x.shape[0]},) int64, got {y.shape} {y.dtype}")
        if y.size and (y.min() < 0 or y.max() >= CIFAR_NUM_CLASSES):
            raise ValueError(f"{path}: y_{split} has labels outside 0..{CIFAR_NUM_CLASSES - 1} "
                             f"(min {y.min()}, max {y.max()})")
        arrays[f"y_{split}"] = y.astype(np.int64, copy=False)
    classes = arrays["classes"]
    if classes.shape != (CIFAR_NUM_CLASSES,) or classes.dtype.kind != "U":
        raise ValueError(f"{path}: classes must be ({CIFAR_NUM_CLASSES},) strings, got "
                         f"{classes.shape} {classes.dtype}")
    return arrays


def _from_torchvision(root: pathlib.Path, download: bool) -> dict[str, np.ndarray]:
    """CIFAR-10 via torchvision (downloading it if asked), as the arrays of ``cifar10.npz``."""
    import torchvision   # imported lazily: only this slow first-time path needs it

    out = {}
    for split in CIFAR_SIZES:
        ds = torchvision.datasets.CIFAR10(str(root), train=(split == "train"), download=download)
        # ds.data is already (n, 32, 32, 3) uint8 HWC RGB, ds.targets a list of ints.
        out[f"x_{split}"] = np.ascontiguousarray(ds.data, dtype=np.uint8)
        out[f"y_{split}"] = np.asarray(ds.targets, dtype=np.int64)
        out["classes"] = np.array(ds.classes, dtype="<U10")
    return out


def _to_image_set(arrays: dict[str, np.ndarray], split: str) -> ImageSet:
    """The ``split`` ("train" or "test") of the arrays of ``cifar10.npz`` as an ImageSet."""
    # HWC (numpy/PIL convention) -> CHW (PyTorch convention): (N, 3, 32, 32) uint8; contiguous
    # so that batches gathered later by index are contiguous too.
    images = torch.from_numpy(arrays[f"x_{split}"]).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(arrays[f"y_{split}"].astype(np.int64))
    return ImageSet(images, labels, list(arrays["classes"]))


def load_cifar10(root: str | os.PathLike | None = None,
                 download: bool = False) -> tuple[ImageSet, ImageSet]:
    """Load CIFAR-10 as (train, test) ImageSets: images (50000|10000, 3, 32, 32) uint8.

    Looks, in order, for:

    1. ``<root>/cifar10.npz`` (the fast path; validated, ValueError if truncated or malformed);
    2. ``<root>/cifar-10-batches-py`` (already extracted by torchvision), converted and
       cached as ``cifar10.npz``;
    3. with ``download=True``, torchvision's download into ``root``, converted and cached.

    Otherwise raises FileNotFoundError. ``root`` defaults to :func:`default_root`. Train
    order is the canonical CIFAR-10 order (``y_train[:10] == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]``).
    """
    root = pathlib.Path(root) if root is not None else default_root()
    path = root / NPZ_NAME
    if path.is_file():
        arrays = _read_npz(path)
    elif download or (root / TORCHVISION_FOLDER).is_dir():
        try:
            arrays = _from_torchvision(root, download)
        except (OSError, RuntimeError) as e:   # offline (URLError), a broken extracted folder
            reason = " ".join(str(e).split())[:200]
            raise FileNotFoundError(
                f"CIFAR-10 is not in {root.resolve()} and torchvision could not "
                f"{'download' if download else 'read'} it ({type(e).__name__}: {reason}); offline, "
                f"decode the project's copy into {path} (see data/README.md) or set ${DATA_ENV} "
                f"to a folder holding {NPZ_NAME}") from None
        try:   # cache the conversion; failing to (read-only folder) must not stop training
            atomic_write(path, lambda f: np.savez(f, **arrays))
        except OSError as e:
            warnings.warn(f"could not cache CIFAR-10 as {path}: {e}", stacklevel=2)
    else:
        raise FileNotFoundError(
            f"CIFAR-10 not found: looked for {path.resolve()}; set ${DATA_ENV} or pass root to "
            f"point at the folder holding {NPZ_NAME}, or use download=True (CLI: --download) to "
            f"fetch it via torchvision when online")
    return _to_image_set(arrays, "train"), _to_image_set(arrays, "test")


# ---------------------------------------------------------------------------------------------
# Subsets
# ---------------------------------------------------------------------------------------------

def _balanced_quotas(counts: list[int], n: int) -> list[int]:
    """Split ``n`` over classes as evenly as their sizes ``counts`` allow.

    Each class gets n // C, the first n % C classes one more; a class too small for its
    share gives the rest back to be spread over the others ("water filling"). With
    CIFAR-10's equal class sizes this is just n // 10 each plus the remainder in front.
    """
    quotas = [0] * len(counts)
    remaining = n
    open_ = [c for c in range(len(counts)) if counts[c] > 0]
    while remaining > 0 and open_:
        share, extra = divmod(remaining, len(open_))
        for rank, c in enumerate(open_):
            add = min(share + (1 if rank < extra else 0), counts[c] - quotas[c])
            quotas[c] += add
            remaining -= add
        open_ = [c for c in open_ if quotas[c] < counts[c]]
    return quotas


def stratified_subset(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Indices of a class-balanced random subset of size ``n``.

    Args:
        labels: (N,) integer class labels (any device).
        n: subset size, 1 <= n <= N.
        seed: the subset is a deterministic function of (labels, n, seed).

    Returns:
        (n,) int64 indices into ``labels``, sorted ascending, on the CPU. Each class gets
        n // C of them and the first n % C classes (in sorted label order) one more, unless
        a class is too small, in which case the others take up the slack. Within a class
        the chosen indices are the first ones of a seeded random permutation.
    """
    labels = torch.as_tensor(labels).cpu()
    total = labels.shape[0]
    if not 1 <= n <= total:
        raise ValueError(f"stratified_subset: n={n} must be between 1 and the data set size {total}")
    classes, counts = torch.unique(labels, return_counts=True)   # sorted class values
    quotas = _balanced_quotas(counts.tolist(), n)
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c, q in zip(classes.tolist(), quotas):
        members = torch.nonzero(labels == c).flatten()   # ascending
        # A permutation is drawn for every class, even with q == 0, so that one class's
        # quota never changes which images the next classes get.
        perm = torch.randperm(members.shape[0], generator=g)
        chosen.append(members[perm[:q]])
    return torch.sort(torch.cat(chosen)).values


# ---------------------------------------------------------------------------------------------
# Synthetic images
# ---------------------------------------------------------------------------------------------

# Class c of the synthetic set is a sinusoidal grating with orientation SYN_ANGLES[c % 5]
# and period SYN_PERIODS[c // 5 % 2] (in pixels of a 32-pixel image).
#
# Why these choices: the training augmentation (random resized crop, flips, colour
# jitter, grayscale) must not turn one class into another.
# - Colour is random per image, never a class cue: jitter with hue=0.5 and grayscale
#   would destroy it anyway.
# - A horizontal flip maps orientation a to 180 - a. Angles in [0, 90] map to distinct
#   angles outside that set (0 and 90 map to themselves), so no two classes collide.
#   Their 22.5 degree spacing is well above the ~8 degrees an aspect-ratio distortion
#   of 4/3 can add.
# - A random resized crop with scale >= 0.2 zooms in by at most ~2.6x, so the periods
#   (4 and 13 px) cannot be confused (4 -> at most ~10.5 px).
# - Sinusoids rather than square stripes, because a square wave's 3rd harmonic has
#   exactly the high-frequency period if the periods are 3x apart.
SYN_ANGLES = (0.0, 22.5, 45.0, 67.5, 90.0)  # degrees
SYN_PERIODS = (13.0, 4.0)                   # pixels at size 32; scaled with size


def synthetic_images(num_classes: int = 10, per_class: int = 100, size: int = 32,
                     seed: int = 0) -> ImageSet:
    """A deterministic, class-structured image set for tests and smoke runs.

    Each image is a sinusoidal grating whose orientation and spatial frequency are set by
    its class (see ``SYN_ANGLES`` / ``SYN_PERIODS``); per image the phase is random, the
    angle and period are jittered slightly (+-3 degrees, +-8 %), the two colours are random
    (with a guaranteed light/dark contrast) and Gaussian pixel noise (sigma ~13/255) is added.
    So classes differ only in *structure*, which survives the training augmentation, and
    a small CNN can learn them. With more than 10 classes the (angle, period) pairs repeat.

    Returns:
        ImageSet with images (num_classes * per_class, 3, size, size) uint8, sorted by class,
        labels (N,) int64 and classes ["c0", "c1", ...].
    """
    if num_classes < 1 or per_class < 1 or size < 1:
        raise ValueError(f"synthetic_images: num_classes={num_classes}, per_class={per_class} "
                         f"and size={size} must all be >= 1")
    g = torch.Generator().manual_seed(seed)
    n = num_classes * per_class
    labels = torch.arange(num_classes).repeat_interleave(per_class)          # (N,)

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    angle_deg = torch.tensor(SYN_ANGLES)[labels % len(SYN_ANGLES)] + uniform(-3, 3, n)
    period = (torch.tensor(SYN_PERIODS)[(labels // len(SYN_ANGLES)) % len(SYN_PERIODS)]
              * size / 32 * uniform(0.92, 1.08, n))                           # (N,) pixels
    phase = uniform(0, 2 * math.pi, n)                                        # (N,)
    theta = torch.deg2rad(angle_deg)

    # Pixel coordinates, then the distance along the grating's normal direction.
    coords = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")                   # (H, W) each
    along = (xx[None] * torch.cos(theta)[:, None, None]
             + yy[None] * torch.sin(theta)[:, None, None])                    # (N, H, W)
    wave = 0.5 + 0.5 * torch.sin(2 * math.pi * along / period[:, None, None] + phase[:, None, None])

    # Two random colours per image: a dark one and a light one, each a random brightness
    # times a random tint, so luminance contrast is always there but hue carries no class.
    dark = uniform(0.05, 0.35, n, 1) * uniform(0.6, 1.0, n, 3)                # (N, 3)
    light = uniform(0.65, 0.95, n, 1) * uniform(0.7, 1.0, n, 3)               # (N, 3)
    img = dark[:, :, None, None] + (light - dark)[:, :, None, None] * wave[:, None]  # (N, 3, H, W)
    img = img + 0.05 * torch.randn(img.shape, generator=g)
    images = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageSet(images, labels.to(torch.int64), [f"c{i}" for i in range(num_classes)])


# ---------------------------------------------------------------------------------------------
# Entry point used by training
# ---------------------------------------------------------------------------------------------

def load_dataset(name: str, root: str | os.PathLike | None = None, subset: int | None = None,
                 seed: int = 0, download: bool = False,
                 test_subset: int | None = None) -> tuple[ImageSet, ImageSet]:
    """(train, test) ImageSets for ``name`` in :data:`DATASETS`.

    - ``"cifar10"``: :func:`load_cifar10` (``root``, ``download`` as there). With ``subset``,
      train is a :func:`stratified_subset` of that size, and with ``test_subset`` test is one
      of that size (all test images when it exceeds them), both drawn with ``seed``.
    - ``"synthetic"``: :func:`synthetic_images` with ``subset`` (default 1000) images in
      train (balanced over 10 classes) and a fifth as many (at least 10) in test, generated
      with a different seed (``seed + 10_000``) so they are new images. ``root`` and
      ``download`` are ignored.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; accepted names: {', '.join(DATASETS)}")
    if subset is not None and subset < 1:
        raise ValueError(f"subset must be >= 1 (or None for all), got {subset}")

    if name == "cifar10":
        train, test = load_cifar10(root, download=download)
        if subset is not None:
            if subset > len(train):
                raise ValueError(f"subset={subset} is larger than the CIFAR-10 train set "
                                 f"({len(train)} images)")
            train = train.subset(stratified_subset(train.labels, subset, seed))
        if test_subset is not None and test_subset < len(test):
            test = test.subset(stratified_subset(test.labels, test_subset, seed))
        return train, test

    # synthetic: generate whole classes, then trim to exactly ``subset`` if it is not a
    # multiple of the number of classes.
    num_classes = 10
    n_train = SYNTHETIC_DEFAULT if subset is None else subset
    n_test = max(num_classes, n_train // 5)

    def generate(n: int, s: int) -> ImageSet:
        ds = synthetic_images(num_classes, per_class=math.ceil(n / num_classes), seed=s)
        return ds if len(ds) == n else ds.subset(stratified_subset(ds.labels, n, s))
    return generate(n_train, seed), generate(n_test, seed + 10_000)
