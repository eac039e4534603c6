"""Batch augmentation and normalisation on the training device.

Every lever works on whole uint8 batches after they reach the device, with per-sample
parameters drawn from the fold's seeded CPU generator, so a run is reproducible anywhere:

- geometry, one `grid_sample`: rotation (uniform in +-rotate degrees), horizontal flip,
  zoom (uniform in [scale_min, scale_max]; > 1 zooms in), aspect stretch (log-uniform in
  [1/aspect, aspect]) and translation (uniform in +-translate of the image), black fill;
- intensity, on [0, 1] pixels: gamma (log-uniform in [1/(1+g), 1+g]), contrast around the
  image mean (factor in 1 +- contrast), brightness (offset in +-brightness);
- Gaussian blur (with probability blur_p, sigma uniform in [0.1, blur_sigma] pixels) and
  Gaussian noise (with probability noise_p, std uniform in [0, noise_std]);
- random erasing (with probability erase_p, one rectangle of 2-20 % of the image, aspect
  ratio log-uniform in [0.3, 3.3], filled with the image's mean), as timm's RandomErasing.

Rotation and flip are drawn first and always, exactly as the reference recipe draws them;
levers that are off draw nothing, so turning one on never changes another's stream.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

MAX_DEGREES = 10.0
FLIP_P = 0.5


@dataclass(frozen=True)
class AugmentSpec:
    """The training augmentation's ranges; the defaults are the reference recipe."""

    rotate: float = MAX_DEGREES
    flip: float = FLIP_P
    scale_min: float = 1.0
    scale_max: float = 1.0
    aspect: float = 1.0
    translate: float = 0.0
    gamma: float = 0.0
    contrast: float = 0.0
    brightness: float = 0.0
    blur_p: float = 0.0
    blur_sigma: float = 0.0
    noise_p: float = 0.0
    noise_std: float = 0.0
    erase_p: float = 0.0

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> AugmentSpec:
        """The spec from a run's config (`aug_rotate`, `aug_scale: [MIN, MAX]`, ...); keys it lacks
        keep the reference recipe's values."""
        spec = {f.name: values[f"aug_{f.name}"] for f in fields(cls) if f"aug_{f.name}" in values}
        if values.get("aug_scale") is not None:
            spec["scale_min"], spec["scale_max"] = values["aug_scale"]
        return cls(**spec)

    def to_config(self) -> dict[str, Any]:
        """The spec as a run's config keys (`from_config`'s inverse)."""
        scale = ("scale_min", "scale_max")
        values = {f"aug_{f.name}": getattr(self, f.name) for f in fields(self) if f.name not in scale}
        return {**values, "aug_scale": [self.scale_min, self.scale_max]}


@dataclass
class AugmentParams:
    """Per-sample parameters of one batch (None: that lever is off)."""

    angles: torch.Tensor
    flips: torch.Tensor
    zoom: torch.Tensor | None = None
    stretch: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    gamma: torch.Tensor | None = None
    contrast: torch.Tensor | None = None
    brightness: torch.Tensor | None = None
    blur_sigma: torch.Tensor | None = None
    noise_std: torch.Tensor | None = None
    noise_seed: int = 0
    erase: torch.Tensor | None = None  # (n, 4): top, left, height, width as fractions; height 0: none


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def _log_uniform(n: int, limit: float, g: torch.Generator) -> torch.Tensor:
    """Uniform in log space over [1/limit, limit]."""
    return torch.exp(_uniform(n, -math.log(limit), math.log(limit), g))


def sample_params(n: int, generator: torch.Generator, spec: AugmentSpec | None = None) -> AugmentParams:
    """Draw one batch's parameters from `generator` (CPU), in a fixed order."""
    spec = spec or AugmentSpec()
    g = generator
    angles = (torch.rand(n, generator=g) * 2 - 1) * spec.rotate
    p = AugmentParams(angles=angles, flips=torch.rand(n, generator=g) < spec.flip)
    if (spec.scale_min, spec.scale_max) != (1.0, 1.0):
        p.zoom = _uniform(n, spec.scale_min, spec.scale_max, g)
    if spec.aspect > 1.0:
        p.stretch = _log_uniform(n, spec.aspect, g)
    if spec.translate > 0:
        p.shift = _uniform(2 * n, -spec.translate, spec.translate, g).view(n, 2)
    if spec.gamma > 0:
        p.gamma = _log_uniform(n, 1.0 + spec.gamma, g)
    if spec.contrast > 0:
        p.contrast = _uniform(n, 1.0 - spec.contrast, 1.0 + spec.contrast, g)
    if spec.brightness > 0:
        p.brightness = _uniform(n, -spec.brightness, spec.brightness, g)
    if spec.blur_p > 0 and spec.blur_sigma > 0:
        on = torch.rand(n, generator=g) < spec.blur_p
        p.blur_sigma = torch.where(on, _uniform(n, min(0.1, spec.blur_sigma), spec.blur_sigma, g), torch.zeros(n))
    if spec.noise_p > 0 and spec.noise_std > 0:
        on = torch.rand(n, generator=g) < spec.noise_p
        p.noise_std = torch.where(on, _uniform(n, 0.0, spec.noise_std, g), torch.zeros(n))
        p.noise_seed = int(torch.randint(0, 2**62, (1,), generator=g))
    if spec.erase_p > 0:
        on = torch.rand(n, generator=g) < spec.erase_p
        area, ratio = _uniform(n, 0.02, 0.2, g), _log_uniform(n, 3.3, g)
        h, w = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
        top, left = torch.rand(n, generator=g) * (1 - h), torch.rand(n, generator=g) * (1 - w)
        p.erase = torch.stack([top, left, torch.where(on, h, torch.zeros(n)), w], dim=1)
    return p


def affine_theta(
    angles: torch.Tensor,
    flips: torch.Tensor,
    zoom: torch.Tensor | None = None,
    stretch: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """(n, 2, 3) sampling matrices for `affine_grid`: flip(rotate(image)), then zoom, stretch, shift.

    Output pixel p samples the input at R(-angle) @ F @ S^-1 @ p + shift, so the image turns
    by +angle and is then mirrored, matching torchvision's RandomRotation followed by
    RandomHorizontalFlip; S scales x by zoom * sqrt(stretch) and y by zoom / sqrt(stretch).
    """
    rad = angles.to(torch.float32) * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    fx = 1.0 - 2.0 * flips.to(torch.float32)
    sx = torch.ones_like(rad) if zoom is None else 1.0 / zoom.to(torch.float32)
    sy = sx.clone()
    if stretch is not None:
        root = torch.sqrt(stretch.to(torch.float32))
        sx, sy = sx / root, sy * root
    theta = torch.zeros(len(angles), 2, 3, dtype=torch.float32, device=angles.device)
    # Normalised grid coordinates have y pointing down, hence the sign pattern.
    theta[:, 0, 0] = cos * fx * sx
    theta[:, 0, 1] = -sin * sy
    theta[:, 1, 0] = sin * fx * sx
    theta[:, 1, 1] = cos * sy
    if shift is not None:
        theta[:, :, 2] = 2.0 * shift.to(torch.float32)  # fraction of the image -> [-1, 1] grid units
    return theta


def _per_sample(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return values.to(x.device, torch.float32).view(-1, 1, 1, 1)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur with one sigma per sample (0: unchanged), as a batched kornia filter."""
    from kornia.filters import gaussian_blur2d

    k = 2 * math.ceil(3 * float(sigma.max())) + 1
    s = sigma.to(x.device, torch.float32).clamp_min(1e-3)  # a 1e-3 px Gaussian is the identity kernel
    return gaussian_blur2d(x, (k, k), torch.stack([s, s], dim=1), border_type="reflect")


def _intensity(x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """Gamma, contrast, brightness, blur and noise on float pixels in [0, 1]."""
    if p.gamma is not None:
        x = x.clamp_min(0).pow(_per_sample(p.gamma, x))
    if p.contrast is not None:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * _per_sample(p.contrast, x) + mean
    if p.brightness is not None:
        x = x + _per_sample(p.brightness, x)
    if p.blur_sigma is not None and bool((p.blur_sigma > 0).any()):
        x = _blur(x, p.blur_sigma)
    if p.noise_std is not None and bool((p.noise_std > 0).any()):
        g = torch.Generator(device=x.device).manual_seed(p.noise_seed)
        x = x + torch.randn(x.shape, generator=g, device=x.device) * _per_sample(p.noise_std, x)
    return x.clamp(0.0, 1.0)


def _augment(x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """Apply `p` to float pixels (0..255) of shape (n, 1, H, W)."""
    theta = affine_theta(p.angles, p.flips, p.zoom, p.stretch, p.shift).to(x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    levers = (p.gamma, p.contrast, p.brightness, p.blur_sigma, p.noise_std)
    if any(v is not None for v in levers):
        x = _intensity(x / 255.0, p) * 255.0
    if p.erase is not None:
        x = _erase(x, p.erase.to(x.device))
    return x


def _erase(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Fill one rectangle per image (fractions: top, left, height, width) with the image's mean."""
    h, w = x.shape[-2:]
    ys = (torch.arange(h, device=x.device) + 0.5) / h
    xs = (torch.arange(w, device=x.device) + 0.5) / w
    top, left, height, width = (boxes[:, i].view(-1, 1, 1, 1) for i in range(4))
    inside = (ys.view(1, 1, -1, 1) >= top) & (ys.view(1, 1, -1, 1) < top + height)
    inside = inside & (xs.view(1, 1, 1, -1) >= left) & (xs.view(1, 1, 1, -1) < left + width)
    return torch.where(inside, x.mean(dim=(1, 2, 3), keepdim=True), x)


def prepare_batch(
    pixels: torch.Tensor,
    mean: float,
    std: float,
    params: AugmentParams | None = None,
    channels: int = 3,
) -> torch.Tensor:
    """uint8 (n, 1, H, W) on any device -> normalised float (n, channels, H, W), channels-last.

    `mean` and `std` are in pixel units (0..255). With `params` the batch is augmented
    first; padding and rotation fill are black, as in the letterbox.
    """
    x = pixels.to(torch.float32)
    if params is not None:
        x = _augment(x, params)
    x = (x - mean) / std
    return x.expand(-1, channels, -1, -1).contiguous(memory_format=torch.channels_last)
