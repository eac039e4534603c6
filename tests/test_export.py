"""pneumo-export: one file per run holding the whole fold ensemble, agreeing with evaluate.py --images."""

from __future__ import annotations

import csv
import json
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from pneumo.export import cli, export
from pneumo.export.bundle import load_bundle
from pneumo.export.formats import CARD_KEY, CONTRACT_KEY, read_extra, run_file, write_onnx
from pneumo.export.graph import EnsembleGraph, view_grids
from pneumo.export.images import letterboxed
from pneumo.models.inference import predict
from pneumo.report.model_card import MODEL_CARD

TOLERANCE = 1e-5  # max |P(file) - P(evaluate.py)|, both float32 on the CPU
FORMATS = {"onnx": "ensemble.onnx", "torchscript": "ensemble.pt"}


@pytest.fixture(scope="module")
def exported(run_one, tmp_path_factory) -> dict[str, Path]:
    """Both formats written by the CLI into a folder of their own."""
    run_dir, _ = run_one
    out = tmp_path_factory.mktemp("export")
    for fmt, name in FORMATS.items():
        assert cli.main([str(run_dir), "--format", fmt, "--output", str(out / name)]) == 0
    return {fmt: out / name for fmt, name in FORMATS.items()}


@pytest.fixture(scope="module")
def evaluated(run_one, tiny_data, tmp_path_factory) -> tuple[list[Path], np.ndarray, list[str]]:
    """evaluate.py --images on the tiny test split in float32 (the run trained in bf16): files, P, pred."""
    run_dir, _ = run_one
    out = tmp_path_factory.mktemp("evaluated") / "preds.csv"
    images = tiny_data / "test"
    run_cli(["evaluate.py", str(run_dir), "--images", str(images), "--out", str(out), "--mixed-precision", "no"])
    rows = list(csv.DictReader(out.open()))
    return (
        [Path(r["file"]) for r in rows],
        np.array([float(r["prob_PNEUMONIA"]) for r in rows]),
        [r["pred"] for r in rows],
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_export_agrees_with_evaluate_images_on_the_same_files(fmt, exported, evaluated):
    files, want, preds = evaluated
    contract = read_extra(exported[fmt])[CONTRACT_KEY]
    probability, decision = run_file(exported[fmt], letterboxed(files, contract))
    assert len(files) == 12 and probability.dtype == np.float32
    assert np.abs(probability - want).max() <= TOLERANCE
    assert [contract["classes"][int(d)] for d in decision] == preds


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_batch_size_is_free(fmt, exported, evaluated):
    files, _, _ = evaluated
    pixels = letterboxed(files[:4], read_extra(exported[fmt])[CONTRACT_KEY])
    whole, _ = run_file(exported[fmt], pixels)
    one, _ = run_file(exported[fmt], pixels[:1])
    three, _ = run_file(exported[fmt], pixels[1:])
    assert one.shape == (1,) and three.shape == (3,)
    assert np.abs(np.concatenate([one, three]) - whole).max() <= 1e-6


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_file_carries_the_runs_decision_contract_and_model_card(fmt, exported, run_one):
    run_dir, _ = run_one
    results = json.loads((run_dir / "results.json").read_text())
    extra = read_extra(exported[fmt])
    contract = extra[CONTRACT_KEY]
    assert contract["threshold"] == results["decision"]["threshold"]
    assert contract["policy"] == results["decision"]["policy"]
    assert contract["positive_class"] == "PNEUMONIA" and contract["folds"] == results["folds_done"]
    assert contract["input"]["shape"] == ["batch", 1, 32, 32] and contract["input"]["dtype"] == "uint8"
    card = (run_dir / MODEL_CARD).read_text()
    assert extra[CARD_KEY] == card
    assert exported[fmt].with_name(f"ensemble.{MODEL_CARD}").read_text() == card


def test_onnx_without_the_extra_is_one_line_naming_it(run_one, tmp_path, monkeypatch, capsys):
    run_dir, _ = run_one
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    assert cli.main([str(run_dir), "--format", "onnx", "--output", str(tmp_path / "e.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pneumo[export]" in err and "Traceback" not in err
    assert not (tmp_path / "e.onnx").exists()


def test_a_file_that_fails_its_check_is_not_left_behind(run_one, tmp_path, monkeypatch, capsys):
    """pneumo's own path made to disagree: the written file is refused and nothing stays in its folder."""
    run_dir, _ = run_one
    real = export.eager_probability
    monkeypatch.setattr(export, "eager_probability", lambda bundle, pixels: real(bundle, pixels) + 1e-3)
    out = tmp_path / "out"
    assert cli.main([str(run_dir), "--format", "torchscript", "--output", str(out / "e.pt")]) == 2
    assert "disagrees with pneumo's" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_test_time_augmentation_views_export_as_pneumo_computes_them(run_one, tmp_path):
    """The graph's views (precomputed grids) against pneumo's per-batch ones, through ONNX's GridSample."""
    run_dir, _ = run_one
    bundle = load_bundle(run_dir)
    graph = bundle.graph()
    graph = EnsembleGraph(graph.members, graph.norms, graph.positive, 0.5, view_grids("flip-rotate", 32))
    pixels = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    pairs = [(m.model, m.norm) for m in bundle.models]
    want = predict(pairs, [(pixels, torch.arange(3))], torch.device("cpu"), nullcontext, "flip-rotate").mean(0)[:, 1]
    write_onnx(graph, tmp_path / "tta.onnx", pixels[:2], {CONTRACT_KEY: "{}", CARD_KEY: ""})
    got, _ = run_file(tmp_path / "tta.onnx", pixels.numpy())
    assert np.abs(got - want).max() <= TOLERANCE
