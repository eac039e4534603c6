"""Mixup and CutMix on whole batches, drawn from the fold's augmentation generator.

timm's `Mixup` draws from NumPy's and Python's global generators, which a fold does not own
(resume and process count would change its draws); this is the same recipe with every
draw taken from the fold's own seeded generator. The batch is mixed with itself reversed,
as timm does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class MixSpec:
    """Beta(alpha, alpha) concentrations; 0 turns a method off. With both on, each batch picks one."""

    mixup: float = 0.0
    cutmix: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0


@dataclass
class Mixed:
    """A mixed batch: the loss is lam * loss(targets) + (1 - lam) * loss(partners)."""

    x: torch.Tensor
    targets: torch.Tensor
    partners: torch.Tensor
    lam: float


def cutmix_box(size: tuple[int, int], lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box covering about 1 - lam of the image, centred uniformly (clipped at the edges)."""
    h, w = size
    cut = np.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    return max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)


def mix_batch(x: torch.Tensor, y: torch.Tensor, spec: MixSpec, generator: torch.Generator) -> Mixed:
    """Mix `x` (n, C, H, W) with its reverse; `lam` is the share of each image's own label."""
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    use_cutmix = spec.cutmix > 0 and (spec.mixup <= 0 or rng.random() < 0.5)
    partners = y.flip(0)
    if use_cutmix:
        lam = float(rng.beta(spec.cutmix, spec.cutmix))
        y0, y1, x0, x1 = cutmix_box(tuple(x.shape[-2:]), lam, rng)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (x.shape[-2] * x.shape[-1])  # the box actually pasted
    else:
        lam = float(rng.beta(spec.mixup, spec.mixup))
        x = x * lam + x.flip(0) * (1.0 - lam)
    return Mixed(x, y, partners, lam)
