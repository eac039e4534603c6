"""MixStyle (Zhou et al., ICLR 2021): mix instance feature statistics between random pairs in training.

Each image's feature "style" (per-channel mean and SD over space, which carry exposure,
contrast and texture) is replaced by a convex mix of its own and another batch image's, so
a style that comes with one class in the training pool (sharper NORMALs, softer PNEUMONIAs)
stops predicting the label. Attached as forward hooks after the first stages of a timm
model, active only in training mode; it adds no weights, so checkpoints are unchanged and
inference is untouched. Its draws come from torch's default generator, which pneumo seeds
from (seed, fold) before each fold (as it does for dropout) and saves with the resume state.
"""

from __future__ import annotations

import torch
from torch import nn

from pneumo.utils.errors import PneumoError

ALPHA = 0.1  # Beta(alpha, alpha) of the mixing weight, the paper's value
STAGES = 3  # after the first three stages past the stem (ResNet: layer1-3), the paper's best for classification
EPS = 1e-6


def mixstyle(x: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """`x` (n, c, h, w) with each sample's channel mean/SD mixed with those of a random other sample."""
    n = x.shape[0]
    f = x.float()
    mu = f.mean(dim=(2, 3), keepdim=True)
    sig = (f.var(dim=(2, 3), keepdim=True) + EPS).sqrt()
    mu, sig = mu.detach(), sig.detach()
    lam = torch.distributions.Beta(alpha, alpha).sample((n, 1, 1, 1)).to(f.device)
    perm = torch.randperm(n).to(f.device)
    mixed_mu = lam * mu + (1 - lam) * mu[perm]
    mixed_sig = lam * sig + (1 - lam) * sig[perm]
    return ((f - mu) / sig * mixed_sig + mixed_mu).to(x.dtype)


def stage_modules(model: nn.Module, stages: int = STAGES) -> list[nn.Module]:
    """The first `stages` feature stages after the stem of a timm model (from its `feature_info`)."""
    info = getattr(model, "feature_info", None)
    names = [f["module"] for f in info] if info else []
    if len(names) < stages + 1:
        raise PneumoError(f"--mixstyle: {type(model).__name__} has no {stages} feature stages after its stem")
    modules = dict(model.named_modules())
    return [modules[name] for name in names[1 : stages + 1]]


def attach_mixstyle(model: nn.Module, p: float, alpha: float = ALPHA) -> None:
    """Apply MixStyle with probability `p` per batch after each of the model's first stages, in training only."""

    def hook(module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor | None:
        if not module.training or output.shape[0] < 2 or float(torch.rand(())) >= p:
            return None
        return mixstyle(output, alpha)

    for stage in stage_modules(model):
        stage.register_forward_hook(hook)
