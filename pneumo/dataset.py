"""The folder layout: `ROOT/{train,val,test}/{CLASS_A,CLASS_B}/*.{jpeg,jpg,png}`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pneumo.errors import PneumoError

IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png"})
SPLITS = ("train", "val", "test")
POSITIVE_CLASS = "PNEUMONIA"


@dataclass(frozen=True)
class ImageSet:
    """Image files (relative to the data root) with integer labels indexing `classes`."""

    files: tuple[str, ...]
    labels: np.ndarray
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.files)

    def class_counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=len(self.classes)).tolist()

    def subset(self, indices: np.ndarray) -> ImageSet:
        return ImageSet(tuple(self.files[i] for i in indices), self.labels[indices], self.classes)

    @staticmethod
    def concat(sets: list[ImageSet]) -> ImageSet:
        classes = sets[0].classes
        files = tuple(f for s in sets for f in s.files)
        labels = np.concatenate([s.labels for s in sets]) if sets else np.zeros(0, np.int64)
        return ImageSet(files, labels.astype(np.int64), classes)


@dataclass(frozen=True)
class Layout:
    """A scanned data directory: its classes, its splits, and files that are not images."""

    root: Path
    classes: tuple[str, ...]
    splits: dict[str, ImageSet]
    not_images: dict[str, str] = field(default_factory=dict)

    @property
    def positive_index(self) -> int:
        """Index of the positive (disease) class: PNEUMONIA if present, else the second class."""
        return self.classes.index(POSITIVE_CLASS) if POSITIVE_CLASS in self.classes else 1

    def pool(self, keep_val_apart: bool) -> ImageSet:
        """The cross-validation pool: train, plus val unless it is kept apart."""
        names = ["train"] + ([] if keep_val_apart or "val" not in self.splits else ["val"])
        return ImageSet.concat([self.splits[n] for n in names])

    def eval_splits(self, keep_val_apart: bool) -> list[str]:
        """Splits evaluated by the fold models and the ensemble after training."""
        names = (["val"] if keep_val_apart else []) + ["test"]
        return [n for n in names if n in self.splits and len(self.splits[n])]

    def all_files(self) -> ImageSet:
        return ImageSet.concat(list(self.splits.values()))


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not _is_hidden(p))


def _scan_split(root: Path, split: str, classes: tuple[str, ...], not_images: dict[str, str]) -> ImageSet:
    split_dir = root / split
    found = {p.name for p in _class_dirs(split_dir)}
    missing = [c for c in classes if c not in found]
    extra = sorted(found - set(classes))
    if missing or extra:
        raise PneumoError(
            f"{split_dir}: expected class folders {list(classes)} (as in train/), "
            f"missing {missing or 'none'}, unexpected {extra or 'none'}"
        )
    files: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        for path in sorted((split_dir / name).rglob("*")):
            if path.is_dir() or any(part.startswith(".") for part in path.relative_to(split_dir).parts):
                continue
            rel = path.relative_to(root).as_posix()
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                not_images[rel] = f"not an image file (suffix {path.suffix or 'none'!r}; expected .jpeg/.jpg/.png)"
                continue
            files.append(rel)
            labels.append(label)
    return ImageSet(tuple(files), np.asarray(labels, dtype=np.int64), classes)


def scan(root: str | Path) -> Layout:
    """Scan a data directory; raise PneumoError naming the problem if it is not usable.

    Class names come from the folders of `train/` (exactly two). Hidden files are ignored;
    other non-image files are reported in `Layout.not_images`, never dropped silently.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise PneumoError(f"--data-dir {root} does not exist (expected ROOT/train/CLASS/*.jpeg)")
    if not root.is_dir():
        raise PneumoError(f"--data-dir {root} is not a directory")
    if not (root / "train").is_dir():
        raise PneumoError(
            f"--data-dir {root} has no train/ folder; expected ROOT/{{train,val,test}}/{{NORMAL,PNEUMONIA}}/"
        )
    classes = tuple(p.name for p in _class_dirs(root / "train"))
    if len(classes) != 2:
        raise PneumoError(
            f"{root / 'train'} must hold exactly two class folders (e.g. NORMAL, PNEUMONIA); found {list(classes)}"
        )
    not_images: dict[str, str] = {}
    splits = {s: _scan_split(root, s, classes, not_images) for s in SPLITS if (root / s).is_dir()}
    empty = [c for c, n in zip(classes, splits["train"].class_counts()) if n == 0]
    if empty:
        raise PneumoError(f"{root / 'train'}: class folder(s) {empty} hold no .jpeg/.jpg/.png images")
    return Layout(root, classes, splits, not_images)


def expand_image_paths(paths: list[str]) -> list[Path]:
    """Expand files and directories (recursively) into a sorted list of image files."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.exists():
            out.append(path)
        else:
            raise PneumoError(f"--images: {path} does not exist")
    if not out:
        raise PneumoError(f"--images: no .jpeg/.jpg/.png files found in {paths}")
    return out
