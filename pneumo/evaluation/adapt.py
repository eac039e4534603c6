"""Label-free adaptation of a run's fold models to a new site: AdaBN and the site's class prior.

AdaBN (Li et al. 2016, "Revisiting batch normalization for practical domain adaptation") keeps
every learned weight and re-estimates each BatchNorm layer's running mean and variance on the
site's images, so each layer sees its inputs standardised as in training even when the scanner
changes their intensity or sharpness. The prior step estimates the site's positive-class prior
by EM on the ensemble's scores (Saerens et al. 2002) and moves a prior-dependent operating point.

Everything here takes pixels or scores: no function of this module can be given a label.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from rich.table import Table
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from pneumo.data.augment import prepare_batch
from pneumo.data.dataset import SUFFIX_TEXT, expand_image_paths
from pneumo.metrics.prior import em_prior, prior_threshold
from pneumo.metrics.threshold import parse_policy
from pneumo.models.inference import Autocast
from pneumo.utils.errors import PneumoError

METHODS: dict[str, tuple[str, ...]] = {"adabn": ("adabn",), "prior": ("prior",), "both": ("adabn", "prior")}
MIN_IMAGES = 32  # BatchNorm statistics (and the prior) from fewer images are mostly noise
PRIOR_POLICIES = ("fixed", "prior")  # the decision policies whose threshold depends on the class prior


def site_images(value: str, data_dir: Path) -> tuple[Path, str | None, list[Path]]:
    """`--adapt-on`: (its folder, the split name when it names a split of `data_dir`, its image files).

    A plain name that is a folder of `data_dir` is that split; anything else must be a folder.
    Images are found recursively: class folders, if any, are just folders (their names are never read).
    """
    split = value if "/" not in value and (data_dir / value).is_dir() else None
    folder = data_dir / value if split else Path(value).expanduser()
    if not folder.is_dir():
        raise PneumoError(
            f"--adapt-on {value}: neither a split of {data_dir} nor a folder; give a split name (e.g. test) "
            "or a folder of images from the site"
        )
    try:
        files, _ = expand_image_paths([str(folder)])
    except PneumoError:
        raise PneumoError(f"--adapt-on {value}: {folder} holds no {SUFFIX_TEXT} images") from None
    return folder.resolve(), split, files


def check_enough(value: str, images: int, methods: Sequence[str]) -> None:
    """Refuse fewer than MIN_IMAGES adaptation images."""
    if images < MIN_IMAGES:
        what = "BatchNorm statistics" if "adabn" in methods else "the site's prior"
        raise PneumoError(
            f"--adapt-on {value}: {images} readable image(s), at least {MIN_IMAGES} needed: {what} estimated "
            "from fewer images are mostly noise; give a larger folder of the site's images"
        )


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The model's BatchNorm layers that keep running statistics (those AdaBN re-estimates)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """AdaBN: replace every BatchNorm layer's running mean/var by estimates on `batches` (model
    inputs, at least one); returns the number of images seen. The model is left in eval mode.

    The statistics are reset and averaged over the batches with equal weight per batch
    (momentum None); only the BatchNorm layers run in train mode, so dropout, drop-path and
    the like stay off and no other state changes.
    """
    layers = batchnorm_layers(model)
    momenta = [m.momentum for m in layers]
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    seen = 0
    try:
        for x in batches:
            model(x)
            seen += len(x)
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.eval()
    return seen


def adapt_models(
    models: Sequence[tuple[nn.Module, tuple[float, float]]],
    pixels: torch.Tensor,
    batch_size: int,
    device: torch.device,
    autocast: Autocast,
) -> int:
    """AdaBN for each (model, its normalisation) on uint8 pixels (n, 1, H, W), preprocessed as for
    prediction without test-time augmentation; returns the images each model saw.

    The batches differ in size by at most one image (none of a single image, which BatchNorm
    cannot normalise), so the per-batch average weighs every image nearly equally.
    """
    chunks = torch.tensor_split(pixels, max(1, math.ceil(len(pixels) / max(batch_size, 2))))
    seen = 0
    for model, norm in models:
        with autocast():
            seen = adapt_batchnorm(model, (prepare_batch(c.to(device), *norm) for c in chunks))
    return seen


def site_threshold(policy: str, threshold: float, train_prior: float, site_prior: float) -> float:
    """The run's decision threshold moved to a site whose positive-class prior is `site_prior`.

    fixed:X calls positive where the posterior is >= X; at the site the posterior is the score
    Bayes-corrected from the training prior π_t to the site's π, and that cut on it is the cut
    prior_threshold(X, π_t, π) on the score. prior minimises errors at the out-of-fold prior, at
    the site at its own: prior_threshold(0.5, π_t, π). youden, balanced, sensitivity:X and
    specificity:X are set by sensitivity and specificity, which a change of prior alone leaves
    as they were: their out-of-fold threshold is kept (AdaBN is what helps it transfer).
    """
    name = parse_policy(policy).name
    if name not in PRIOR_POLICIES:
        return float(threshold)
    return prior_threshold(threshold if name == "fixed" else 0.5, train_prior, site_prior)


def adapt_decision(scores: np.ndarray, policy: str, threshold: float, train_prior: float) -> dict:
    """The site's positive-class prior by EM on the ensemble's P(positive) `scores` of its images, and
    the decision's threshold moved to it (`site_threshold`)."""
    em = em_prior(scores, train_prior)
    return {
        "site_prior": em["prior"],
        "em": {"iterations": em["iterations"], "converged": em["converged"]},
        "threshold": site_threshold(policy, threshold, train_prior, em["prior"]),
    }


def describe(record: dict, policy: str) -> str:
    """The adaptation record in one line."""
    done = ["AdaBN"] if "adabn" in record["methods"] else []
    if record["site_prior"] is not None:
        done.append(f"site prior {record['site_prior']:.2f} (trained at {record['train_prior']:.2f})")
    before, after = record["threshold_before"], record["threshold"]
    moved = f"threshold {before:.3f} -> {after:.3f}"
    if "prior" not in record["methods"]:
        moved = f"threshold {before:.3f} kept (no prior step)"
    elif parse_policy(policy).name not in PRIOR_POLICIES:
        moved = f"threshold {before:.3f} kept ({policy} does not depend on the prior)"
    return f"adapted to {record['images']} images from {record['source']}: {', '.join(done)}, {moved}"


def shift_line(split: str, shift: dict) -> str:
    """The score-shift statistic of the split before and after adaptation, in one line."""

    def stat(s: dict) -> str:
        p = s["p_value"]
        return f"D {s['D']:.3f} ({'p < 0.001' if p < 0.001 else f'p {p:.2g}'})"

    return (
        f"{split}: score shift against out-of-fold (label-free KS distance) {stat(shift['before'])} before "
        f"adaptation, {stat(shift['after'])} after"
    )


def adaptation_table(record: dict) -> Table:
    """The adaptation record: what was adapted to which images, the prior, the threshold and the score shift."""
    table = Table(title="Label-free site adaptation (no label of the adaptation images is read)")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    prior = record["site_prior"]
    table.add_row("methods", "", ", ".join(record["methods"]))
    table.add_row("adaptation images", "", f"{record['images']} from {record['source']}")
    table.add_row("positive-class prior", f"{record['train_prior']:.3f}", "-" if prior is None else f"{prior:.3f}")
    table.add_row("threshold", f"{record['threshold_before']:.3f}", f"{record['threshold']:.3f}")
    if "shift" in record:
        before, after = record["shift"]["before"], record["shift"]["after"]
        table.add_row("score shift KS D", f"{before['D']:.3f}", f"{after['D']:.3f}")
        table.add_row("score shift p", f"{before['p_value']:.3g}", f"{after['p_value']:.3g}")
    return table
