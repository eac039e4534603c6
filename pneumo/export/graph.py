"""The fold ensemble as one module: letterboxed uint8 pixels in, P(positive) and the run's decision out.

What it computes is what `evaluate.py --images` computes after decoding: each fold model on
its own normalisation of the pixels (and on each test-time-augmentation view the run used),
the softmax, the mean over folds (and views), then P(positive) >= the run's threshold.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pneumo.data.augment import affine_theta
from pneumo.models.inference import TTA_VIEWS


def view_grids(tta: str, size: int) -> torch.Tensor:
    """Sampling grids (views, size, size, 2) of the TTA views after the first (the image itself),
    exactly those `pneumo.models.inference` builds per batch, computed once for the run's image size."""
    views = TTA_VIEWS[tta][1:]
    if not views:
        return torch.zeros(0, size, size, 2)
    angles = torch.tensor([a for a, _ in views], dtype=torch.float32)
    flips = torch.tensor([f for _, f in views], dtype=torch.bool)
    return F.affine_grid(affine_theta(angles, flips), [len(views), 1, size, size], align_corners=False)


class EnsembleGraph(nn.Module):
    """`forward(pixels)`: pixels (B, 1, S, S), uint8 or float in 0..255, letterboxed at the run's size S;
    returns (P(positive) as float32 (B,), decision as bool (B,) = P >= threshold)."""

    def __init__(
        self,
        models: Sequence[nn.Module],
        norms: Sequence[tuple[float, float]],
        positive: int,
        threshold: float,
        grids: torch.Tensor,
    ) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)
        self.norms = [(float(m), float(s)) for m, s in norms]
        self.positive = int(positive)
        self.register_buffer("threshold", torch.tensor(float(threshold), dtype=torch.float32))
        self.register_buffer("grids", grids.to(torch.float32))
        self.eval()

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = pixels.to(torch.float32)
        views = [x]
        for i in range(self.grids.shape[0]):
            grid = self.grids[i : i + 1].expand(x.shape[0], -1, -1, -1)
            views.append(F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
        total = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
        for model, (mean, std) in zip(self.members, self.norms):
            for view in views:
                logits = model(((view - mean) / std).expand(-1, 3, -1, -1))
                total = total + torch.softmax(logits.float(), dim=1)[:, self.positive]
        probability = total / (len(self.members) * len(views))
        return probability, probability >= self.threshold
