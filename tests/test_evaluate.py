"""evaluate.py: the ensemble evaluation again from the checkpoints, and predictions for new images."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY_COUNTS, run_cli
from PIL import Image

from pneumo.evaluation.evaluate import check_not_in_pool
from pneumo.utils.errors import PneumoError


def test_evaluate_reproduces_results_from_checkpoints(run_two, cache_dir):
    out, _ = run_two
    run_cli(["evaluate.py", str(out), "--cache-dir", str(cache_dir), "--threads", "1"])
    results = json.loads((out / "results.json").read_text())
    again = json.loads((out / "evaluation" / "test" / "results.json").read_text())
    ens, ens2 = results["ensemble"]["test"], again["ensemble"]
    assert ens2["confusion_matrix"] == ens["confusion_matrix"]
    assert ens2["accuracy"] == ens["accuracy"]
    assert ens2["roc_auc"] == pytest.approx(ens["roc_auc"], abs=1e-9)
    for fold in results["folds"]:
        assert again["folds"][str(fold["fold"])]["confusion_matrix"] == fold["splits"]["test"]["confusion_matrix"]
    train_probs = np.loadtxt(out / "predictions_test.csv", delimiter=",", skiprows=1, usecols=(7, 8))
    eval_probs = np.loadtxt(out / "evaluation" / "test" / "predictions.csv", delimiter=",", skiprows=1, usecols=(7, 8))
    np.testing.assert_allclose(eval_probs, train_probs, atol=1e-6)


def test_evaluate_predicts_images_and_folders(run_two, tiny_data, tmp_path):
    out, _ = run_two
    odd = tmp_path / "odd.png"
    Image.new("RGBA", (300, 200), (120, 120, 120, 255)).save(odd)
    folder = tiny_data / "test" / "NORMAL"
    csv_path = tmp_path / "preds.csv"
    run_cli(["evaluate.py", str(out), "--images", str(odd), str(folder), "--out", str(csv_path)])
    rows = list(csv.DictReader(csv_path.open()))
    threshold = json.loads((out / "results.json").read_text())["decision"]["threshold"]
    assert len(rows) == 1 + len(list(folder.glob("*.jpeg")))
    for row in rows:
        p = float(row["prob_PNEUMONIA"])
        folds = [float(row[f"fold{k}_prob_PNEUMONIA"]) for k in range(5)]
        assert 0 <= p <= 1 and p == pytest.approx(np.mean(folds))
        assert row["pred"] == ("PNEUMONIA" if p >= threshold else "NORMAL")  # the run's decision


def test_evaluate_refuses_unreadable_images_writing_nothing(run_two, tmp_path):
    out, _ = run_two
    bad = tmp_path / "bad.jpeg"
    bad.write_text("not an image")
    csv_path = tmp_path / "preds.csv"
    proc = run_cli(["evaluate.py", str(out), "--images", str(bad), "--out", str(csv_path)], check=False)
    assert proc.returncode == 2
    assert "bad.jpeg" in proc.stderr and "Traceback" not in proc.stderr
    assert not csv_path.exists()


def _evaluate(out, cache_dir, *extra: str, check: bool = True):
    return run_cli(["evaluate.py", str(out), "--cache-dir", str(cache_dir), "--threads", "1", *extra], check=check)


def _fold_probs(path: Path) -> dict[str, np.ndarray]:
    """{file stem: each fold's P(PNEUMONIA)} of a predictions CSV."""
    rows = list(csv.DictReader(path.open()))
    return {Path(r["file"]).stem: np.array([float(r[f"fold{k}_prob_PNEUMONIA"]) for k in range(5)]) for r in rows}


def test_evaluate_with_flip_tta_averages_each_model_over_the_image_and_its_mirror(
    run_two, cache_dir, tiny_data, tmp_path
):
    out, _ = run_two  # trained without TTA
    size = yaml.safe_load((out / "config.yaml").read_text())["image_size"]
    external, mirrored = tmp_path / "external", tmp_path / "mirrored"
    mirrored.mkdir()
    for f in (tiny_data / "test").rglob("*.jpeg"):  # at the model's size already: decoding them resizes nothing
        (external / "test" / f.parent.name).mkdir(parents=True, exist_ok=True)
        with Image.open(f) as img:
            small = img.convert("L").resize((size, size))
        small.save(external / "test" / f.parent.name / f"{f.stem}.png")
        small.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored / f"{f.stem}-mirror.png")
    _evaluate(out, cache_dir, "--data-dir", str(external), "--tta", "flip", "--saliency-images", "0")
    section = out / "evaluation" / "test-tta-flip"
    assert json.loads((section / "results.json").read_text())["tta"] == "flip"
    run_cli(
        ["evaluate.py", str(out), "--images", str(external / "test"), str(mirrored), "--out", str(tmp_path / "p.csv")]
    )
    plain = _fold_probs(tmp_path / "p.csv")
    tta = _fold_probs(section / "predictions.csv")
    assert len(tta) == sum(TINY_COUNTS["test"]) and len(plain) == 2 * len(tta)
    for stem, probs in tta.items():
        np.testing.assert_allclose(probs, (plain[stem] + plain[f"{stem}-mirror"]) / 2, atol=1e-5, err_msg=stem)
    assert max(np.abs(tta[s] - plain[s]).max() for s in tta) > 0.001  # the mirror changes the predictions


def test_evaluate_external_set_holding_only_the_split(run_two, tiny_data, cache_dir, tmp_path):
    out, _ = run_two
    external = tmp_path / "external"
    shutil.copytree(tiny_data / "test", external / "test")
    _evaluate(out, cache_dir, "--data-dir", str(external), "--split", "test")
    section = json.loads((out / "evaluation" / "test" / "results.json").read_text())
    trained = json.loads((out / "results.json").read_text())["ensemble"]["test"]
    assert section["data_dir"] == str(external.resolve()) and section["in_pool"] is False
    assert section["ensemble"]["confusion_matrix"] == trained["confusion_matrix"]


def test_bad_files_outside_the_evaluated_split_do_not_block_it(run_two, tiny_data, cache_dir, tmp_path):
    out, _ = run_two
    external = tmp_path / "external"
    shutil.copytree(tiny_data / "test", external / "test")
    (external / "train" / "NORMAL").mkdir(parents=True)  # one class folder only: a full scan refuses it
    (external / "train" / "NORMAL" / "broken.jpeg").write_bytes(b"not an image")
    (external / "val" / "SOMETHING_ELSE").mkdir(parents=True)
    proc = _evaluate(out, cache_dir, "--data-dir", str(external))
    assert "broken.jpeg" not in proc.stdout + proc.stderr
    section = json.loads((out / "evaluation" / "test" / "results.json").read_text())
    assert section["data_dir"] == str(external.resolve())
    assert np.sum(section["ensemble"]["confusion_matrix"]["matrix"]) == sum(TINY_COUNTS["test"])


@pytest.mark.parametrize("split", ["train", "val"])
def test_evaluate_refuses_a_split_of_the_runs_pool(run_two, cache_dir, split):
    out, _ = run_two
    proc = _evaluate(out, cache_dir, "--split", split, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"--split {split}:" in proc.stderr and "cross-validation pool" in proc.stderr
    assert "optimistic" in proc.stderr and "--allow-pool-split" in proc.stderr


def test_forced_pool_split_is_labelled_in_pool(run_two, cache_dir):
    out, _ = run_two
    proc = _evaluate(out, cache_dir, "--split", "val", "--allow-pool-split")
    section = json.loads((out / "evaluation" / "val" / "results.json").read_text())
    assert section["in_pool"] is True and section["label"] == "in-pool: optimistic"
    assert f"{out.name} on val (in-pool: optimistic)" in proc.stdout


def _fake_run(run_dir: Path, pool_files: list[str]) -> None:
    run_dir.mkdir()
    (run_dir / "folds.json").write_text(json.dumps({"files": dict.fromkeys(pool_files, 0)}))


def test_val_kept_apart_is_not_a_pool_split(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _fake_run(tmp_path / "run", ["train/NORMAL/IM-0001-0001.jpeg"])
    config = {"data_dir": str(data)}
    assert check_not_in_pool(tmp_path / "run", config, data, "val", allow=False) is False
    with pytest.raises(PneumoError, match="--allow-pool-split"):
        check_not_in_pool(tmp_path / "run", config, data, "train", allow=False)


def test_a_pool_split_name_in_another_data_dir_is_not_in_pool(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "other").mkdir()
    _fake_run(tmp_path / "run", ["train/NORMAL/IM-0001-0001.jpeg"])
    config = {"data_dir": str(tmp_path / "data")}
    assert check_not_in_pool(tmp_path / "run", config, tmp_path / "other", "train", allow=False) is False
