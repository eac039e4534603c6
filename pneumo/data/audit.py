"""Data audit: low-level image statistics that could let a model take a shortcut.

Per image: sharpness (mean |Laplacian| of the decoded image), brightness and contrast
(mean and standard deviation of its pixels), original width, height and aspect ratio,
letterbox padding, file size, bits per pixel and JPEG quality (estimated from the
quantisation tables). For each statistic the audit reports its distribution per split and
class, how well it *alone* tells the classes apart in the training pool (ROC-AUC), and how
far it shifts between the pool and each evaluation split within a class (the ROC-AUC of
"evaluation split vs pool"; 0.5 is no shift). A statistic that alone predicts the label,
or that shifts between splits, is a shortcut a model can learn and then misapply.

Beyond single statistics, the audit asks whether the *pixel layout* shifts: a linear model on
each image shrunk to 32x32 and standardised (its own brightness and contrast removed) tries to
tell each evaluation split from the pool within a class (cross-validated ROC-AUC). Framing,
positioning and exposure differences show up here when no single statistic moves.

Run as `python -m pneumo.audit_cli DATA_DIR` (`pneumo-audit`), by `train.py --audit`, and inside every training run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from rich.table import Table
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from pneumo.data import dicom
from pneumo.data.cache import DecodedImages
from pneumo.data.dataset import Layout
from pneumo.utils.errors import PneumoError

# A statistic "alone predicts" the label, or "shifts", when its AUC is this far from 0.5.
WARN_AUC = 0.70
_CHUNK = 256
LAYOUT_SIZE = 32
# IJG's standard luminance quantisation table (quality 50), in zigzag order as Pillow returns it.
_IJG_LUMA = np.array(
    [16, 11, 12, 14, 12, 10, 16, 14, 13, 14, 18, 17, 16, 19, 24, 40, 26, 24, 22, 22, 24, 49, 35, 37, 29, 40, 58, 51,
     61, 60, 57, 51, 56, 55, 64, 72, 92, 78, 64, 68, 87, 69, 55, 56, 80, 109, 81, 87, 95, 98, 103, 104, 103, 62, 77,
     113, 121, 112, 100, 120, 92, 101, 103, 99],
    dtype=np.float64,
)  # fmt: skip

STATISTICS = {
    "sharpness": "mean |Laplacian| of the decoded image (0..1 scale)",
    "brightness": "mean pixel value (0..1)",
    "contrast": "pixel standard deviation (0..1)",
    "width": "original width, px",
    "height": "original height, px",
    "aspect": "original width / height",
    "padding": "share of the letterbox that is padding",
    "file_kb": "file size, KiB",
    "bits_per_pixel": "file bits per original pixel",
    "jpeg_quality": "JPEG quality estimated from the luminance quantisation table (NaN: not a JPEG)",
}


def jpeg_quality(luma_table: Sequence[int]) -> float:
    """The IJG quality (1-100) whose scaling of the standard table is closest to `luma_table`."""
    scale = 100.0 * float(np.median(np.asarray(luma_table, dtype=np.float64) / _IJG_LUMA))
    return float(np.clip(5000.0 / scale if scale > 100 else (200.0 - scale) / 2.0, 1, 100))


def file_statistics(path: Path) -> dict[str, float]:
    """Header facts of one image file (Pillow or pydicom reads the header, not the pixels)."""
    tables: dict = {}
    dims = dicom.image_size(path)
    if dims is None:
        with Image.open(path) as img:
            dims = img.size
            tables = getattr(img, "quantization", None) or {}
    w, h = dims
    size = path.stat().st_size
    return {
        "width": float(w),
        "height": float(h),
        "aspect": w / h,
        "file_kb": size / 1024,
        "bits_per_pixel": 8.0 * size / (w * h),
        "jpeg_quality": jpeg_quality(tables[0]) if 0 in tables else float("nan"),
    }


def pixel_statistics(decoded: DecodedImages, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Sharpness, brightness and contrast of the decoded images, over their content (not the padding)."""
    if decoded.pixels is None:
        raise PneumoError("the audit needs decoded pixels; run it without --no-cache")
    out = {k: np.zeros(len(indices)) for k in ("sharpness", "brightness", "contrast")}
    for start in range(0, len(indices), _CHUNK):
        part = indices[start : start + _CHUNK]
        x = decoded.pixels[part].astype(np.float32) / 255.0
        content = x > 0  # letterbox padding is exactly 0
        lap = np.abs(4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:])
        inner = content[:, 1:-1, 1:-1]
        n = np.maximum(content.sum(axis=(1, 2)), 1)
        mean = x.sum(axis=(1, 2)) / n
        sl = slice(start, start + len(part))
        out["sharpness"][sl] = (lap * inner).sum(axis=(1, 2)) / np.maximum(inner.sum(axis=(1, 2)), 1)
        out["brightness"][sl] = mean
        out["contrast"][sl] = np.sqrt(np.maximum((x * x).sum(axis=(1, 2)) / n - mean * mean, 0))
    return out


def image_statistics(decoded: DecodedImages, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Every statistic of STATISTICS for the decoded images `indices`."""
    rows = [file_statistics(decoded.root / decoded.files[i]) for i in indices]
    stats = {k: np.asarray([r[k] for r in rows]) for k in rows[0]} if rows else {}
    w, h = stats.get("width", np.ones(0)), stats.get("height", np.ones(0))
    long_side = np.maximum(w, h)
    stats["padding"] = 1.0 - (w / long_side) * (h / long_side)
    stats.update(pixel_statistics(decoded, indices))
    return {k: stats[k] for k in STATISTICS}


def layout_features(decoded: DecodedImages, indices: np.ndarray, size: int = LAYOUT_SIZE) -> np.ndarray:
    """Each image box-averaged to size x size, less its own mean, over its own SD; one row per image.

    The audit calls it after `pixel_statistics`, which refuses a decode without pixels."""
    small = [np.asarray(Image.fromarray(decoded.pixels[i]).resize((size, size), Image.BOX)) for i in indices]
    x = np.asarray(small, dtype=np.float64).reshape(len(indices), size * size)
    return (x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + 1e-6)


def layout_shift_auc(split: np.ndarray, pool: np.ndarray) -> float | None:
    """Cross-validated ROC-AUC of a linear model telling `split` rows from `pool` rows (None: too few)."""
    n = min(len(split), len(pool))
    if n < 2:
        return None
    x, y = np.concatenate([split, pool]), np.r_[np.ones(len(split)), np.zeros(len(pool))]
    folds = StratifiedKFold(n_splits=min(5, n), shuffle=True, random_state=0)
    model = LogisticRegression(C=0.01, max_iter=1000)
    return float(roc_auc_score(y, cross_val_predict(model, x, y, cv=folds, method="predict_proba")[:, 1]))


def _auc(positive: np.ndarray, negative: np.ndarray) -> float | None:
    """ROC-AUC of 'higher value = positive group'; None when undefined (a group empty or constant data)."""
    positive, negative = positive[np.isfinite(positive)], negative[np.isfinite(negative)]
    values = np.concatenate([positive, negative])
    if not len(positive) or not len(negative) or np.ptp(values) == 0:
        return None
    labels = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    return float(roc_auc_score(labels, values))


def _summary(values: np.ndarray) -> dict[str, float | int] | None:
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    p10, median, p90 = np.percentile(values, [10, 50, 90])
    return {
        "n": len(values),
        "mean": float(values.mean()),
        "p10": float(p10),
        "median": float(median),
        "p90": float(p90),
    }


def _far(auc: float | None) -> bool:
    return auc is not None and abs(auc - 0.5) >= WARN_AUC - 0.5


def audit(
    decoded: DecodedImages,
    labels: np.ndarray,
    classes: Sequence[str],
    positive: int,
    pool: np.ndarray,
    evals: dict[str, np.ndarray],
) -> dict:
    """The audit of the pool and evaluation splits (indices into `decoded`), with warnings."""
    groups = {"pool": pool, **evals}
    stats = {name: image_statistics(decoded, idx) for name, idx in groups.items()}
    report: dict = {"classes": list(classes), "positive": classes[positive], "statistics": {}, "warnings": []}
    for key, meaning in STATISTICS.items():
        entry: dict = {"meaning": meaning, "distribution": {}, "label_auc": {}, "shift_auc": {}}
        for name, idx in groups.items():
            y = labels[idx]
            values = stats[name][key]
            entry["distribution"][name] = {c: _summary(values[y == k]) for k, c in enumerate(classes)}
            entry["label_auc"][name] = _auc(values[y == positive], values[y != positive])
        for name in evals:
            entry["shift_auc"][name] = {
                c: _auc(stats[name][key][labels[evals[name]] == k], stats["pool"][key][labels[pool] == k])
                for k, c in enumerate(classes)
            }
        report["statistics"][key] = entry
        auc = entry["label_auc"]["pool"]
        if _far(auc):
            higher = classes[positive] if auc > 0.5 else classes[1 - positive]
            report["warnings"].append(
                f"{key} alone separates the classes in the training pool (ROC-AUC {max(auc, 1 - auc):.2f}, "
                f"higher in {higher}): a shortcut a model can learn"
            )
        for name, per_class in entry["shift_auc"].items():
            for c, shift in per_class.items():
                if _far(shift):
                    way = "higher" if shift > 0.5 else "lower"
                    report["warnings"].append(
                        f"{key} of {c} images is {way} in {name} than in the training pool "
                        f"(ROC-AUC {max(shift, 1 - shift):.2f} of {name} vs pool)"
                    )
    report["layout"] = layout_shift(decoded, labels, classes, pool, evals)
    for name, per_class in report["layout"]["shift_auc"].items():
        for c, shift in per_class.items():
            if shift is not None and shift >= WARN_AUC:
                report["warnings"].append(
                    f"the pixel layout of {c} images differs between {name} and the training pool: a linear model "
                    f"on {LAYOUT_SIZE}x{LAYOUT_SIZE} standardised pixels tells them apart (ROC-AUC {shift:.2f}), "
                    "so a model trained on the pool may read that difference as the label"
                )
    return report


def layout_shift(
    decoded: DecodedImages, labels: np.ndarray, classes: Sequence[str], pool: np.ndarray, evals: dict[str, np.ndarray]
) -> dict:
    """Per evaluation split and class, how well the pixel layout alone tells that split from the pool."""
    features = {name: layout_features(decoded, idx) for name, idx in {"pool": pool, **evals}.items()}
    shift = {
        name: {
            c: layout_shift_auc(features[name][labels[idx] == k], features["pool"][labels[pool] == k])
            for k, c in enumerate(classes)
        }
        for name, idx in evals.items()
    }
    meaning = f"cross-validated ROC-AUC of a linear model on {LAYOUT_SIZE}x{LAYOUT_SIZE} standardised pixels"
    return {"meaning": meaning, "shift_auc": shift}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def audit_table(report: dict) -> Table:
    """One row per statistic: class means per split, label AUC in the pool, shift AUCs."""
    classes = report["classes"]
    first = next(iter(report["statistics"].values()))
    splits = list(first["distribution"])
    table = Table(title="Data audit: low-level statistics (AUC 0.5 = uninformative / no shift)")
    table.add_column("statistic")
    for split in splits:
        for c in classes:
            table.add_column(f"{split} {c} mean", justify="right")
    table.add_column("label AUC (pool)", justify="right")
    for split in splits[1:]:
        for c in classes:
            table.add_column(f"shift {split}/pool {c}", justify="right")
    for key, entry in report["statistics"].items():
        means = [_fmt((entry["distribution"][s][c] or {}).get("mean")) for s in splits for c in classes]
        shifts = [_fmt(entry["shift_auc"][s][c]) for s in splits[1:] for c in classes]
        table.add_row(key, *means, _fmt(entry["label_auc"]["pool"]), *shifts)
    layout = report["layout"]["shift_auc"]
    shifts = [_fmt(layout[s][c]) for s in splits[1:] for c in classes]
    table.add_row(f"layout ({LAYOUT_SIZE} px, linear)", *["" for _ in splits for _ in classes], "", *shifts)
    return table


def pool_and_evals(layout: Layout, decoded: DecodedImages, keep_val_apart: bool) -> tuple[np.ndarray, ...]:
    """(labels, pool, {split: indices}) of the usable decoded images of a scanned layout."""
    index = decoded.index_of()
    labels = np.zeros(len(decoded.files), dtype=np.int64)
    for split in layout.splits.values():
        for f, y in zip(split.files, split.labels):
            labels[index[f]] = y

    def usable(files: Sequence[str]) -> np.ndarray:
        return np.asarray([index[f] for f in files if index[f] not in decoded.errors], dtype=np.int64)

    evals = {s: usable(layout.splits[s].files) for s in layout.eval_splits(keep_val_apart)}
    return labels, usable(layout.pool(keep_val_apart).files), evals
