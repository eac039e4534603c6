"""`export_run`: one file holding a run's whole fold ensemble, its contract and model card, checked
against pneumo's own inference path before it is reported."""

from __future__ import annotations

import json
import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pneumo.evaluation.ensemble import mean_probs
from pneumo.export.bundle import Bundle, load_bundle
from pneumo.export.formats import CARD_KEY, CONTRACT_KEY, SUFFIX, run_file, write_onnx, write_torchscript
from pneumo.models.inference import predict
from pneumo.report.model_card import MODEL_CARD, write_model_card
from pneumo.utils.errors import PneumoError

EXPORT_DIR = "export"
CHECK_IMAGES = 4  # random letterboxes the written file is checked on
TOLERANCE = 1e-5  # max |P(file) - P(pneumo)| in float32 accepted by the check


@dataclass
class Exported:
    path: Path
    card: Path
    bytes: int
    max_abs_diff: float  # on CHECK_IMAGES random images, against pneumo's eager ensemble
    contract: dict


def default_output(run_dir: Path, fmt: str) -> Path:
    return run_dir / EXPORT_DIR / f"ensemble{SUFFIX[fmt]}"


def eager_probability(bundle: Bundle, pixels: np.ndarray) -> np.ndarray:
    """P(positive) of pneumo's own inference (models.inference.predict + the ensemble mean), float32, no autocast."""
    batches = [(torch.from_numpy(np.ascontiguousarray(pixels)), torch.arange(len(pixels)))]
    pairs = [(m.model, m.norm) for m in bundle.models]
    per_fold = predict(pairs, batches, torch.device("cpu"), nullcontext, bundle.tta)
    return mean_probs(per_fold)[:, int(bundle.meta["positive"])]


def export_run(run_dir: Path, fmt: str, output: Path | None = None) -> Exported:
    """Write `run_dir`'s ensemble as `fmt` to `output` (default RUN/export/ensemble.onnx|.pt) and its
    model card beside it (FILE stem + .MODEL_CARD.md); refuse to report a file that disagrees with pneumo."""
    bundle = load_bundle(run_dir)
    card = write_model_card(run_dir).read_text(encoding="utf-8")
    path = Path(output) if output else default_output(run_dir, fmt)
    contract = bundle.contract()
    extra = {CONTRACT_KEY: json.dumps(contract), CARD_KEY: card}
    size = bundle.image_size
    example = torch.zeros(2, 1, size, size, dtype=torch.uint8)
    pixels = np.random.default_rng(0).integers(0, 256, (CHECK_IMAGES, 1, size, size), dtype=np.uint8)
    # Written and checked under a temporary name (same suffix: run_file reads the format from it), then renamed:
    # a file that fails the check, or a write cut short, never stands under the final name.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        (write_onnx if fmt == "onnx" else write_torchscript)(bundle.graph(), partial, example, extra)
        got, decided = run_file(partial, pixels)
        want = eager_probability(bundle, pixels)
        diff = float(np.abs(got.astype(np.float64) - want).max())
        if diff > TOLERANCE or not np.array_equal(decided, got >= contract["threshold"]):
            raise PneumoError(
                f"{path}: the exported ensemble disagrees with pneumo's (max |dP| {diff:.2e}); not written"
            )
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    sidecar = path.with_name(f"{path.stem}.{MODEL_CARD}")
    shutil.copyfile(run_dir / MODEL_CARD, sidecar)
    return Exported(path, sidecar, path.stat().st_size, diff, contract)
