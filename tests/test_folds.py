"""Cross-validation folds: stratified, grouped by patient, deterministic, duplicates together."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from pneumo.data.folds import folds_record, group_ids, make_folds, patient_key
from pneumo.utils.errors import PneumoError

CLASSES = ("NORMAL", "PNEUMONIA")


SHARED_DATA = Path(os.environ.get("PNEUMO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _pool(n_normal_patients: int = 30, n_pneumonia_patients: int = 60, seed: int = 0):
    """Files in every Kermany name form, with the patient each was generated for (the oracle)."""
    rng = np.random.default_rng(seed)
    files, labels, patients = [], [], []
    for p in range(n_normal_patients):
        series = "NORMAL2-" if p % 2 else ""
        names = [f"{series}IM-{p:04d}-0001", f"{series}IM-{p:04d}-0001-0001", f"{series}IM-{p:04d}-0001-0002"]
        for name in names[: rng.integers(1, 4)]:
            files.append(f"train/NORMAL/{name}.jpeg")
            labels.append(0)
            patients.append(f"normal-{p}")
    for p in range(n_pneumonia_patients):
        for _ in range(rng.integers(1, 4)):
            files.append(f"train/PNEUMONIA/person{p}_{'virus' if p % 3 else 'bacteria'}_{len(files)}.jpeg")
            labels.append(1)
            patients.append(f"pneumonia-{p}")
    sha1 = [f"hash-{i}" for i in range(len(files))]
    return files, np.asarray(labels), sha1, patients


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("train/PNEUMONIA/person1481_bacteria_3866.jpeg", "PNEUMONIA/person1481"),
        ("train/PNEUMONIA/person12_virus_44.jpeg", "PNEUMONIA/person12"),
        ("train/PNEUMONIA/person447_virus_921_1.jpeg", "PNEUMONIA/person447"),
        ("train/NORMAL/IM-0115-0001.jpeg", "NORMAL/IM-0115"),
        ("train/NORMAL/IM-0429-0001-0001.jpeg", "NORMAL/IM-0429"),
        ("train/NORMAL/IM-0429-0001-0002.jpeg", "NORMAL/IM-0429"),
        ("val/NORMAL/NORMAL2-IM-0123-0002.jpeg", "NORMAL/NORMAL2-IM-0123"),
        ("train/NORMAL/NORMAL2-IM-1345-0001-0002.jpeg", "NORMAL/NORMAL2-IM-1345"),
        ("train/NORMAL/NORMAL2-IM-0651-0004.jpeg", "NORMAL/NORMAL2-IM-0651"),
        ("train/NORMAL/scan_7.png", "NORMAL/scan_7"),
        ("train/NORMAL/IM-0115.jpeg", "NORMAL/IM-0115"),
    ],
)
def test_patient_key_is_the_file_name_prefix_within_its_class(path, key):
    assert patient_key(path, path.split("/")[1]) == key


def test_folds_are_stratified():
    files, labels, sha1, _patients = _pool()
    folds, _ = make_folds(files, labels, CLASSES, sha1, n_folds=5, seed=1)
    overall = labels.mean()
    for k in range(5):
        assert abs(labels[folds == k].mean() - overall) < 0.08
    assert sorted(np.unique(folds)) == list(range(5))


def test_no_patient_sits_on_both_sides_of_a_fold():
    files, labels, sha1, patients = _pool()
    folds, _ = make_folds(files, labels, CLASSES, sha1, n_folds=5, seed=1)
    by_patient: dict[str, set[int]] = {}
    for p, k in zip(patients, folds):
        by_patient.setdefault(p, set()).add(int(k))
    assert all(len(ks) == 1 for ks in by_patient.values())
    assert len(by_patient) < len(files)  # some patients do have several images


def test_folds_are_deterministic_in_the_seed():
    files, labels, sha1, _patients = _pool()
    a, _ = make_folds(files, labels, CLASSES, sha1, n_folds=5, seed=7)
    b, _ = make_folds(files, labels, CLASSES, sha1, n_folds=5, seed=7)
    c, _ = make_folds(files, labels, CLASSES, sha1, n_folds=5, seed=8)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


@pytest.mark.parametrize("by_patient", [True, False])
def test_byte_identical_images_land_in_the_same_fold(by_patient):
    files, labels, sha1, _patients = _pool()
    normal = [i for i, y in enumerate(labels) if y == 0]
    pairs = [(normal[0], normal[-1]), (normal[3], normal[-5])]  # different patients, same bytes
    for a, b in pairs:
        sha1[b] = sha1[a]
    for seed in range(5):
        folds, _ = make_folds(files, labels, CLASSES, sha1, n_folds=5, seed=seed, by_patient=by_patient)
        assert all(folds[a] == folds[b] for a, b in pairs)


def test_no_group_splits_patients_across_folds():
    files, labels, sha1, patients = _pool()
    folds, groups = make_folds(files, labels, CLASSES, sha1, n_folds=5, seed=1, by_patient=False)
    assert len(np.unique(groups)) == len(files)
    by_patient: dict[str, set[int]] = {}
    for p, k in zip(patients, folds):
        by_patient.setdefault(p, set()).add(int(k))
    assert any(len(ks) > 1 for ks in by_patient.values())


def test_group_ids_join_shared_keys_and_shared_content():
    groups = group_ids(["a", "a", "b", "c", "d"], ["1", "2", "3", "3", "4"])
    assert groups[0] == groups[1] and groups[2] == groups[3]
    assert len(set(groups.tolist())) == 3


def test_more_folds_than_patients_of_a_class_is_refused():
    files, labels, sha1, _patients = _pool(n_normal_patients=3)
    with pytest.raises(PneumoError, match="--folds 5 is more than the 3 patients of class NORMAL"):
        make_folds(files, labels, CLASSES, sha1, n_folds=5, seed=0)


def test_folds_record_counts_images_and_patients_per_class_and_fold():
    files, labels, sha1, patients = _pool()
    folds, groups = make_folds(files, labels, CLASSES, sha1, n_folds=5, seed=1)
    record = folds_record(files, folds, groups, labels, CLASSES)
    for k in range(5):
        for c in range(2):
            in_fold = [p for p, y, f in zip(patients, labels, folds) if f == k and y == c]
            assert record["val_counts"][k][c] == len(in_fold)
            assert record["val_groups"][k][c] == len(set(in_fold))


def _first_view_patient(name: str) -> str:
    """The patient of a real Kermany file name, read independently of `patient_key`.

    A patient's further views add fields to the first view's name (IM-0429-0001 ->
    IM-0429-0001-0002) and PNEUMONIA names start personN_; the patient is what the first
    view's name has before its last field.
    """
    stem = name.rsplit(".", 1)[0]
    if stem.startswith("person"):
        return stem.split("_")[0]
    fields = stem.split("-")
    first_view = fields[: fields.index("IM") + 3]  # [NORMAL2-]IM-<patient>-<image>
    return "-".join(first_view[:-1])


@pytest.mark.skipif(not (SHARED_DATA / "MANIFEST.tsv").exists(), reason="needs ../shared/data (real file list)")
def test_every_real_file_shares_the_key_of_its_patients_first_view():
    rows = [line.split("\t") for line in (SHARED_DATA / "MANIFEST.tsv").read_text().splitlines()[1:]]
    names = {(label, name) for _, label, name, *_ in rows}
    assert len(names) == 5216
    further = [(c, n) for c, n in names if re.fullmatch(r"(NORMAL2-)?IM-\d+-\d+-\d+\.jpeg", n)]
    assert len(further) == 133  # the second and third views the issue counted
    for label, name in names:
        assert patient_key(f"train/{label}/{name}", label) == f"{label}/{_first_view_patient(name)}", name
    with_first_view = [(c, n) for c, n in further if (c, n.rsplit("-", 1)[0] + ".jpeg") in names]
    assert len(with_first_view) >= 120
    for label, name in with_first_view:
        first = name.rsplit("-", 1)[0] + ".jpeg"
        assert patient_key(f"train/{label}/{name}", label) == patient_key(f"train/{label}/{first}", label), name
