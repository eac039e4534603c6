"""The folder layout: `ROOT/{train,val,test}/{CLASS_A,CLASS_B}/*.{jpeg,jpg,png}`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pneumo.data import dicom
from pneumo.data.folds import patient_key
from pneumo.utils.errors import PneumoError

IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png"}) | dicom.SUFFIXES
SUFFIX_TEXT = "/".join(sorted(IMAGE_SUFFIXES))
SPLITS = ("train", "val", "test")
POSITIVE_CLASS = "PNEUMONIA"


@dataclass(frozen=True)
class ImageSet:
    """Image files (relative to the data root) with integer labels indexing `classes`, and each
    file's patient where a labels CSV gives them (else None: patients come from file names)."""

    files: tuple[str, ...]
    labels: np.ndarray
    classes: tuple[str, ...]
    patients: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def class_counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=len(self.classes)).tolist()

    def subset(self, indices: np.ndarray) -> ImageSet:
        patients = None if self.patients is None else tuple(self.patients[i] for i in indices)
        return ImageSet(tuple(self.files[i] for i in indices), self.labels[indices], self.classes, patients)

    def patient_keys(self) -> list[str]:
        """Each file's patient: the labels CSV's patient column, else its file-name key (folds.patient_key)."""
        if self.patients is not None:
            return list(self.patients)
        return [patient_key(f, self.classes[y]) for f, y in zip(self.files, self.labels)]

    @staticmethod
    def concat(sets: list[ImageSet]) -> ImageSet:
        classes = sets[0].classes
        files = tuple(f for s in sets for f in s.files)
        labels = np.concatenate([s.labels for s in sets]) if sets else np.zeros(0, np.int64)
        patients = None
        if sets and all(s.patients is not None for s in sets):
            patients = tuple(p for s in sets for p in s.patients)  # type: ignore[union-attr]
        return ImageSet(files, labels.astype(np.int64), classes, patients)


@dataclass(frozen=True)
class Layout:
    """A scanned data directory: its classes and splits, files that should be images but are
    not (`not_images`, unusable), and files that are not data by convention (`ignored`)."""

    root: Path
    classes: tuple[str, ...]
    splits: dict[str, ImageSet]
    not_images: dict[str, str] = field(default_factory=dict)
    ignored: dict[str, str] = field(default_factory=dict)

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

    def patient_of(self) -> dict[str, str] | None:
        """file -> patient where a labels CSV names them (None: patients come from file names)."""
        every = self.all_files()
        return None if every.patients is None else dict(zip(every.files, every.patients))

    def ignored_note(self, show: int = 3) -> str | None:
        """One line naming the ignored files (the first `show` of them), or None if there are none."""
        if not self.ignored:
            return None
        names = sorted(self.ignored)
        more = f" and {len(names) - show} more" if len(names) > show else ""
        return (
            f"ignored {len(names)} file(s) that are not data by the layout (hidden, system, or beside "
            f"the class folders): {', '.join(names[:show])}{more}"
        )


# Not data by convention: dot-files and dot-folders (.DS_Store, macOS `._x.jpeg` resource
# forks, .ipynb_checkpoints) and what Windows and macOS zip tools leave behind.
_JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini", "__macosx"})


def _is_junk(name: str) -> bool:
    return name.startswith(".") or name.lower() in _JUNK_NAMES


def _list_dir(path: Path) -> list[os.DirEntry]:
    """The entries of a folder; a folder that cannot be listed is a PneumoError, not a silent gap."""
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError as exc:
        hint = "; fix its permissions" if isinstance(exc, PermissionError) else ""
        raise PneumoError(f"{path}: cannot list this folder ({exc.strerror}){hint}") from exc


def _class_dirs(split_dir: Path, ignored: dict[str, str], root: Path) -> list[str]:
    """Sorted class folder names of a split; stray files beside them are recorded in `ignored`."""
    names = []
    for entry in _list_dir(split_dir):
        if _is_junk(entry.name):
            ignored[(split_dir / entry.name).relative_to(root).as_posix()] = "hidden or system file"
        elif entry.is_dir():
            names.append(entry.name)
        else:
            ignored[(split_dir / entry.name).relative_to(root).as_posix()] = "not inside a class folder"
    return sorted(names)


def _files_under(folder: Path, seen: frozenset[tuple[int, int]] = frozenset()) -> list[Path]:
    """Every file below `folder`, sorted as `sorted(folder.rglob("*"))` sorts them.

    Symlinked folders are followed, except into a folder that contains the link (a loop).
    """
    st = folder.stat()
    seen = seen | {(st.st_dev, st.st_ino)}
    out = []
    for entry in _list_dir(folder):
        path = folder / entry.name
        if not entry.is_dir():
            out.append(path)
        elif (entry.stat().st_dev, entry.stat().st_ino) not in seen:
            out.extend(_files_under(path, seen))
    return sorted(out)


def _scan_split(
    root: Path,
    split: str,
    classes: tuple[str, ...],
    not_images: dict[str, str],
    ignored: dict[str, str],
    classes_from: str = "as in train/",
) -> ImageSet:
    split_dir = root / split
    found = set(_class_dirs(split_dir, ignored, root))
    missing = [c for c in classes if c not in found]
    extra = sorted(found - set(classes))
    if missing or extra:
        raise PneumoError(
            f"{split_dir}: expected class folders {list(classes)} ({classes_from}), "
            f"missing {missing or 'none'}, unexpected {extra or 'none'}"
        )
    files: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        for path in _files_under(split_dir / name):
            rel = path.relative_to(root).as_posix()
            if any(_is_junk(part) for part in path.relative_to(split_dir).parts):
                ignored[rel] = "hidden or system file"
            elif path.suffix.lower() not in IMAGE_SUFFIXES:
                not_images[rel] = f"not an image file (suffix {path.suffix or 'none'!r}; expected {SUFFIX_TEXT})"
            else:
                files.append(rel)
                labels.append(label)
    return ImageSet(tuple(files), np.asarray(labels, dtype=np.int64), classes)


def _no_train_hint(root: Path) -> str:
    """Point at a nested dataset folder (a Kaggle download unpacks to chest_xray/chest_xray/)."""
    nested = sorted(p.parent for p in root.glob("*/train") if p.is_dir() and not _is_junk(p.parent.name))
    return f"; did you mean --data-dir {nested[0]}?" if nested else ""


def scan(root: str | Path) -> Layout:
    """Scan a data directory; raise PneumoError naming the problem if it is not usable.

    Class names come from the folders of `train/` (exactly two), and every other split must
    have the same folders. Non-image files in class folders are reported in
    `Layout.not_images` (unusable files); hidden and system files, and files beside the class
    folders, in `Layout.ignored`. Nothing is dropped silently.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise PneumoError(f"--data-dir {root} does not exist (expected ROOT/train/CLASS/*.jpeg)")
    if not root.is_dir():
        raise PneumoError(f"--data-dir {root} is not a directory")
    if not (root / "train").is_dir():
        raise PneumoError(
            f"--data-dir {root} has no train/ folder; expected ROOT/{{train,val,test}}/{{NORMAL,PNEUMONIA}}/"
            + _no_train_hint(root)
        )
    not_images: dict[str, str] = {}
    ignored: dict[str, str] = {}
    classes = tuple(_class_dirs(root / "train", {}, root))
    if len(classes) != 2:
        raise PneumoError(
            f"{root / 'train'} must hold exactly two class folders (e.g. NORMAL, PNEUMONIA); found {list(classes)}"
        )
    splits = {s: _scan_split(root, s, classes, not_images, ignored) for s in SPLITS if (root / s).is_dir()}
    empty = [c for c, n in zip(classes, splits["train"].class_counts()) if n == 0]
    if empty:
        raise PneumoError(f"{root / 'train'}: class folder(s) {empty} hold no {SUFFIX_TEXT} images")
    return Layout(root, classes, splits, not_images, ignored)


def scan_split(root: str | Path, split: str, classes: tuple[str, ...]) -> Layout:
    """Scan `ROOT/split` alone, whose class folders must be `classes` (a trained run's).

    Nothing else under ROOT is read: an external set may hold only this split, and problems
    in other splits do not concern it.
    """
    root = Path(root).expanduser()
    if not (root / split).is_dir():
        has = sorted(p.name for p in root.iterdir() if p.is_dir() and not _is_junk(p.name)) if root.is_dir() else []
        where = f"has {has}" if root.is_dir() else "does not exist"
        raise PneumoError(f"--split {split}: no folder {root / split} ({root} {where}); expected ROOT/{split}/CLASS/")
    not_images: dict[str, str] = {}
    ignored: dict[str, str] = {}
    images = _scan_split(root, split, classes, not_images, ignored, "the run's classes")
    return Layout(root, classes, {split: images}, not_images, ignored)


def check_folds(layout: Layout, n_folds: int, *, keep_val_apart: bool, by_patient: bool) -> None:
    """Refuse `n_folds` larger than a class's patients (or files) in the pool, before any decoding.

    File names alone give an upper bound on the groups `make_folds` will see (unreadable files
    and byte-identical copies only lower it), so a run that passes may still be refused there.
    """
    pool = layout.pool(keep_val_apart)
    unit = "patients" if by_patient else "images"
    keys = pool.patient_keys() if by_patient else list(pool.files)
    for c, name in enumerate(layout.classes):
        n = len({k for k, y in zip(keys, pool.labels) if y == c})
        if n < n_folds:
            raise PneumoError(
                f"--folds {n_folds} is more than the {n} {unit} of class {name}; lower --folds or add data"
            )


def label_conflicts(layout: Layout, sha1_of: Mapping[str, str]) -> dict[str, str]:
    """Files whose exact bytes also appear under another class: their label is ambiguous.

    `sha1_of` maps the layout's readable files to the SHA-1 of their bytes. Every copy is
    returned with the files it conflicts with.
    """
    by_sha: dict[str, list[tuple[str, str]]] = {}
    for split in layout.splits.values():
        for f, y in zip(split.files, split.labels):
            if f in sha1_of:
                by_sha.setdefault(sha1_of[f], []).append((f, layout.classes[y]))
    out = {}
    for copies in by_sha.values():
        if len({c for _, c in copies}) > 1:
            for f, c in copies:
                others = ", ".join(g for g, d in copies if d != c)
                out[f] = f"label conflict: byte-identical to {others} of another class; keep one, in the right class"
    return out


def expand_image_paths(paths: list[str]) -> tuple[list[Path], list[Path]]:
    """Expand files and folders (recursively) into sorted image files, and the files skipped.

    A file named explicitly is always kept (decoding says whether it is an image); in folders,
    non-image, hidden and system files are skipped and returned second, for the caller to report.
    """
    out: list[Path] = []
    skipped: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            for f in _files_under(path):
                junk = any(_is_junk(part) for part in f.relative_to(path).parts)
                (out if f.suffix.lower() in IMAGE_SUFFIXES and not junk else skipped).append(f)
        elif path.exists():
            out.append(path)
        else:
            raise PneumoError(f"--images: {path} does not exist")
    if not out:
        raise PneumoError(f"--images: no {SUFFIX_TEXT} files found in {paths}")
    return out, skipped
