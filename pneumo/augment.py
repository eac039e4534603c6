"""Batch augmentation and normalisation on the training device.

Rotation (uniform in +-max_degrees, bilinear, black fill) and horizontal flip (p = 0.5) as in
the reference recipe, but applied to whole uint8 batches after they reach the device, with
per-sample parameters drawn from a seeded CPU generator so runs are reproducible anywhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_DEGREES = 10.0
FLIP_P = 0.5


def sample_params(
    n: int, generator: torch.Generator, max_degrees: float = MAX_DEGREES, flip_p: float = FLIP_P
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample rotation angles in degrees (uniform in [-max, max]) and flip flags."""
    angles = (torch.rand(n, generator=generator) * 2 - 1) * max_degrees
    flips = torch.rand(n, generator=generator) < flip_p
    return angles, flips


def affine_theta(angles: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """(n, 2, 3) sampling matrices for `affine_grid`: flip(rotate(image)), rotation counter-clockwise.

    Output pixel p samples the input at R(-angle) @ F @ p, so the image turns by +angle and is
    then mirrored, matching torchvision's RandomRotation followed by RandomHorizontalFlip.
    """
    rad = angles.to(torch.float32) * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    fx = 1.0 - 2.0 * flips.to(torch.float32)
    theta = torch.zeros(len(angles), 2, 3, dtype=torch.float32, device=angles.device)
    # Normalised grid coordinates have y pointing down, hence the sign pattern.
    theta[:, 0, 0] = cos * fx
    theta[:, 0, 1] = -sin
    theta[:, 1, 0] = sin * fx
    theta[:, 1, 1] = cos
    return theta


def prepare_batch(
    pixels: torch.Tensor,
    mean: float,
    std: float,
    angles: torch.Tensor | None = None,
    flips: torch.Tensor | None = None,
    channels: int = 3,
) -> torch.Tensor:
    """uint8 (n, 1, H, W) on any device -> normalised float (n, channels, H, W), channels-last.

    `mean` and `std` are in pixel units (0..255). With `angles`/`flips` the batch is
    rotated and flipped first; padding and rotation fill are black, as in the letterbox.
    """
    x = pixels.to(torch.float32)
    if angles is not None and flips is not None:
        theta = affine_theta(angles.to(x.device), flips.to(x.device))
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = (x - mean) / std
    return x.expand(-1, channels, -1, -1).contiguous(memory_format=torch.channels_last)
