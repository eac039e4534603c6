"""Batched inference of one or several models on the same batches, with optional test-time augmentation."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager

import numpy as np
import torch
from torch import nn

from pneumo.data.augment import AugmentParams, prepare_batch

Autocast = Callable[[], AbstractContextManager]
Batch = tuple[torch.Tensor, torch.Tensor]


# Test-time augmentation: (rotation in degrees, horizontal flip) per view; the first is the image itself.
TTA_VIEWS: dict[str, tuple[tuple[float, bool], ...]] = {
    "none": ((0.0, False),),
    "flip": ((0.0, False), (0.0, True)),
    "flip-rotate": ((0.0, False), (0.0, True), (-5.0, False), (5.0, False)),
}


def _view(x: torch.Tensor, norm: tuple[float, float], angle: float, flip: bool) -> torch.Tensor:
    if angle == 0.0 and not flip:
        return prepare_batch(x, *norm)
    n = len(x)
    params = AugmentParams(angles=torch.full((n,), angle), flips=torch.full((n,), flip, dtype=torch.bool))
    return prepare_batch(x, *norm, params=params)


@torch.inference_mode()
def predict(
    models: Sequence[tuple[nn.Module, tuple[float, float]]],
    batches: Iterable[Batch],
    device: torch.device,
    autocast: Autocast,
    tta: str = "none",
) -> np.ndarray:
    """Softmax probabilities (n_models, n_samples, n_classes) of each (model, normalisation).

    With `tta`, each model's probabilities are the mean over the views of TTA_VIEWS[tta].
    Batch-major: each batch is read and moved once, then given to every model.
    """
    views = TTA_VIEWS[tta]
    for model, _ in models:
        model.eval()
    chunks: list[torch.Tensor] = []
    for pixels, _ in batches:
        x = pixels.to(device, non_blocking=True)
        outs = []
        for model, norm in models:
            probs = []
            for angle, flip in views:
                with autocast():
                    logits = model(_view(x, norm, angle, flip))
                probs.append(torch.softmax(logits.float(), dim=1).cpu())
            outs.append(torch.stack(probs).mean(0))
        chunks.append(torch.stack(outs))
    if not chunks:
        return np.zeros((len(models), 0, 2))
    return torch.cat(chunks, dim=1).double().numpy()
