"""Stratified, patient-grouped cross-validation folds that keep duplicate images together."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePosixPath

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from pneumo.utils.errors import PneumoError

# Kermany file names carry the patient: person123_bacteria_456 (and person447_virus_921_1),
# IM-0115-0001, NORMAL2-IM-0123-0001, and a patient's further views IM-0429-0001-0002 /
# NORMAL2-IM-1345-0001-0002. The patient is the number after IM- (within its series).
_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_"),
    re.compile(r"^((?:NORMAL2-)?IM-\d+)(?:-\d+)+$"),
)


def patient_key(rel_path: str, class_name: str) -> str:
    """The patient a file belongs to: its class plus the file-name prefix naming the patient.

    A name that matches no known pattern is its own patient.
    """
    stem = PurePosixPath(rel_path).stem
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(stem)
        if match:
            return f"{class_name}/{match.group(1)}"
    return f"{class_name}/{stem}"


def group_ids(keys: Sequence[str], sha1: Sequence[str]) -> np.ndarray:
    """Integer group per sample: samples sharing a key, or byte-identical content, share a group."""
    parent = list(range(len(keys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for kind, values in (("key", keys), ("sha", sha1)):
        for i, value in enumerate(values):
            j = first.setdefault(f"{kind}:{value}", i)
            parent[find(i)] = find(j)
    roots = [find(i) for i in range(len(keys))]
    return np.unique(roots, return_inverse=True)[1]


def make_folds(
    files: Sequence[str],
    labels: np.ndarray,
    classes: Sequence[str],
    sha1: Sequence[str],
    *,
    n_folds: int,
    seed: int,
    by_patient: bool = True,
    patients: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Assign each sample a fold in [0, n_folds): stratified by label, grouped, deterministic.

    Groups are patients (`patients`, else from the file names; single files when `by_patient`
    is False); byte-identical files always share a group. Returns (fold per sample, group per
    sample).
    """
    if not by_patient:
        keys = list(files)
    elif patients is not None:
        keys = list(patients)
    else:
        keys = [patient_key(f, classes[y]) for f, y in zip(files, labels)]
    groups = group_ids(keys, sha1)
    unit = "patients" if by_patient else "distinct images"
    for c, name in enumerate(classes):
        n_groups = len(np.unique(groups[labels == c]))
        if n_groups < n_folds:
            raise PneumoError(
                f"--folds {n_folds} is more than the {n_groups} {unit} of class {name}; lower --folds or add data"
            )
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold_of = np.full(len(files), -1, dtype=np.int64)
    for k, (_, val_idx) in enumerate(splitter.split(np.zeros(len(files)), labels, groups)):
        fold_of[val_idx] = k
    for k in range(n_folds):
        present = set(labels[fold_of == k].tolist())
        if len(present) < len(classes):
            raise PneumoError(f"fold {k} got no validation images of some class: too few {unit} for --folds {n_folds}")
    return fold_of, groups


def folds_record(
    files: Sequence[str], fold_of: np.ndarray, groups: np.ndarray, labels: np.ndarray, classes: Sequence[str], **meta
) -> dict:
    """The auditable folds.json content: file -> fold and group, per-fold image and group counts.

    `val_counts[k][c]` is the number of images of class c in fold k, `val_groups[k][c]` the
    number of groups (patients, unless grouping is off) they belong to.
    """
    n_folds = int(fold_of.max()) + 1 if len(fold_of) else 0
    counts = [np.bincount(labels[fold_of == k], minlength=len(classes)).tolist() for k in range(n_folds)]
    group_counts = [
        [len(np.unique(groups[(fold_of == k) & (labels == c)])) for c in range(len(classes))] for k in range(n_folds)
    ]
    return {
        **meta,
        "n_folds": n_folds,
        "classes": list(classes),
        "val_counts": counts,
        "val_groups": group_counts,
        "files": {f: int(k) for f, k in zip(files, fold_of)},
        "groups": {f: int(g) for f, g in zip(files, groups)},
    }
