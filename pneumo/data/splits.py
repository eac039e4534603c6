"""Which decoded images form the cross-validation pool, their folds, and the evaluation splits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from pneumo.data.cache import DecodedImages
from pneumo.data.dataset import Layout
from pneumo.data.folds import folds_record, make_folds, patient_key


@dataclass(frozen=True)
class SplitSpec:
    """How the pool is split into folds: `folds` of them, from `seed`, val/ in the pool unless
    `keep_val_apart`, grouped by patient unless `no_group`."""

    folds: int
    seed: int
    keep_val_apart: bool = False
    no_group: bool = False

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> SplitSpec:
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


@dataclass
class Splits:
    """Indices into the decoded image list: the pool with a fold each, and evaluation splits."""

    classes: tuple[str, ...]
    positive: int
    files: list[str]
    labels: np.ndarray
    pool: np.ndarray
    fold_of: np.ndarray
    groups: np.ndarray
    evals: dict[str, np.ndarray]
    patients: dict[str, str] | None = None  # file -> patient from a labels CSV

    def patient(self, i: int) -> str:
        """The patient of decoded image `i`: the labels CSV's, else its file-name key."""
        if self.patients is not None:
            return self.patients[self.files[i]]
        return patient_key(self.files[i], self.classes[self.labels[i]])

    def fold_indices(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        """(training, validation) decoded indices of `fold`."""
        return self.pool[self.fold_of != fold], self.pool[self.fold_of == fold]

    def folds_json(self, **meta) -> dict:
        files = [self.files[i] for i in self.pool]
        return folds_record(files, self.fold_of, self.groups, self.labels[self.pool], self.classes, **meta)


def build_splits(layout: Layout, decoded: DecodedImages, cfg: SplitSpec) -> Splits:
    """Pool and folds from the usable images (unreadable ones already reported by the caller)."""
    index = decoded.index_of()
    labels = np.zeros(len(decoded.files), dtype=np.int64)
    for split in layout.splits.values():
        for f, y in zip(split.files, split.labels):
            labels[index[f]] = y

    def usable(files: tuple[str, ...]) -> np.ndarray:
        return np.asarray([index[f] for f in files if index[f] not in decoded.errors], dtype=np.int64)

    pool = usable(layout.pool(cfg.keep_val_apart).files)
    files = [decoded.files[i] for i in pool]
    patient_of = layout.patient_of()
    fold_of, groups = make_folds(
        files,
        labels[pool],
        layout.classes,
        [decoded.sha1[i] for i in pool],
        n_folds=cfg.folds,
        seed=cfg.seed,
        by_patient=not cfg.no_group,
        patients=None if patient_of is None else [patient_of[f] for f in files],
    )
    evals = {s: usable(layout.splits[s].files) for s in layout.eval_splits(cfg.keep_val_apart)}
    return Splits(
        layout.classes, layout.positive_index, decoded.files, labels, pool, fold_of, groups, evals, patient_of
    )
