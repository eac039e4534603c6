"""Batched device augmentation: reproducible per seed, rotation and flip as specified, normalised."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from pneumo.augment import FLIP_P, MAX_DEGREES, affine_theta, prepare_batch, sample_params


def _pixels(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    """A uint8 (n, 1, size, size) batch of random images."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)


def _augment(pixels: torch.Tensor, seed: int) -> torch.Tensor:
    angles, flips = sample_params(len(pixels), torch.Generator().manual_seed(seed))
    return prepare_batch(pixels, 100.0, 50.0, angles=angles, flips=flips)


def test_the_same_seed_gives_the_same_batch_and_another_seed_another():
    pixels = _pixels(8)
    assert torch.equal(_augment(pixels, seed=1), _augment(pixels, seed=1))
    assert not torch.allclose(_augment(pixels, seed=1), _augment(pixels, seed=2))


def test_angles_are_uniform_within_ten_degrees():
    angles, _ = sample_params(20_000, torch.Generator().manual_seed(0))
    assert MAX_DEGREES == 10.0
    assert angles.abs().max() <= MAX_DEGREES
    counts, _ = np.histogram(angles.numpy(), bins=10, range=(-MAX_DEGREES, MAX_DEGREES))
    assert counts.min() > 0.09 * len(angles) and counts.max() < 0.11 * len(angles)
    assert abs(float(angles.mean())) < 0.2


def test_about_half_the_images_are_flipped():
    _, flips = sample_params(2000, torch.Generator().manual_seed(0))
    assert FLIP_P == 0.5
    assert flips.dtype == torch.bool
    assert 0.45 <= flips.float().mean() <= 0.55


def test_no_rotation_and_no_flip_is_the_identity():
    assert torch.equal(affine_theta(torch.zeros(1), torch.zeros(1, dtype=torch.bool))[0], torch.eye(2, 3))
    pixels = _pixels()
    out = prepare_batch(pixels, 0.0, 1.0, angles=torch.zeros(len(pixels)), flips=torch.zeros(len(pixels), dtype=bool))
    assert torch.allclose(out[:, :1], pixels.float(), atol=1e-3)


def test_a_flipped_image_is_the_mirror_of_the_unflipped_one():
    image = _pixels(1).expand(2, -1, -1, -1)
    out = prepare_batch(image, 100.0, 50.0, angles=torch.zeros(2), flips=torch.tensor([False, True]))
    assert torch.allclose(out[1], torch.flip(out[0], dims=[-1]), atol=1e-5)


@pytest.mark.parametrize(("angle", "flip"), [(10.0, False), (-7.0, False), (8.0, True)])
def test_rotation_and_flip_turn_the_image_like_torchvision(angle, flip):
    """A bright square off-centre lands where torchvision's rotate (then hflip) puts it."""
    image = torch.zeros(1, 1, 64, 64, dtype=torch.uint8)
    image[..., 10:20, 40:50] = 255
    out = prepare_batch(image, 0.0, 1.0, angles=torch.tensor([angle]), flips=torch.tensor([flip]))[0, 0]
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
