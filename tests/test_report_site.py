"""The run's report site (report/ with PNGs, report.html, report.md) and its TensorBoard logs."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image
from sklearn.metrics import classification_report

from pneumo.data.predictions import read_predictions

CLASSES = ["NORMAL", "PNEUMONIA"]
N_FOLDS = 5
# One figure of each kind the report promises, for the tiny run (OOF + its test split).
FIGURES = [
    "score-distributions",
    "class-distribution",
    "samples",
    "augmentations",
    "loss-accuracy",
    "precision-recall-per-class",
    "classwise",
    "confusion",
    "confusion-folds",
    "roc-pr-out-of-fold-validation",
    "roc-pr-test",
    "predictions-test",
    "misclassified-out-of-fold-validation",
    "misclassified-test",
    "lr-throughput",
    "calibration-reliability-oof",  # from calibration/, written by the clinical evaluation
    "calibration-reliability-test",
]
# run_one also draws Grad-CAM (saliency/); the other test runs pass --saliency-images 0.
FIGURES_WITH_SALIENCY = [*FIGURES, "saliency-test-misclassified", "saliency-test-sample"]


def _pngs(report: Path) -> dict[str, Path]:
    return {re.sub(r"^\d+-", "", p.stem): p for p in sorted(report.glob("*.png"))}


def test_training_writes_a_report_with_every_figure(run_two):
    report = run_two[0] / "report"
    assert sorted(_pngs(report)) == sorted(FIGURES)
    for path in _pngs(report).values():
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 600 and image.height >= 250, path.name
    assert str(report / "report.html") in run_two[1].stdout


def test_report_html_is_self_contained_with_every_figure_embedded(run_two):
    report = run_two[0] / "report"
    page = (report / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    assert "<script" not in page and "<link" not in page
    embedded = re.findall(r'<img src="data:image/png;base64,([^"]+)"[^>]*data-file="([^"]+)"', page)
    assert sorted(name for _, name in embedded) == sorted(p.name for p in _pngs(report).values())
    for data, name in embedded:
        assert base64.b64decode(data) == (report / name).read_bytes()


def test_report_md_references_every_png_by_relative_path(run_two):
    report = run_two[0] / "report"
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (report / "report.md").read_text())
    assert sorted(linked) == sorted(p.name for p in _pngs(report).values())


def _md_table(md: str, caption_start: str) -> dict[str, list[str]]:
    """The rows (first cell -> other cells) of the markdown table whose caption starts so."""
    after = md.split(f"**{caption_start}", 1)[1].splitlines()[2:]  # the caption's line, a blank line
    rows = []
    for line in after:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return {r[0]: r[1:] for r in rows[2:]}  # past the header and its rule


def _four(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.4f}"


def test_report_tables_match_sklearns_classification_report_of_the_saved_predictions(run_two):
    out = run_two[0]
    md = (out / "report" / "report.md").read_text()
    cases = [("test: ensemble", out / "predictions_test.csv")]
    cases += [(f"test: fold {k}", out / f"fold{k}" / "predictions_test.csv") for k in range(N_FOLDS)]
    cases += [(f"out-of-fold validation: fold {k}", out / f"fold{k}" / "val_predictions.csv") for k in range(N_FOLDS)]
    threshold = json.loads((out / "results.json").read_text())["decision"]["threshold"]
    for caption, csv_path in cases:
        preds = read_predictions(csv_path, CLASSES)
        expected = classification_report(
            preds.labels,
            (preds.probs[:, 1] >= threshold).astype(int),  # the run's decision
            labels=[0, 1],
            target_names=CLASSES,
            output_dict=True,
            zero_division=np.nan,
        )
        table = _md_table(md, caption)
        for name in CLASSES:
            # An undefined metric (e.g. precision of a class never predicted) reads n/a, never 0.
            want = [_four(expected[name][k]) for k in ("precision", "recall", "f1-score")]
            assert table[name] == [*want, str(int(expected[name]["support"]))], (caption, name)
        assert table["accuracy"][2] == f"{expected['accuracy']:.4f}", caption


def test_misclassified_gallery_states_the_total_number_of_mistakes(run_two):
    out = run_two[0]
    preds = read_predictions(out / "predictions_test.csv", CLASSES)
    threshold = json.loads((out / "results.json").read_text())["decision"]["threshold"]
    wrong = int(((preds.probs[:, 1] >= threshold).astype(int) != preds.labels).sum())
    md = (out / "report" / "report.md").read_text()
    if wrong:
        assert f"test: {wrong} misclassified images in all" in md
    else:
        assert f"test: no misclassified images out of {len(preds.files)}" in md


def test_run_facts_name_device_versions_and_wall_time(run_two):
    md = (run_two[0] / "report" / "report.md").read_text()
    facts = _md_table(md, "Facts")
    assert facts["processes"][0].startswith("2,") and facts["device"][0].startswith("cpu")
    assert re.fullmatch(r"\d+m \d\ds", facts["wall time"][0])
    assert facts["torch"][0] and facts["torch"][0] != "-"
    assert facts["cross-validation pool"][0].endswith("(40 images)")


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_fold_runs_hold_every_curve_and_their_own_hparams(run_two):
    from tensorboard.plugins.hparams import plugin_data_pb2

    out = run_two[0]
    for k in range(N_FOLDS):
        acc = _events(out / f"fold{k}" / "tensorboard")
        scalars = set(acc.Tags()["scalars"])
        curves = {"train/loss", "val/loss", "train/accuracy", "val/accuracy", "val/roc_auc", "lr", "images_per_second"}
        per_class = {f"val/{m}/{c}" for m in ("recall", "class_loss") for c in CLASSES}
        # Precision of a class the fold never predicted is undefined (null), and not logged.
        records = [json.loads(line) for line in (out / f"fold{k}" / "metrics.jsonl").read_text().splitlines()]
        predicted = [c for c in CLASSES if any(r["val"]["precision"][c] is not None for r in records)]
        per_class |= {f"val/precision/{c}" for c in predicted}
        assert curves | per_class <= scalars
        assert [e.step for e in acc.Scalars("val/loss")] == [1, 2]
        content = acc.PluginTagToContent("hparams")
        assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(content)
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        hparams = start.session_start_info.hparams
        assert hparams["fold"].number_value == k and hparams["model"].string_value == "test_resnet"
        best_epoch = json.loads((out / f"fold{k}" / "result.json").read_text())["best_epoch"]
        best = next(r["val"]["loss"] for r in records if r["epoch"] == best_epoch)  # the chosen epoch's
        assert acc.Scalars("final/val_loss")[-1].value == pytest.approx(best, rel=1e-6)
    assert not list(out.glob("fold*/tensorboard/*/"))  # no separate runs beside the folds' own


def test_tensorboard_report_run_holds_every_figure_as_an_image(run_two):
    report = run_two[0] / "report"
    acc = _events(report / "tensorboard")
    assert sorted(acc.Tags()["images"]) == sorted(p.stem for p in _pngs(report).values())


def test_evaluate_report_writes_the_report_of_a_run_trained_without_one(run_one, cache_dir):
    out = run_one[0]
    assert not (out / "report").exists()
    proc = run_cli(["evaluate.py", str(out), "--report", "--cache-dir", str(cache_dir), "--threads", "1"])
    assert sorted(_pngs(out / "report")) == sorted(FIGURES_WITH_SALIENCY)
    assert str(out / "report" / "report.html") in proc.stdout
    assert not list(out.glob(".report-*"))


def test_evaluate_report_of_an_unfinished_run_is_one_clear_error(run_one, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(run_one[0], partial, ignore=shutil.ignore_patterns("report", "results.json"))
    proc = run_cli(["evaluate.py", str(partial), "--report"], check=False)
    assert proc.returncode == 2
    assert "results.json" in proc.stderr and "Traceback" not in proc.stderr
    assert not (partial / "report").exists()


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_report_renders_every_figure_in_headless_chromium(run_two, tmp_path):
    page = (run_two[0] / "report" / "report.html").read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", CHECK + "</body>"))
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
    ]
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    n = len(_pngs(run_two[0] / "report"))
    assert f'data-images="{n}/{n}"' in dom
