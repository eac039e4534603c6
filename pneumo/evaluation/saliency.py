"""Grad-CAM of the fold ensemble (captum's LayerGradCam) and overlay figures.

Each fold model's Grad-CAM for the positive class is taken at its last feature stage
(`layer4` for timm ResNets and SE-ResNets), upsampled bilinearly to the input size, and the
fold maps are averaged before the ReLU: for a global-average-pooled linear head the map is
each region's contribution to the logit, so the mean map is the contribution to the fold
models' mean logit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from pneumo.data.augment import prepare_batch
from pneumo.data.cache import DecodedImages, decode_file
from pneumo.models.fold_model import FoldModel
from pneumo.utils.errors import PneumoError
from pneumo.utils.fsutil import atomic_path


def target_layer(model: nn.Module) -> nn.Module:
    """The model's last feature stage, from timm's feature_info (`layer4` in ResNets)."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise PneumoError(f"{type(model).__name__}: no timm feature_info, cannot pick a Grad-CAM layer")
    return model.get_submodule(info[-1]["module"])


def grad_cam(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """Grad-CAM of class `target` for a normalised batch, before the ReLU, at the input size (n, H, W)."""
    model.eval()
    with torch.enable_grad():
        cam = LayerGradCam(model, target_layer(model)).attribute(x, target=target, relu_attributions=False)
    return LayerAttribution.interpolate(cam.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0]


def ensemble_cam(models: Sequence[FoldModel], pixels: torch.Tensor, target: int, batch_size: int = 16) -> np.ndarray:
    """Mean of the fold models' Grad-CAMs for uint8 (n, 1, H, W) pixels; ReLU'd, each map scaled to [0, 1]."""
    device = next(models[0].model.parameters()).device
    maps = []
    for start in range(0, len(pixels), batch_size):
        batch = pixels[start : start + batch_size].to(device)
        mean = torch.stack([grad_cam(m.model, prepare_batch(batch, m.mean, m.std), target) for m in models]).mean(0)
        maps.append(mean.float().cpu())
    cams = torch.relu(torch.cat(maps)).numpy() if maps else np.zeros((0, *pixels.shape[-2:]))
    peak = cams.reshape(len(cams), -1).max(axis=1) if len(cams) else np.zeros(0)
    return cams / np.where(peak > 0, peak, 1.0)[:, None, None]


def load_pixels(decoded: DecodedImages, files: Sequence[str]) -> torch.Tensor:
    """uint8 (n, 1, H, W) pixels of `files`: from the decode cache, or decoded now under --no-cache."""
    index = decoded.index_of()
    if decoded.pixels is not None:
        rows = [np.asarray(decoded.pixels[index[f]]) for f in files]
    else:
        rows = [decode_file(decoded.root / f, decoded.size)[0] for f in files]
    return torch.from_numpy(np.stack(rows)).unsqueeze(1) if rows else torch.zeros((0, 1, decoded.size, decoded.size))


def pick_images(
    files: Sequence[str], positive: np.ndarray, scores: np.ndarray, threshold: float, n: int, seed: int
) -> dict[str, list[int]]:
    """Rows to show: the (at most n) most confident errors at the threshold, and n rows drawn at random (seeded)."""
    positive = np.asarray(positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    wrong = np.flatnonzero((scores >= threshold) != positive)
    wrong = wrong[np.argsort(-np.abs(scores[wrong] - threshold), kind="stable")][:n]
    sample = np.sort(np.random.default_rng(seed).choice(len(files), size=min(n, len(files)), replace=False))
    return {"misclassified": wrong.tolist(), "sample": sample.tolist()}


def overlay_figure(
    path: Path, title: str, pixels: np.ndarray, cams: np.ndarray, captions: Sequence[str], columns: int = 4
) -> None:
    """A grid of X-rays with their Grad-CAM as a translucent heat map, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, math.ceil(len(pixels) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.2 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, cam, caption in zip(axes.ravel(), pixels, cams, captions):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax.imshow(cam, cmap="jet", alpha=0.35, vmin=0, vmax=1)
        ax.set_title(caption, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
