"""W&B (offline) and MLflow (local store): what pneumo logs, read back with the libraries' own readers."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
from conftest import read_jsonl, train

from pneumo.training import trackers
from pneumo.utils.errors import PneumoError

wandb = pytest.importorskip("wandb")
mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402
from wandb.proto import wandb_internal_pb2  # noqa: E402


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline W&B run file: W&B's 7-byte header (':W&B', magic,
    version), then LevelDB log framing (32 KiB blocks of chunks: CRC32, length, type; a record
    is one FULL chunk or FIRST, MIDDLE..., LAST), each record a wandb_internal_pb2.Record."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    out, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or kind == 0:  # block trailer or padding
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def _key(item) -> str:
    """A history or summary item's key ('a/b' keys are stored as nested_key ['a', 'b'])."""
    return item.key or "/".join(item.nested_key)


def wandb_runs(run_dir: Path) -> dict[str, dict]:
    """name -> {group, job_type, config, history: [{step, metrics}], summary} of every offline W&B run."""
    runs = {}
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        run: dict = {"history": [], "summary": {}}
        for r in wandb_records(path):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                runs[r.run.display_name] = run
                run.update(group=r.run.run_group, job_type=r.run.job_type)
                run["config"] = {i.key: json.loads(i.value_json) for i in r.run.config.update}
            elif kind == "history":
                items = {_key(i): json.loads(i.value_json) for i in r.history.item}
                run["history"].append({k: v for k, v in items.items() if not k.startswith("_")})
            elif kind == "summary":
                run["summary"].update({_key(i): json.loads(i.value_json) for i in r.summary.update})
    return runs


def mlflow_runs(run_dir: Path) -> dict[str, tuple]:
    """name -> (run, client) of every MLflow run in the run directory's local store (MLflow >= 3.7
    reads a file store only when told to)."""
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    client = MlflowClient((run_dir / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "pneumo"]  # one, not one per process
    return {r.info.run_name: (r, client) for r in client.search_runs([experiment.experiment_id])}


@pytest.fixture
def local_trackers(monkeypatch):
    for var in ("WANDB_MODE", "WANDB_PROJECT", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)


def test_a_fold_is_logged_to_both_and_reads_back(tmp_path, local_trackers):
    config = {"model": "resnet18", "lr": 0.001, "pretrained_file": None}
    runs = trackers.open_runs(("tensorboard", "wandb", "mlflow"), tmp_path, "r18", "r18/fold2", "fold", config)
    assert len(runs) == 2
    curve = [{"val/loss": 0.7, "train/accuracy": 0.6}, {"val/loss": 0.4, "train/accuracy": 0.8}]
    for epoch, metrics in enumerate(curve, 1):
        for run in runs:
            run.log(metrics, epoch)
    for run in runs:
        run.finish({"final/test_roc_auc": 0.93})

    w = wandb_runs(tmp_path)["r18/fold2"]
    assert (w["group"], w["job_type"]) == ("r18", "fold")
    assert w["config"]["model"] == "resnet18" and w["config"]["lr"] == 0.001
    assert w["history"] == curve and w["summary"]["final/test_roc_auc"] == 0.93

    run, client = mlflow_runs(tmp_path)["r18/fold2"]
    assert run.data.tags["pneumo.run"] == "r18" and run.info.status == "FINISHED"
    assert run.data.params == {"model": "resnet18", "lr": "0.001"}
    history = client.get_metric_history(run.info.run_id, "val/loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.7), (2, 0.4)]
    assert run.data.metrics["final/test_roc_auc"] == 0.93


def test_all_means_every_tracker_and_a_missing_one_names_its_extra(monkeypatch):
    assert trackers.resolve(["all"]) == ("tensorboard", "wandb", "mlflow")
    assert trackers.resolve(["mlflow", "tensorboard"]) == ("tensorboard", "mlflow")
    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda n: None if n == "wandb" else real(n))
    with pytest.raises(PneumoError, match=r"--log-with wandb: .* pip install 'pneumo\[wandb\]'"):
        trackers.resolve(["wandb"])


def test_flatten_keeps_numbers_under_their_path():
    record = {"val": {"loss": 0.5, "per_class": {"NORMAL": {"recall": 1}}}, "model": "x", "best": True, "lr": 1e-3}
    assert trackers.flatten(record) == {"val/loss": 0.5, "val/per_class/NORMAL/recall": 1.0, "lr": 1e-3}


def test_a_fold_parallel_run_logs_each_fold_once_and_the_ensemble(tiny_data, cache_dir, tmp_path, local_trackers):
    """2 processes x 3 folds (folds 0-1 side by side, fold 2 on both): each fold is one run in each
    tracker, logged by the process that trained it (a group's leader only), with the fold's
    epochs as metrics.jsonl has them and its final metrics as result.json; then the run's."""
    out = tmp_path / "run"
    train(tiny_data, out, cache_dir, "--folds", "3", "--log-with", "all", processes=2)
    results = json.loads((out / "results.json").read_text())
    names = [f"run/fold{k}" for k in range(3)]
    logged_w, logged_m = wandb_runs(out), mlflow_runs(out)
    assert sorted(logged_w) == sorted(logged_m) == sorted([*names, "run/ensemble"])
    for k, name in enumerate(names):
        epochs = read_jsonl(out / f"fold{k}" / "metrics.jsonl")
        result = json.loads((out / f"fold{k}" / "result.json").read_text())
        w = logged_w[name]
        assert w["group"] == "run" and w["config"]["folds"] == 3
        assert [h["val/loss"] for h in w["history"]] == [e["val"]["loss"] for e in epochs]
        assert w["summary"]["final/test_roc_auc"] == pytest.approx(result["splits"]["test"]["roc_auc"])
        run, client = logged_m[name]
        history = client.get_metric_history(run.info.run_id, "val/loss")
        assert [(m.step, m.value) for m in history] == [(e["epoch"], e["val"]["loss"]) for e in epochs]
        assert run.data.metrics["final/val_accuracy"] == pytest.approx(result["val"]["accuracy"])
    ensemble, _ = logged_m["run/ensemble"]
    assert ensemble.data.metrics["oof/accuracy"] == pytest.approx(results["oof"]["accuracy"])
    assert ensemble.data.metrics["ensemble/test/roc_auc"] == pytest.approx(results["ensemble"]["test"]["roc_auc"])
    assert logged_w["run/ensemble"]["summary"]["oof/roc_auc"] == pytest.approx(results["oof"]["roc_auc"])
