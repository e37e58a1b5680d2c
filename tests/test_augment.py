"""Tests of odc_mini.augment against independent computations (torchvision, plain torch)."""

import dataclasses

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from odc_mini.augment import (CIFAR_MEAN, CIFAR_STD, AugmentConfig, adjust_brightness,
                              adjust_contrast, adjust_hue, adjust_saturation, augment, normalize)

# Everything off: crop = whole image, no flip, no jitter, no grayscale.
IDENTITY = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0,
                         jitter_p=0.0, grayscale_p=0.0)


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    """(16, 3, 32, 32) uint8: smooth colour gradients plus noise, so that crops, hue and
    saturation all have something to act on (not only flat noise)."""
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, 32)
    base = torch.stack([ramp[None, :].expand(32, 32), ramp[:, None].expand(32, 32),
                        1 - ramp[None, :].expand(32, 32)])                      # (3, 32, 32)
    x = 0.6 * base[None] * torch.rand(16, 3, 1, 1, generator=g) + 0.4 * torch.rand(16, 3, 32, 32, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def denormalize(y: torch.Tensor) -> torch.Tensor:
    """Inverse of the normalisation: back to [0, 1] RGB."""
    return y * torch.tensor(CIFAR_STD).view(1, 3, 1, 1) + torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_normalize_matches_formula(batch):
    y = normalize(batch)
    expected = (batch.double() / 255 - torch.tensor(CIFAR_MEAN, dtype=torch.float64).view(1, 3, 1, 1)) \
        / torch.tensor(CIFAR_STD, dtype=torch.float64).view(1, 3, 1, 1)
    assert y.dtype == torch.float32 and y.shape == batch.shape
    torch.testing.assert_close(y.double(), expected, atol=1e-5, rtol=0)
    with pytest.raises(TypeError):
        normalize(batch.float())


def test_output_format_and_reproducibility(batch):
    y = augment(batch, AugmentConfig(), gen(0))
    assert y.shape == batch.shape and y.dtype == torch.float32 and torch.isfinite(y).all()
    assert torch.equal(y, augment(batch, AugmentConfig(), gen(0)))
    assert not torch.equal(y, augment(batch, AugmentConfig(), gen(1)))
    # In range: after de-normalising, values lie in [0, 1].
    x01 = denormalize(y)
    assert x01.min() > -1e-5 and x01.max() < 1 + 1e-5


def test_generator_state_advances(batch):
    g = gen(0)
    assert not torch.equal(augment(batch, AugmentConfig(), g), augment(batch, AugmentConfig(), g))


def test_everything_off_is_normalize(batch):
    torch.testing.assert_close(augment(batch, IDENTITY, gen(0)), normalize(batch), atol=1e-5, rtol=0)


def test_flip(batch):
    cfg = dataclasses.replace(IDENTITY, flip_p=1.0)
    torch.testing.assert_close(augment(batch, cfg, gen(0)), normalize(batch).flip(-1), atol=1e-5, rtol=0)


def test_crop_is_a_zoomed_patch():
    # A horizontal ramp x -> x: the crop of a linear image is linear, with a slope equal
    # to (box width / image width) <= 1, and values inside the original range.
    ramp = torch.arange(32, dtype=torch.uint8).mul(8).view(1, 1, 1, 32).expand(64, 3, 32, 32).contiguous()
    cfg = dataclasses.replace(IDENTITY, crop_scale=(0.2, 0.5), crop_ratio=(3 / 4, 4 / 3))
    out = denormalize(augment(ramp, cfg, gen(0)))[:, 0] * 255                 # (64, 32, 32)
    slope = out[:, :, 1:] - out[:, :, :-1]                                       # per pixel step
    assert (slope > -1e-3).all()                                                 # monotone, no flip
    mean_slope = slope.mean(dim=(1, 2))
    # Area in [0.2, 0.5] of the image and ratio in [3/4, 4/3] -> width between
    # sqrt(0.2 * 3/4) and sqrt(0.5 * 4/3) of the image width.
    assert (mean_slope > 8 * 0.38).all() and (mean_slope < 8 * 0.82).all()
    assert (out[:, :, 0].std(dim=1) < 1e-3).all()                               # no row mixing


def test_fallback_crop_when_nothing_fits(batch):
    # Area 1 with aspect ratio 2 never fits a square image: like torchvision we then take
    # the centred box of full width 32 and height 32 / 2 = 16 (rows 8..24, as edges), and
    # stretch it x2 vertically. Output row i (centre i + 0.5) samples the input at
    # y = 8 + (i + 0.5) / 2 in edge coordinates, i.e. pixel-centre coordinate y - 0.5;
    # bilinear = a linear blend of the two nearest rows. (Unlike resizing the cut-out
    # patch, the outermost rows blend with rows 7 and 24 just outside the box.)
    cfg = dataclasses.replace(IDENTITY, crop_scale=(1.0, 1.0), crop_ratio=(2.0, 2.0))
    out = augment(batch, cfg, gen(0))
    src = batch.double() / 255
    y = 8 + (torch.arange(32, dtype=torch.float64) + 0.5) / 2 - 0.5
    y0 = y.floor().long()
    w = (y - y0).view(1, 1, 32, 1)
    expected = (1 - w) * src[:, :, y0] + w * src[:, :, y0 + 1]
    torch.testing.assert_close(denormalize(out).double(), expected, atol=1e-5, rtol=0)


def test_affine_rotation_by_90_degrees_is_rot90(batch):
    # The affine maps pixel centres onto pixel centres for a quarter turn of the whole
    # image, so bilinear sampling must reproduce torch.rot90 exactly.
    from odc_mini.augment import _affine_matrices
    b = len(batch)
    full, zero = torch.full((b,), 32.0), torch.zeros(b)
    theta = _affine_matrices(zero, zero, full, full, torch.zeros(b, dtype=torch.bool),
                             torch.full((b,), torch.pi / 2), 32, 32)
    grid = torch.nn.functional.affine_grid(theta, [b, 3, 32, 32], align_corners=False)
    out = torch.nn.functional.grid_sample(batch.float(), grid, align_corners=False, padding_mode="border")
    torch.testing.assert_close(out, torch.rot90(batch.float(), 1, dims=(-2, -1)), atol=1e-3, rtol=0)
    # And augment's small random rotations change the image but keep it in range.
    cfg = dataclasses.replace(IDENTITY, rotation_degrees=10.0)
    y = augment(batch, cfg, gen(0))
    assert not torch.allclose(y, normalize(batch), atol=1e-3) and torch.isfinite(y).all()


def test_grayscale(batch):
    cfg = dataclasses.replace(IDENTITY, grayscale_p=1.0)
    x01 = denormalize(augment(batch, cfg, gen(0)))
    torch.testing.assert_close(x01[:, 0], x01[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(x01[:, 0], x01[:, 2], atol=1e-5, rtol=0)
    r, g, b = (batch.double() / 255).unbind(1)
    luma = 0.299 * r + 0.587 * g + 0.114 * b                                     # ITU-R BT.601
    torch.testing.assert_close(x01[:, 0].double(), luma, atol=1e-5, rtol=0)


def test_grayscale_probability(batch):
    cfg = dataclasses.replace(IDENTITY, grayscale_p=0.5)
    big = batch.repeat(25, 1, 1, 1)                                              # 400 images
    x01 = denormalize(augment(big, cfg, gen(0)))
    is_gray = (x01[:, 0] - x01[:, 1]).abs().amax(dim=(1, 2)) < 1e-5
    assert 0.4 < is_gray.float().mean() < 0.6


# --- colour ops with explicit factors, against torchvision.transforms.v2.functional -------------

def per_image(tv_fn, x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Apply a torchvision op image by image with its own factor (the reference)."""
    return torch.stack([tv_fn(img, float(f)) for img, f in zip(x, factors)])


@pytest.mark.parametrize("ours, theirs, lo, hi, atol", [
    (adjust_brightness, TF.adjust_brightness, 0.6, 1.4, 1e-6),
    # contrast/saturation: torchvision's luma uses 0.2989 for red, we use 0.299.
    (adjust_contrast, TF.adjust_contrast, 0.6, 1.4, 1e-3),
    (adjust_saturation, TF.adjust_saturation, 0.0, 2.0, 1e-3),
    (adjust_hue, TF.adjust_hue, -0.5, 0.5, 1e-4),
])
def test_colour_ops_match_torchvision(batch, ours, theirs, lo, hi, atol):
    x = batch.float() / 255
    factors = lo + (hi - lo) * torch.rand(len(x), generator=gen(3))
    torch.testing.assert_close(ours(x, factors), per_image(theirs, x, factors), atol=atol, rtol=0)


def test_hue_keeps_grey_and_full_turn():
    grey = torch.full((2, 3, 4, 4), 0.3)
    torch.testing.assert_close(adjust_hue(grey, torch.tensor([0.25, -0.4])), grey)
    x = torch.rand(4, 3, 8, 8, generator=gen(0))
    torch.testing.assert_close(adjust_hue(adjust_hue(x, 0.3), 0.2), adjust_hue(x, 0.5), atol=1e-5, rtol=0)
    torch.testing.assert_close(adjust_hue(x, 0.0), x, atol=1e-6, rtol=0)


def test_brightness_only_jitter_matches_torchvision(batch):
    # With only brightness on, each image must be torchvision's adjust_brightness of the
    # input with SOME factor in [0.6, 1.4]; recover it per image and check the whole image.
    cfg = dataclasses.replace(IDENTITY, jitter_p=1.0, brightness=0.4, contrast=0.0, saturation=0.0, hue=0.0)
    x01 = denormalize(augment(batch, cfg, gen(0)))
    src = batch.float() / 255
    unclipped = (x01 < 0.999) & (src > 0.05)
    factors = torch.stack([(x01[i][unclipped[i]] / src[i][unclipped[i]]).median() for i in range(len(src))])
    assert ((factors > 0.6 - 1e-4) & (factors < 1.4 + 1e-4)).all() and factors.std() > 0.05
    torch.testing.assert_close(x01, per_image(TF.adjust_brightness, src, factors), atol=1e-4, rtol=0)


def test_jitter_probability_zero_and_one(batch):
    on = dataclasses.replace(IDENTITY, jitter_p=1.0, brightness=0.4, contrast=0.4, saturation=1.0, hue=0.5)
    changed = (augment(batch, on, gen(0)) - normalize(batch)).abs().amax(dim=(1, 2, 3)) > 1e-3
    assert changed.all()
    off = dataclasses.replace(on, jitter_p=0.0)
    torch.testing.assert_close(augment(batch, off, gen(0)), normalize(batch), atol=1e-5, rtol=0)


def test_generator_on_wrong_device_is_a_clear_error(batch):
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU to build a generator on another device")
    with pytest.raises(ValueError, match="generator"):
        augment(batch, AugmentConfig(), torch.Generator(device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_matches_format(batch):
    x = batch.cuda()
    y = augment(x, AugmentConfig(), torch.Generator(device="cuda").manual_seed(0))
    assert y.device == x.device and y.shape == x.shape and torch.isfinite(y).all()
    torch.testing.assert_close(augment(x, IDENTITY, torch.Generator(device="cuda").manual_seed(0)),
                               normalize(x), atol=1e-5, rtol=0)


def test_affine_grid_matches_torch():
    from odc_mini.augment import _affine_grid
    theta = torch.randn(16, 2, 3, generator=torch.Generator().manual_seed(0))
    for h, w in ((32, 32), (24, 40)):
        want = torch.nn.functional.affine_grid(theta, [16, 3, h, w], align_corners=False)
        assert torch.allclose(_affine_grid(theta, h, w), want, atol=1e-6)
