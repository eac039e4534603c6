"""The folder layout: classes from folders, the cross-validation pool, evaluation splits."""

from __future__ import annotations

import pytest
from PIL import Image

from pneumo.data.dataset import scan
from pneumo.utils.errors import PneumoError


def _make(root, layout: dict[str, dict[str, int]]) -> None:
    for split, classes in layout.items():
        for name, n in classes.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("L", (20, 20), i).save(root / split / name / f"img{i}.jpeg")


def test_canonical_layout_gives_classes_pool_and_eval_splits(tmp_path):
    _make(
        tmp_path,
        {
            "train": {"NORMAL": 3, "PNEUMONIA": 5},
            "val": {"NORMAL": 1, "PNEUMONIA": 1},
            "test": {"NORMAL": 2, "PNEUMONIA": 2},
        },
    )
    layout = scan(tmp_path)
    assert layout.classes == ("NORMAL", "PNEUMONIA") and layout.positive_index == 1
    assert len(layout.pool(keep_val_apart=False)) == 10
    assert layout.eval_splits(keep_val_apart=False) == ["test"]
    assert len(layout.pool(keep_val_apart=True)) == 8
    assert layout.eval_splits(keep_val_apart=True) == ["val", "test"]


def test_any_two_class_tree_works_and_the_second_class_is_positive(tmp_path):
    _make(tmp_path, {"train": {"benign": 3, "malignant": 3}})
    layout = scan(tmp_path)
    assert layout.classes == ("benign", "malignant") and layout.positive_index == 1
    assert layout.eval_splits(False) == []


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(PneumoError, match="does not exist"):
        scan(tmp_path / "nope")


def test_single_class_is_refused(tmp_path):
    _make(tmp_path, {"train": {"NORMAL": 3}})
    with pytest.raises(PneumoError, match="exactly two class folders"):
        scan(tmp_path)
