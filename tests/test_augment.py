"""Batched device augmentation: reproducible per seed, rotation and flip as specified, normalised."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from pneumo.config import parse_args
from pneumo.data.augment import (
    FLIP_P,
    MAX_DEGREES,
    AugmentParams,
    AugmentSpec,
    affine_theta,
    prepare_batch,
    sample_params,
)


def _pixels(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    """A uint8 (n, 1, size, size) batch of random images."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)


def _augment(pixels: torch.Tensor, seed: int, spec: AugmentSpec | None = None) -> torch.Tensor:
    params = sample_params(len(pixels), torch.Generator().manual_seed(seed), spec)
    return prepare_batch(pixels, 100.0, 50.0, params=params)


def _params(n: int, **values) -> AugmentParams:
    """Fixed parameters: no rotation, no flip, plus `values` (tensors or a noise seed)."""
    return AugmentParams(angles=torch.zeros(n), flips=torch.zeros(n, dtype=torch.bool), **values)


def _raw(pixels: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """The augmented batch back in 0..255 pixel units, one channel."""
    return prepare_batch(pixels, 0.0, 1.0, params=params)[:, :1]


def test_the_same_seed_gives_the_same_batch_and_another_seed_another():
    pixels = _pixels(8)
    assert torch.equal(_augment(pixels, seed=1), _augment(pixels, seed=1))
    assert not torch.allclose(_augment(pixels, seed=1), _augment(pixels, seed=2))


def test_angles_are_uniform_within_ten_degrees():
    angles = sample_params(20_000, torch.Generator().manual_seed(0)).angles
    assert MAX_DEGREES == 10.0
    assert angles.abs().max() <= MAX_DEGREES
    counts, _ = np.histogram(angles.numpy(), bins=10, range=(-MAX_DEGREES, MAX_DEGREES))
    assert counts.min() > 0.09 * len(angles) and counts.max() < 0.11 * len(angles)
    assert abs(float(angles.mean())) < 0.2


def test_about_half_the_images_are_flipped():
    flips = sample_params(2000, torch.Generator().manual_seed(0)).flips
    assert FLIP_P == 0.5
    assert flips.dtype == torch.bool
    assert 0.45 <= flips.float().mean() <= 0.55


def test_no_rotation_and_no_flip_is_the_identity():
    assert torch.equal(affine_theta(torch.zeros(1), torch.zeros(1, dtype=torch.bool))[0], torch.eye(2, 3))
    pixels = _pixels()
    assert torch.allclose(_raw(pixels, _params(len(pixels))), pixels.float(), atol=1e-3)


def test_a_flipped_image_is_the_mirror_of_the_unflipped_one():
    image = _pixels(1).expand(2, -1, -1, -1)
    params = AugmentParams(angles=torch.zeros(2), flips=torch.tensor([False, True]))
    out = prepare_batch(image, 100.0, 50.0, params=params)
    assert torch.allclose(out[1], torch.flip(out[0], dims=[-1]), atol=1e-5)


@pytest.mark.parametrize(("angle", "flip"), [(10.0, False), (-7.0, False), (8.0, True)])
def test_rotation_and_flip_turn_the_image_like_torchvision(angle, flip):
    """A bright square off-centre lands where torchvision's rotate (then hflip) puts it."""
    image = torch.zeros(1, 1, 64, 64, dtype=torch.uint8)
    image[..., 10:20, 40:50] = 255
    params = AugmentParams(angles=torch.tensor([angle]), flips=torch.tensor([flip]))
    out = prepare_batch(image, 0.0, 1.0, params=params)[0, 0]
    ref = TF.rotate(image[0].float(), angle, interpolation=InterpolationMode.BILINEAR)
    ref = (TF.hflip(ref) if flip else ref)[0]

    def centroid(img: torch.Tensor) -> torch.Tensor:
        ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
        return torch.stack([(img * ys).sum(), (img * xs).sum()]) / img.sum()

    assert torch.allclose(centroid(out), centroid(ref), atol=0.5)
    assert torch.allclose(out.sum(), ref.sum(), rtol=0.02)


def test_output_is_normalised_with_the_given_statistics():
    pixels = _pixels(8, 48)
    values = pixels.double()
    mean, std = float(values.mean()), float(values.std(unbiased=False))
    out = prepare_batch(pixels, mean, std)
    assert abs(float(out.mean())) < 1e-4
    assert abs(float(out.std(unbiased=False)) - 1.0) < 1e-4


def test_output_is_float_three_identical_channels_channels_last():
    pixels = _pixels(5, 40)
    out = _augment(pixels, seed=3)
    assert out.shape == (5, 3, 40, 40) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])


def _square() -> torch.Tensor:
    image = torch.zeros(1, 1, 64, 64, dtype=torch.uint8)
    image[..., 24:40, 24:40] = 200
    return image


def test_zoom_enlarges_the_image_about_its_centre_like_torchvision_affine():
    image = _square()
    out = _raw(image, _params(1, zoom=torch.tensor([1.25])))[0, 0]
    ref = TF.affine(image[0].float(), angle=0.0, translate=[0, 0], scale=1.25, shear=[0.0])[0]
    assert abs(float((out > 100).sum()) - float((ref > 100).sum())) <= 16  # 16x16 square -> 20x20
    assert 380 <= float((out > 100).sum()) <= 420


def test_stretch_widens_and_shortens_by_the_square_root_of_the_factor():
    out = _raw(_square(), _params(1, stretch=torch.tensor([1.44])))[0, 0] > 100
    width, height = int(out.any(0).sum()), int(out.any(1).sum())
    assert (width, height) in {(19, 13), (19, 14), (20, 13), (20, 14)}  # 16 * 1.2, 16 / 1.2


def test_shift_moves_the_image_by_the_given_fraction():
    out = _raw(_square(), _params(1, shift=torch.tensor([[0.125, -0.25]])))[0, 0] > 100
    cols, rows = torch.nonzero(out.any(0))[:, 0], torch.nonzero(out.any(1))[:, 0]
    # the content moves opposite to the sampling offset: 8 px left, 16 px down
    assert int(cols.min()) == 24 - 8 and int(rows.min()) == 24 + 16


def test_gamma_contrast_and_brightness_match_torchvision_on_unit_pixels():
    pixels = _pixels(3, 16)
    unit = pixels.float() / 255
    g, c, b = torch.tensor([0.7, 1.0, 1.4]), torch.tensor([1.0, 0.8, 1.2]), torch.tensor([0.0, 0.1, -0.1])
    out = _raw(pixels, _params(3, gamma=g, contrast=c, brightness=b)) / 255
    for i in range(3):
        ref = TF.adjust_gamma(unit[i], float(g[i]))
        ref = (ref - ref.mean()) * float(c[i]) + ref.mean()  # around the image mean (torchvision uses gray mean too)
        ref = (ref + float(b[i])).clamp(0, 1)
        assert torch.allclose(out[i], ref, atol=1e-4)


def test_blur_with_sigma_zero_leaves_the_image_and_otherwise_matches_torchvision():
    pixels = _pixels(2, 32)
    out = _raw(pixels, _params(2, blur_sigma=torch.tensor([0.0, 1.5])))
    assert torch.allclose(out[0], pixels[0].float(), atol=1e-3)
    ref = TF.gaussian_blur(pixels[1].float(), kernel_size=[11, 11], sigma=[1.5, 1.5])
    inner = (slice(None), slice(6, -6), slice(6, -6))  # the borders differ by padding mode
    assert torch.allclose(out[1][inner], ref[inner], atol=0.05)


def test_noise_has_the_drawn_standard_deviation_and_is_reproducible():
    pixels = torch.full((2, 1, 64, 64), 128, dtype=torch.uint8)
    params = _params(2, noise_std=torch.tensor([0.0, 0.05]), noise_seed=7)
    out = _raw(pixels, params) / 255
    assert torch.equal(out[0], pixels[0].float() / 255)
    assert abs(float(out[1].std()) - 0.05) < 0.005
    assert torch.equal(out, _raw(pixels, params) / 255)


def test_levers_that_are_off_draw_nothing_so_rotation_and_flip_streams_stay_the_same():
    base = sample_params(64, torch.Generator().manual_seed(5))
    full = AugmentSpec(
        scale_min=0.9,
        scale_max=1.1,
        aspect=1.2,
        translate=0.1,
        gamma=0.3,
        contrast=0.2,
        brightness=0.1,
        blur_p=0.5,
        blur_sigma=1.0,
        noise_p=0.5,
        noise_std=0.05,
    )
    more = sample_params(64, torch.Generator().manual_seed(5), full)
    assert torch.equal(base.angles, more.angles) and torch.equal(base.flips, more.flips)
    assert base.zoom is None and base.gamma is None and base.noise_std is None
    assert more.zoom.min() >= 0.9 and more.zoom.max() <= 1.1
    assert 0.3 < float((more.blur_sigma > 0).float().mean()) < 0.7


def test_every_lever_on_is_reproducible_per_seed_and_stays_in_range():
    spec = AugmentSpec.from_config(
        vars(
            parse_args(
                [
                    "--aug-scale",
                    "0.9",
                    "1.2",
                    "--aug-aspect",
                    "1.1",
                    "--aug-translate",
                    "0.05",
                    "--aug-gamma",
                    "0.3",
                    "--aug-contrast",
                    "0.2",
                    "--aug-brightness",
                    "0.1",
                    "--aug-blur-p",
                    "0.5",
                    "--aug-blur-sigma",
                    "1.0",
                    "--aug-noise-p",
                    "0.5",
                    "--aug-noise-std",
                    "0.03",
                ]
            )
        )
    )
    assert (spec.scale_min, spec.scale_max, spec.noise_std) == (0.9, 1.2, 0.03)
    pixels = _pixels(8)
    a, b = _augment(pixels, 1, spec), _augment(pixels, 1, spec)
    assert torch.equal(a, b) and not torch.equal(a, _augment(pixels, 2, spec))
    raw = prepare_batch(pixels, 0.0, 1.0, params=sample_params(8, torch.Generator().manual_seed(1), spec))
    assert raw.min() >= 0 and raw.max() <= 255


def test_erasing_fills_exactly_the_drawn_rectangle_with_the_image_mean():
    pixels = _pixels(2, 40)
    boxes = torch.tensor([[0.25, 0.5, 0.5, 0.25], [0.0, 0.0, 0.0, 0.5]])  # the second: height 0, untouched
    out = _raw(pixels, _params(2, erase=boxes))
    expected = pixels.float().clone()
    expected[0, :, 10:30, 20:30] = pixels[0].float().mean()
    assert torch.allclose(out, expected, atol=1e-3)


def test_erase_areas_stay_between_2_and_20_percent_and_the_probability_holds():
    p = sample_params(4000, torch.Generator().manual_seed(0), AugmentSpec(erase_p=0.5))
    on = p.erase[:, 2] > 0
    area = (p.erase[on, 2] * p.erase[on, 3]).numpy()
    assert 0.45 < on.float().mean() < 0.55
    assert area.min() >= 0.02 * 0.5 and area.max() <= 0.2 + 1e-6  # clipping to the image can only shrink it
    assert ((p.erase[on, 0] + p.erase[on, 2]) <= 1 + 1e-6).all()
