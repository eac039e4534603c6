"""Grad-CAM of the fold ensemble against Grad-CAM computed by hand with autograd."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pneumo.data.augment import prepare_batch
from pneumo.evaluation.saliency import ensemble_cam, grad_cam, pick_images
from pneumo.models.factory import create_model
from pneumo.models.fold_model import FoldModel


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("test_resnet", dropout=0.0, init="timm").eval()


def _by_hand(model: torch.nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """Selvaraju et al.: ReLU-free sum over channels of (spatial mean of d logit / d A) x A, upsampled."""
    grabbed = {}
    handle = model.layer4.register_forward_hook(lambda m, i, out: grabbed.update(a=out))
    logits = model(x)
    handle.remove()
    (grads,) = torch.autograd.grad(logits[:, target].sum(), grabbed["a"])
    cam = (grads.mean(dim=(2, 3), keepdim=True) * grabbed["a"]).sum(dim=1, keepdim=True)
    return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0].detach()


def _pixels(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 1, 64, 64), dtype=np.uint8))


def test_grad_cam_of_layer4_equals_the_hand_computed_map():
    model, pixels = _model(0), _pixels()
    x = prepare_batch(pixels, 120.0, 60.0)
    np.testing.assert_allclose(grad_cam(model, x, 1).numpy(), _by_hand(model, x, 1).numpy(), rtol=1e-4, atol=1e-6)


def test_ensemble_map_is_the_relu_of_the_mean_fold_map_scaled_to_one():
    folds = [FoldModel(k, _model(k), 100.0 + 20 * k, 50.0, {}) for k in range(2)]
    with torch.no_grad():  # one fold's map for class 1 all positive, the other's all negative
        folds[0].model.get_classifier().weight[1].abs_()
        folds[1].model.get_classifier().weight[1].abs_().mul_(-0.5)
    pixels = _pixels(seed=1)
    maps = [_by_hand(f.model, prepare_batch(pixels, f.mean, f.std), 1) for f in folds]
    expected = torch.relu(torch.stack(maps).mean(0)).numpy()
    peak = expected.reshape(len(expected), -1).max(axis=1)
    assert peak.min() > 0  # every image's map is compared on something
    np.testing.assert_allclose(ensemble_cam(folds, pixels, 1), expected / peak[:, None, None], rtol=1e-4, atol=1e-6)


def test_pictures_are_the_most_confident_errors_at_the_threshold_and_a_seeded_sample():
    files = [f"f{i}" for i in range(10)]
    positive = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], bool)
    scores = np.array([0.9, 0.1, 0.5, 0.35, 0.8, 0.2, 0.95, 0.6, 0.3, 0.41])
    picked = pick_images(files, positive, scores, 0.4, n=3, seed=5)
    assert picked["misclassified"] == [6, 1, 7]  # |score - 0.4|: 0.55, 0.3, 0.2 (then 0.05, 0.01)
    assert picked["sample"] == pick_images(files, positive, scores, 0.4, n=3, seed=5)["sample"]
    assert len(set(picked["sample"])) == 3
