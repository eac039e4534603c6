"""--labels FILE.csv: a data set described by a CSV instead of class folders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, train
from PIL import Image

from pneumo.data.labels import scan_labels
from pneumo.utils.errors import PneumoError


@pytest.fixture
def flat(tmp_path) -> Path:
    """A data root with images in one flat folder (no class folders)."""
    root = tmp_path / "site"
    (root / "img").mkdir(parents=True)
    for i in range(8):
        Image.new("L", (20, 20), 40 * (i % 5)).save(root / "img" / f"{i}.png")
    (root / "img" / "notes.txt").write_text("x")
    return root


def write_csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text(text)
    return path


def test_a_csv_with_patients_and_splits_becomes_the_layout(tmp_path, flat):
    rows = ["file,label,patient,split"]
    rows += [f"img/{i}.png,{'PNEUMONIA' if i % 2 else 'NORMAL'},p{i // 2},train" for i in range(6)]
    rows += ["img/6.png,NORMAL,p9,test", "./img/7.png,PNEUMONIA,p9,test"]
    layout = scan_labels(flat, write_csv(tmp_path, "\n".join(rows) + "\n"))
    assert layout.classes == ("NORMAL", "PNEUMONIA") and layout.positive_index == 1
    train, test = layout.splits["train"], layout.splits["test"]
    assert train.files == tuple(f"img/{i}.png" for i in range(6))
    assert train.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert train.patient_keys() == ["p0", "p0", "p1", "p1", "p2", "p2"]
    assert test.files == ("img/6.png", "img/7.png") and test.patient_keys() == ["p9", "p9"]
    assert set(layout.splits) == {"train", "test"}


def test_without_patient_or_split_columns_rows_train_and_patients_come_from_names(tmp_path, flat):
    layout = scan_labels(flat, write_csv(tmp_path, "file,label\nimg/0.png,a\nimg/1.png,b\n"))
    assert layout.classes == ("a", "b") and list(layout.splits) == ["train"]
    assert layout.splits["train"].patients is None
    assert layout.splits["train"].patient_keys() == ["a/0", "b/1"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("name,label\nimg/0.png,a\n", "no column 'file'"),
        ("file,label\n", "no rows"),
        ("file,label\nimg/0.png,a\nimg/1.png,\n", "line 3: empty 'label'"),
        ("file,label\n/etc/passwd,a\nimg/1.png,b\n", "line 2: /etc/passwd is not a path inside --data-dir"),
        ("file,label\nimg/0.png,a\n../outside.png,b\n", "line 3: ../outside.png is not a path inside"),
        ("file,label\nimg/0.png,a\nimg/link.png,b\n", "line 3: img/link.png leads outside --data-dir"),
        (
            "file,label\nimg/0.png,a\nimg/1.png,b\n./img/0.png,b\n",
            "line 4: img/0.png is listed twice (first on line",
        ),
        ("file,label\nimg/0.png,a\nimg/missing.png,b\n", "line 3: img/missing.png does not exist"),
        ("file,label\nimg/0.png,a\nimg/notes.txt,b\n", "line 3: img/notes.txt is not an image file"),
        ("file,label\nimg/0.png,a\nimg/1.png,b\nimg/2.png,c\n", "exactly two labels; found ['a', 'b', 'c']"),
        ("file,label,split\nimg/0.png,a,train\nimg/1.png,b,train\nimg/2.png,c,test\n", "line 4: label 'c' is not one"),
        ("file,label,split\nimg/0.png,a,train\nimg/1.png,b,holdout\n", "line 3: split 'holdout' is not one of"),
    ],
    ids=[
        "no-file-column",
        "no-rows",
        "empty-label",
        "absolute",
        "dotdot",
        "symlink-out",
        "duplicate",
        "missing-file",
        "not-an-image",
        "three-labels",
        "label-outside",
        "unknown-split",
    ],
)
def test_each_problem_is_one_line_naming_the_csv_line(tmp_path, flat, body, message):
    (tmp_path / "outside.png").write_bytes((flat / "img" / "0.png").read_bytes())
    (flat / "img" / "link.png").symlink_to(tmp_path / "outside.png")
    csv_path = write_csv(tmp_path, body)
    with pytest.raises(PneumoError) as err:
        scan_labels(flat, csv_path)
    text = str(err.value)
    assert message in text and str(csv_path) in text and "\n" not in text


def test_a_missing_csv_is_one_line(tmp_path, flat):
    with pytest.raises(PneumoError, match="cannot read it"):
        scan_labels(flat, tmp_path / "nope.csv")


def test_patients_from_the_csv_are_never_split_across_folds(tmp_path, flat):
    from pneumo.data.folds import make_folds

    rows = ["file,label,patient"] + [f"img/{i}.png,{'b' if i % 2 else 'a'},p{i % 4}" for i in range(8)]
    pool = scan_labels(flat, write_csv(tmp_path, "\n".join(rows) + "\n")).splits["train"]
    fold_of, _ = make_folds(
        pool.files, pool.labels, pool.classes, [f"s{i}" for i in range(8)], n_folds=2, seed=0, patients=pool.patients
    )
    by_patient: dict[str, set[int]] = {}
    for patient, fold in zip(pool.patients, fold_of):
        by_patient.setdefault(patient, set()).add(int(fold))
    assert all(len(f) == 1 for f in by_patient.values()) and len(by_patient) == 4
    assert sorted(np.bincount(fold_of).tolist()) == [4, 4]


def test_train_and_evaluate_from_a_csv(tiny_data, cache_dir, tmp_path):
    """The tiny set flattened into one folder with a CSV (patients and splits): training groups the
    folds by the CSV's patients and evaluates its test rows; evaluate.py RUN finds them again."""
    root = tmp_path / "flat"
    root.mkdir()
    rows = ["file,label,patient,split"]
    for i, src in enumerate(sorted(tiny_data.rglob("*.jpeg"))):
        split, label = src.relative_to(tiny_data).parts[:2]
        (root / f"{i:03d}.jpeg").write_bytes(src.read_bytes())
        rows.append(f"{i:03d}.jpeg,{label},pt{(i + 1) // 2},{split}")  # pt6: a test and a train image
    csv_path = write_csv(tmp_path, "\n".join(rows) + "\n")
    out = tmp_path / "run"
    train(root, out, cache_dir, "--labels", str(csv_path), "--train-folds", "0", "1")
    folds = json.loads((out / "folds.json").read_text())
    patient = {r.split(",")[0]: r.split(",")[2] for r in rows[1:]}
    fold_of_patient: dict[str, set[int]] = {}
    for file, fold in folds["files"].items():
        fold_of_patient.setdefault(patient[file], set()).add(fold)
    assert all(len(f) == 1 for f in fold_of_patient.values())
    test_rows = [r.split(",") for r in rows[1:] if r.endswith(",test")]
    predicted = {r["file"]: r["label"] for r in csv.DictReader((out / "predictions_test.csv").open())}
    assert predicted == {r[0]: r[1] for r in test_rows}
    pool_patients = {patient[f] for f in folds["files"]}
    same = {p["file"] for p in json.loads((out / "overlap.json").read_text())["pairs"] if p["kind"] == "same_patient"}
    assert same == {r[0] for r in test_rows if patient[r[0]] in pool_patients} != set()  # the CSV's patients
    run_cli(["evaluate.py", str(out), "--cache-dir", str(cache_dir)])
    again = json.loads((out / "evaluation" / "test" / "results.json").read_text())
    assert again["ensemble"]["n"] == len(test_rows)


def test_labels_without_a_data_dir_is_refused(tmp_path, capsys):
    from pneumo import train_cli

    csv_path = write_csv(tmp_path, "file,label\na.png,x\n")
    assert train_cli.main(["--labels", str(csv_path), "--output-dir", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert error == "error: --labels needs --data-dir: the root its file column is relative to"
    assert not (tmp_path / "run").exists()
