"""Batched data augmentation on the training device (no PIL, no per-image Python loop).

ODC (like DeepCluster) learns by predicting cluster labels of *augmented* images, so the
augmentation decides which differences between images the features learn to ignore. The
reference pipeline (OpenSelfSup ``odc_r50_v1.py``, ImageNet 224 px) is::

    RandomResizedCrop(224)            # scale (0.08, 1)
    RandomHorizontalFlip()
    RandomRotation(2)                 # degrees
    ColorJitter(brightness=0.4, contrast=0.4, saturation=1.0, hue=0.5)
    RandomGrayscale(p=0.2)
    ToTensor(), Normalize(mean, std)

:class:`AugmentConfig` holds the CIFAR version: a 32 px crop with scale (0.2, 1) (0.08 of
a 32 px image is a 9 px patch, too little to recognise anything), the same flip, jitter
and grayscale, and no rotation by default (``rotation_degrees=2`` restores it).

torchvision applies these to one PIL image at a time in DataLoader workers. Here the whole
uint8 batch is already on the GPU (see ``data.py``), so every step is written for a batch:
per-image random parameters are tensors of shape (B,), and

- crop, resize, flip and rotation are ONE affine warp: a (B, 2, 3) matrix per batch,
  then ``F.affine_grid`` + ``F.grid_sample`` (bilinear);
- colour jitter is a few elementwise tensor ops with per-image factors;
- grayscale is a per-image ``torch.where``.

All randomness comes from the ``generator`` passed to :func:`augment`, so a run is
reproducible from its seed. The per-op functions (``adjust_brightness`` ...) take explicit
factors, mirror ``torchvision.transforms.v2.functional`` on float images, and are tested
against it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .config import AUGMENT_REFERENCE as _REFERENCE

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "LUMA_WEIGHTS", "AugmentConfig", "adjust_brightness",
           "adjust_contrast", "adjust_hue", "adjust_saturation", "augment", "normalize",
           "to_grayscale"]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)   # per-channel mean of CIFAR-10 train, RGB in [0, 1]
CIFAR_STD = (0.2470, 0.2435, 0.2616)    # per-channel std

# ITU-R BT.601 luma: how bright each primary looks (green most, blue least). torchvision
# uses 0.2989 for red; the difference (1e-4) is far below one grey level.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

CROP_TRIES = 10   # like torchvision's RandomResizedCrop.get_params


@dataclass
class AugmentConfig:
    """Parameters of :func:`augment`. Defaults: the ODC reference settings, scaled to CIFAR
    (``config.AUGMENT_REFERENCE``, the one place they are written).

    Attributes:
        crop_scale: (lo, hi) range of the crop's area as a fraction of the image area.
        crop_ratio: (lo, hi) range of the crop's aspect ratio w / h (sampled log-uniformly).
        flip_p: probability of a horizontal flip.
        brightness, contrast, saturation: jitter strength s; the factor is drawn uniformly
            from [max(0, 1 - s), 1 + s] (torchvision's ColorJitter convention).
        hue: the hue shift is drawn uniformly from [-hue, hue], in turns (0.5 = half the
            colour wheel, i.e. any hue: the reference makes colour meaningless on purpose).
        jitter_p: probability that an image gets colour jitter at all.
        grayscale_p: probability that an image is turned to grey (3 equal channels).
        rotation_degrees: rotation drawn uniformly from [-r, r] degrees (the reference uses
            2; 0 here by default, see the module docstring).
    """

    crop_scale: tuple[float, float] = (_REFERENCE["crop_min_scale"], 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    brightness: float = _REFERENCE["brightness"]
    contrast: float = _REFERENCE["contrast"]
    saturation: float = _REFERENCE["saturation"]
    hue: float = _REFERENCE["hue"]
    jitter_p: float = _REFERENCE["jitter_p"]
    grayscale_p: float = _REFERENCE["grayscale_p"]
    rotation_degrees: float = 0.0

    @classmethod
    def of(cls, config) -> "AugmentConfig":
        """The augmentation of a run's :class:`~odc_mini.config.Config`: its fields of the
        reference's names, the crop's smallest scale as ``crop_scale``."""
        jitter = {key: getattr(config, key) for key in _REFERENCE if key != "crop_min_scale"}
        return cls(crop_scale=(config.crop_min_scale, 1.0), **jitter)


# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------

def _channel_constants(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    """(1, 3, 1, 1) float32 tensor of ``values`` on ``like``'s device, ready to broadcast."""
    return torch.tensor(values, dtype=torch.float32, device=like.device).view(1, 3, 1, 1)


def _normalize_float(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 1] -> zero-mean, unit-variance per channel (CIFAR statistics),
    written straight into the channels-last layout that the network's convolutions take (the
    values do not depend on the layout; this saves a copy per batch)."""
    out = torch.empty_like(x, memory_format=torch.channels_last)
    return torch.sub(x, _channel_constants(CIFAR_MEAN, x), out=out).div_(_channel_constants(CIFAR_STD, x))


def _check_uint8_batch(x: torch.Tensor, fn: str) -> None:
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
        raise TypeError(f"{fn} expects a (B, 3, H, W) uint8 batch, got {tuple(x.shape)} {x.dtype}")


def normalize(x_uint8: torch.Tensor) -> torch.Tensor:
    """Network input without augmentation (feature extraction, evaluation).

    Args:
        x_uint8: (B, 3, H, W) uint8, any device.

    Returns:
        (B, 3, H, W) float32 on the same device, channels-last:
        ``(x / 255 - CIFAR_MEAN) / CIFAR_STD``.
    """
    _check_uint8_batch(x_uint8, "normalize")
    return _normalize_float(x_uint8.float().div_(255))


# ---------------------------------------------------------------------------------------------
# Colour operations with explicit per-image factors (float images in [0, 1])
# ---------------------------------------------------------------------------------------------

def _per_image(factor, x: torch.Tensor) -> torch.Tensor:
    """A float or a (B,) tensor of factors -> shape (B or 1, 1, 1, 1), broadcastable over x."""
    return torch.as_tensor(factor, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)


def to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float RGB -> (B, 1, H, W) luma with :data:`LUMA_WEIGHTS`."""
    w = torch.tensor(LUMA_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``factor * x + (1 - factor) * other``, clamped to [0, 1].

    factor 1 is the identity, 0 gives ``other``, > 1 extrapolates away from ``other``.
    Brightness, contrast and saturation are all this blend, each with a different ``other``.
    ``torch.lerp(other, x, factor) = other + factor * (x - other)`` does it in one kernel.
    """
    return torch.lerp(other, x, factor).clamp_(0, 1)


def adjust_brightness(x: torch.Tensor, factor) -> torch.Tensor:
    """Scale towards black: (B, 3, H, W) float in [0, 1], factor float or (B,) -> same shape.

    (The blend with an all-black image reduces to ``x * factor``.)
    """
    return (x * _per_image(factor, x)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, factor) -> torch.Tensor:
    """Blend with the image's mean grey level (one scalar per image). Shapes as above."""
    mean = to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)   # (B, 1, 1, 1)
    return _blend(x, mean, _per_image(factor, x))


def adjust_saturation(x: torch.Tensor, factor) -> torch.Tensor:
    """Blend with the image's own grayscale version (per pixel). Shapes as above."""
    return _blend(x, to_grayscale(x), _per_image(factor, x))


def adjust_hue(x: torch.Tensor, shift) -> torch.Tensor:
    """Rotate hue by ``shift`` turns (float or (B,), in [-0.5, 0.5]); saturation and value stay.

    This is the exact HSV hue rotation (what torchvision does), not the cheaper YIQ-rotation
    approximation: with hue=0.5 every shift is used, and for large shifts YIQ rotation
    visibly changes brightness and saturation. It is written without a full RGB -> HSV -> RGB
    round trip, which is ~4x faster on the CPU:

    - RGB -> HSV: value V = max(r, g, b), chroma C = V - min(r, g, b) (= V * S), and hue
      in sixths of a turn, h6 = (g - b) / C if red is the largest channel,
      (b - r) / C + 2 if green, (r - g) / C + 4 if blue;
    - HSV -> RGB with the branch-free formula (Wikipedia, "HSV to RGB alternative"):
      channel n in (5, 3, 1) for (R, G, B) is ``V - C * clamp(min(k, 4 - k), 0, 1)`` with
      ``k = (n + h6) mod 6``; adding 6 * shift to h6 rotates the hue.

    Grey pixels (C = 0) come back unchanged whatever their (undefined) hue.

    Args:
        x: (B, 3, H, W) float RGB in [0, 1].
        shift: float or (B,) tensor, in turns of the colour wheel.

    Returns:
        (B, 3, H, W) float in [0, 1].
    """
    value = x.amax(dim=1, keepdim=True)                                        # (B, 1, H, W)
    chroma = value - x.amin(dim=1, keepdim=True)                               # (B, 1, H, W)
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    # Which channel is the largest, as 0/1 masks; ties go to red, then green (as in
    # torchvision). Multiplying by masks is ~2x faster on the CPU than nested torch.where.
    r_max = r == value
    g_max = (g == value) & ~r_max
    b_max = ~(r_max | g_max)
    h6_times_c = (g - b) * r_max + (b - r + 2 * chroma) * g_max + (r - g + 4 * chroma) * b_max
    # clamp_min only guards 0 / 0 for grey pixels, whose result does not depend on hue.
    h6 = h6_times_c / chroma.clamp_min(1e-12)                                  # (B, 1, H, W)
    # Rotate, wrapping to [0, 6) on the 1-channel tensor (remainder is a slow op on the CPU).
    h6 = torch.remainder(h6 + 6 * _per_image(shift, x), 6)                     # (B, 1, H, W)
    n = torch.tensor((5.0, 3.0, 1.0), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = n + h6                                                                 # (B, 3, H, W) in [1, 11)
    k = torch.where(k >= 6, k - 6, k)                                          # k mod 6
    return (value - chroma * torch.minimum(k, 4 - k).clamp_(0, 1)).clamp_(0, 1)


# ---------------------------------------------------------------------------------------------
# Geometry: random resized crop + flip (+ rotation) as one affine warp
# ---------------------------------------------------------------------------------------------

def _crop_boxes(b: int, height: int, width: int, cfg: AugmentConfig,
                rand: Callable[..., torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Random crop boxes drawn like torchvision's ``RandomResizedCrop.get_params``.

    Area fraction ~ U(crop_scale), aspect ratio log-uniform in crop_ratio; a box that does
    not fit in the image is rejected. Instead of a Python loop of up to 10 tries per image,
    all 10 tries of all images are drawn at once and each image takes its first box that
    fits; an image with none falls back (like torchvision) to the largest centred box with
    an allowed aspect ratio. Unlike torchvision, sizes and positions are not rounded to whole
    pixels: bilinear sampling does not need that. ``rand(*shape)`` draws uniform numbers in
    [0, 1) from the batch's generator.

    Returns:
        top, left, h, w: each (B,) float32, in pixels.
    """
    lo_s, hi_s = cfg.crop_scale
    log_lo, log_hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
    target_area = height * width * (lo_s + (hi_s - lo_s) * rand(b, CROP_TRIES))   # (B, T)
    aspect = torch.exp(log_lo + (log_hi - log_lo) * rand(b, CROP_TRIES))      # (B, T) w / h
    w_try = torch.sqrt(target_area * aspect)
    h_try = torch.sqrt(target_area / aspect)
    fits = (w_try <= width) & (h_try <= height)                               # (B, T)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)                  # first True (or 0)
    found = fits.any(dim=1)                                                   # (B,)
    w = w_try.gather(1, first).squeeze(1)
    h = h_try.gather(1, first).squeeze(1)

    # Fallback: whole image, narrowed to the nearest allowed aspect ratio, centred: no wider
    # than crop_ratio[1] x its height, no taller than its width / crop_ratio[0] (an image whose
    # own ratio is allowed is kept whole).
    fb_w = min(width, height * cfg.crop_ratio[1])
    fb_h = min(height, width / cfg.crop_ratio[0])
    w = torch.where(found, w, torch.full_like(w, fb_w))
    h = torch.where(found, h, torch.full_like(h, fb_h))

    # Uniform position of the box inside the image (centred for the fallback).
    pos = rand(b, 2)
    pos = torch.where(found[:, None], pos, torch.full_like(pos, 0.5))
    top = pos[:, 0] * (height - h)
    left = pos[:, 1] * (width - w)
    return top, left, h, w


def _affine_matrices(top: torch.Tensor, left: torch.Tensor, h: torch.Tensor, w: torch.Tensor,
                     flip: torch.Tensor, angle: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 2, 3) matrices for ``F.affine_grid`` that map output to input coordinates.

    affine_grid works in normalised coordinates (-1 = left/top edge, +1 = right/bottom edge
    with align_corners=False). Output point (u, v) is taken to the box: scaled to the box's
    half size (w/2, h/2) in pixels, mirrored if flipped (u -> -u), rotated by ``angle``,
    converted back to normalised units (x 2/W, 2/H) and moved to the box centre.

    Args:
        top, left, h, w: (B,) box in pixels. flip: (B,) bool. angle: (B,) radians.
    """
    sign = 1.0 - 2.0 * flip.to(w.dtype)              # -1 flips, +1 keeps
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Each row: the two linear coefficients, then the box centre, normalised.
    row_x = [sign * cos * w / width, -sin * h / width, (left + w / 2) * 2 / width - 1]
    row_y = [sign * sin * w / height, cos * h / height, (top + h / 2) * 2 / height - 1]
    return torch.stack([torch.stack(row_x, dim=1), torch.stack(row_y, dim=1)], dim=1)


def _affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.affine_grid(theta, (B, C, H, W), align_corners=False)`` by broadcasting.

    Each output pixel's sampling position is theta @ (x, y, 1) with x, y its centre in [-1, 1];
    written as two broadcast sums of outer products instead of a batched matrix product over
    a materialised base grid, which is ~5x faster on the CPU. (B, 2, 3) -> (B, H, W, 2).
    """
    xs = (torch.arange(width, dtype=theta.dtype, device=theta.device) * 2 + 1) / width - 1
    ys = (torch.arange(height, dtype=theta.dtype, device=theta.device) * 2 + 1) / height - 1
    t = theta[:, :, :, None, None]                                         # (B, 2, 3, 1, 1)
    grid = t[:, :, 0] * xs[None, None, None, :] + t[:, :, 1] * ys[None, None, :, None] + t[:, :, 2]
    return grid.permute(0, 2, 3, 1)                                        # (B, H, W, 2)


def _colour_jitter(x: torch.Tensor, cfg: AugmentConfig, u: torch.Tensor, order: list[int],
                   do_jitter: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation and hue jitter of (B, 3, H, W) images in [0, 1], in the
    batch's ``order``, with factors from ``u`` (4, B) uniform in [0, 1), kept where
    ``do_jitter`` (B,). Each op is skipped when its strength is 0 (so that e.g. hue=0 is
    exactly the identity, not an HSV round trip)."""
    def factor(strength: float, row: torch.Tensor) -> torch.Tensor:
        lo = max(0.0, 1.0 - strength)
        return lo + (1.0 + strength - lo) * row                               # (B,)

    ops = [
        (cfg.brightness, lambda y: adjust_brightness(y, factor(cfg.brightness, u[0]))),
        (cfg.contrast, lambda y: adjust_contrast(y, factor(cfg.contrast, u[1]))),
        (cfg.saturation, lambda y: adjust_saturation(y, factor(cfg.saturation, u[2]))),
        (cfg.hue, lambda y: adjust_hue(y, cfg.hue * (2 * u[3] - 1))),
    ]
    if cfg.jitter_p == 0 or not any(strength > 0 for strength, _ in ops):
        return x
    jittered = x
    for i in order:
        strength, op = ops[i]
        if strength > 0:
            jittered = op(jittered)
    return torch.where(do_jitter[:, None, None, None], jittered, x)


# ---------------------------------------------------------------------------------------------
# The full augmentation
# ---------------------------------------------------------------------------------------------

def augment(x_uint8: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator,
            order_generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomly augment a batch, then normalise it: the training-time network input.

    Steps (each image gets its own random parameters):

    1. random resized crop back to (H, W), horizontal flip and (optional) rotation, as one
       bilinear ``grid_sample``; the crop only ever zooms in, so no anti-aliasing is needed;
    2. with probability ``jitter_p``: brightness, contrast, saturation and hue jitter, in one
       random order per *batch* (torchvision draws one per image; per batch costs 4x less,
       and over many batches all 24 orders occur equally often);
    3. with probability ``grayscale_p``: grayscale (luma replicated to 3 channels);
    4. :func:`normalize` with the CIFAR-10 mean and std.

    Values are clamped to [0, 1] after every colour op, as torchvision does on float images.

    Args:
        x_uint8: (B, 3, H, W) uint8 on any device.
        cfg: the augmentation parameters.
        generator: a ``torch.Generator`` on ``x_uint8``'s device; the only source of
            randomness, so equal generator states give equal outputs. The random numbers
            drawn do not depend on ``cfg`` (only their use does).
        order_generator: optional CPU generator for the batch's order of the colour ops. The
            order picks Python functions, so it must be known on the host: drawn from a GPU
            ``generator`` it costs one host synchronisation per batch; the training loop
            passes a CPU generator so that the GPU never waits. Default: drawn from
            ``generator``.

    Returns:
        (B, 3, H, W) float32, normalised, on ``x_uint8``'s device, in the channels-last memory
        layout (the network's; the values do not depend on the layout).
    """
    _check_uint8_batch(x_uint8, "augment")
    device = x_uint8.device
    if generator.device.type != device.type:
        raise ValueError(f"augment: the generator is on {generator.device} but the images are "
                         f"on {device}; create it with torch.Generator(device=...)")
    b, _, height, width = x_uint8.shape
    x = x_uint8.float().div_(255)                                             # (B, 3, H, W)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=device)

    # All random numbers, drawn in a fixed order whatever the config.
    top, left, h, w = _crop_boxes(b, height, width, cfg, rand)
    flip = rand(b) < cfg.flip_p                                               # (B,) bool
    angle = math.radians(cfg.rotation_degrees) * (2 * rand(b) - 1)            # (B,) radians
    do_jitter = rand(b) < cfg.jitter_p                                        # (B,) bool
    u = rand(4, b)                                                            # factors in [0, 1)
    order = (rand(4).argsort() if order_generator is None     # on a GPU: one small host sync
             else torch.randperm(4, generator=order_generator)).tolist()
    do_gray = rand(b) < cfg.grayscale_p                                       # (B,) bool

    # 1. Geometry. padding_mode="border": the box always lies inside the image, but bilinear
    # sampling near its edge reads half a pixel beyond the outermost pixel centres, and
    # "zeros" would darken that border. (With rotation, corners outside the image repeat the
    # edge pixels instead of torchvision's black fill.)
    theta = _affine_matrices(top, left, h, w, flip, angle, height, width)
    grid = _affine_grid(theta, height, width)                                  # (B, H, W, 2)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    # 2. Colour jitter, 3. grayscale (kept as 3 channels so the input shape does not change).
    x = _colour_jitter(x, cfg, u, order, do_jitter)
    if cfg.grayscale_p > 0:
        x = torch.where(do_gray[:, None, None, None], to_grayscale(x).expand_as(x), x)

    # 4. Normalise.
    return _normalize_float(x)
