"""Labels from a CSV (`--labels FILE.csv`) for data sets not laid out in class folders.

Columns: `file` (relative to --data-dir) and `label`, optionally `patient` (groups the folds:
every image of a patient in one fold) and `split` (train, val or test; default train). The
classes are the training rows' two labels, sorted (the positive class is PNEUMONIA when present,
else the second). Everything is checked before training, each problem a one-line error naming
the CSV's line: a missing column or value, a path that is absolute or escapes the data root, a
file listed twice, a file that does not exist or is not an image file, a label outside the
classes, an unknown split.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from pneumo.data.dataset import IMAGE_SUFFIXES, SPLITS, ImageSet, Layout, scan
from pneumo.utils.errors import PneumoError

COLUMNS = ("file", "label")
OPTIONAL = ("patient", "split")


def scan_labels(root: str | Path, labels_csv: str | Path) -> Layout:
    """The data set that `labels_csv` describes under `root`; PneumoError on the first problem."""
    root, path = Path(root).expanduser(), Path(labels_csv).expanduser()
    if not root.is_dir():
        raise PneumoError(f"--data-dir {root} is not a directory (the root of the files in --labels {path})")
    rows = _read(path)
    seen: dict[str, int] = {}
    for line, row in rows:
        file = _checked_file(root, path, line, row["file"])
        if file in seen:
            raise PneumoError(f"--labels {path} line {line}: {file} is listed twice (first on line {seen[file]})")
        seen[file] = line
        row["file"] = file
    train = [r for _, r in rows if r["split"] == "train"]
    classes = tuple(sorted({r["label"] for r in train}))
    if len(classes) != 2:
        raise PneumoError(f"--labels {path}: the train rows must have exactly two labels; found {list(classes)}")
    splits = {}
    for split in SPLITS:
        chosen = [(line, r) for line, r in rows if r["split"] == split]
        outside = next(((line, r) for line, r in chosen if r["label"] not in classes), None)
        if outside:
            line, r = outside
            raise PneumoError(f"--labels {path} line {line}: label {r['label']!r} is not one of the classes {classes}")
        if chosen or split == "train":
            splits[split] = ImageSet(
                tuple(r["file"] for _, r in chosen),
                np.asarray([classes.index(r["label"]) for _, r in chosen], dtype=np.int64),
                classes,
                tuple(r["patient"] for _, r in chosen) if "patient" in rows[0][1] else None,
            )
    return Layout(root, classes, splits)


def _read(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of every data row, values stripped, `split` filled in."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [c.strip() for c in reader.fieldnames or []]
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise PneumoError(f"--labels {path}: no column {missing[0]!r} (columns: file, label[, patient, split])")
            reader.fieldnames = header
            rows = [
                (reader.line_num, {k: (row[k] or "").strip() for k in header if k in COLUMNS + OPTIONAL})
                for row in reader
            ]
    except OSError as exc:
        raise PneumoError(f"--labels {path}: cannot read it ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise PneumoError(f"--labels {path}: not a readable UTF-8 CSV ({exc})") from None
    if not rows:
        raise PneumoError(f"--labels {path}: no rows")
    for line, row in rows:
        empty = [c for c in COLUMNS + OPTIONAL if c in row and not row[c] and c != "split"]
        if empty:
            raise PneumoError(f"--labels {path} line {line}: empty {empty[0]!r}")
        row["split"] = row.get("split") or "train"
        if row["split"] not in SPLITS:
            raise PneumoError(f"--labels {path} line {line}: split {row['split']!r} is not one of {list(SPLITS)}")
    return rows


def _checked_file(root: Path, csv_path: Path, line: int, value: str) -> str:
    """`value` as a normalised path relative to `root`, if it stays inside it and is an image file."""
    rel = PurePosixPath(value.replace("\\", "/"))
    where = f"--labels {csv_path} line {line}: {value}"
    if rel.is_absolute() or ".." in rel.parts:
        raise PneumoError(f"{where} is not a path inside --data-dir {root}; give it relative to the data root")
    full = root / rel
    if not full.resolve().is_relative_to(root.resolve()):
        raise PneumoError(f"{where} leads outside --data-dir {root} (a link); give files inside the data root")
    if not full.is_file():
        raise PneumoError(f"{where} does not exist under --data-dir {root}")
    if rel.suffix.lower() not in IMAGE_SUFFIXES:
        raise PneumoError(f"{where} is not an image file (expected {'/'.join(sorted(IMAGE_SUFFIXES))})")
    return rel.as_posix()


def scan_labels_split(root: str | Path, labels_csv: str | Path, split: str, classes: tuple[str, ...]) -> Layout:
    """The rows of `split` in a labels CSV (evaluate.py on a run trained with --labels); its
    classes must be the run's."""
    layout = scan_labels(root, labels_csv)
    if split not in layout.splits:
        raise PneumoError(f"--split {split}: --labels {labels_csv} has no rows of split {split!r}")
    if layout.classes != tuple(classes):
        raise PneumoError(f"--labels {labels_csv}: classes {layout.classes}, but the run's are {tuple(classes)}")
    return Layout(layout.root, layout.classes, {split: layout.splits[split]})


def scan_data(root: str | Path, labels_csv: str | Path | None = None) -> Layout:
    """The data set at `root`: from its class folders, or from `labels_csv` when given."""
    return scan_labels(root, labels_csv) if labels_csv else scan(root)


def labelled_patients(config: Mapping[str, Any]) -> dict[str, str] | None:
    """file -> patient of a run trained with --labels, from its recorded data dir and CSV (None:
    a run on class folders, or a CSV without a patient column)."""
    if not config.get("labels"):
        return None
    return scan_labels(config["data_dir"], config["labels"]).patient_of()
