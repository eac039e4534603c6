"""Cross-validation folds: stratified, grouped by patient, deterministic, duplicates together."""

from __future__ import annotations

import numpy as np
import pytest

from pneumo.errors import PneumoError
from pneumo.folds import group_ids, make_folds, patient_key

CLASSES = ("NORMAL", "PNEUMONIA")


def _pool(n_normal_patients: int = 30, n_pneumonia_patients: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    files, labels = [], []
    for p in range(n_normal_patients):
        for i in range(rng.integers(1, 4)):
            files.append(f"train/NORMAL/IM-{p:04d}-{i + 1:04d}.jpeg")
            labels.append(0)
    for p in range(n_pneumonia_patients):
        for _ in range(rng.integers(1, 4)):
            files.append(f"train/PNEUMONIA/person{p}_bacteria_{len(files)}.jpeg")
            labels.append(1)
    sha1 = [f"hash-{i}" for i in range(len(files))]
    return files, np.asarray(labels), sha1


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("train/PNEUMONIA/person1481_bacteria_3866.jpeg", "PNEUMONIA/person1481"),
        ("train/PNEUMONIA/person12_virus_44.jpeg", "PNEUMONIA/person12"),
        ("train/NORMAL/IM-0115-0001.jpeg", "NORMAL/IM-0115"),
        ("val/NORMAL/NORMAL2-IM-0123-0002.jpeg", "NORMAL/NORMAL2-IM-0123"),
        ("train/NORMAL/scan_7.png", "NORMAL/scan_7"),
    ],
)
def test_patient_key_is_the_file_name_prefix_within_its_class(path, key):
    assert patient_key(path, path.split("/")[1]) == key


def test_folds_are_stratified():
    files, labels, sha1 = _pool()
    folds, _ = make_folds(files, labels, CLASSES, sha1, n_folds=5, seed=1)
    overall = labels.mean()
    for k in range(5):
        assert abs(labels[folds == k].mean() - overall) < 0.08
    assert sorted(np.unique(folds)) == list(range(5))


def test_no_patient_sits_on_both_sides_of_a_fold():
    files, labels, sha1 = _pool()
    folds, _ = make_folds(files, labels, CLASSES, sha1, n_folds=5, seed=1)
    by_patient: dict[str, set[int]] = {}
    for f, y, k in zip(files, labels, folds):
        by_patient.setdefault(patient_key(f, CLASSES[y]), set()).add(int(k))
    assert all(len(ks) == 1 for ks in by_patient.values())
    assert len(by_patient) < len(files)  # some patients do have several images


def test_folds_are_deterministic_in_the_seed():
    files, labels, sha1 = _pool()
    a, _ = make_folds(files, labels, CLASSES, sha1, n_folds=5, seed=7)
    b, _ = make_folds(files, labels, CLASSES, sha1, n_folds=5, seed=7)
    c, _ = make_folds(files, labels, CLASSES, sha1, n_folds=5, seed=8)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


@pytest.mark.parametrize("by_patient", [True, False])
def test_byte_identical_images_land_in_the_same_fold(by_patient):
    files, labels, sha1 = _pool()
    normal = [i for i, y in enumerate(labels) if y == 0]
    pairs = [(normal[0], normal[-1]), (normal[3], normal[-5])]  # different patients, same bytes
    for a, b in pairs:
        sha1[b] = sha1[a]
    for seed in range(5):
        folds, _ = make_folds(files, labels, CLASSES, sha1, n_folds=5, seed=seed, by_patient=by_patient)
        assert all(folds[a] == folds[b] for a, b in pairs)


def test_no_group_splits_patients_across_folds():
    files, labels, sha1 = _pool()
    folds, groups = make_folds(files, labels, CLASSES, sha1, n_folds=5, seed=1, by_patient=False)
    assert len(np.unique(groups)) == len(files)
    by_patient: dict[str, set[int]] = {}
    for f, y, k in zip(files, labels, folds):
        by_patient.setdefault(patient_key(f, CLASSES[y]), set()).add(int(k))
    assert any(len(ks) > 1 for ks in by_patient.values())


def test_group_ids_join_shared_keys_and_shared_content():
    groups = group_ids(["a", "a", "b", "c", "d"], ["1", "2", "3", "3", "4"])
    assert groups[0] == groups[1] and groups[2] == groups[3]
    assert len(set(groups.tolist())) == 3


def test_more_folds_than_patients_of_a_class_is_refused():
    files, labels, sha1 = _pool(n_normal_patients=3)
    with pytest.raises(PneumoError, match="--folds 5 is more than the 3 patients of class NORMAL"):
        make_folds(files, labels, CLASSES, sha1, n_folds=5, seed=0)
