"""Experiment trackers beside TensorBoard: Weights & Biases and MLflow, local by default.

Each fold is one tracker run named NAME/foldK, logged by the process that trains it (a
data-parallel group's leader), and every fold of a run is grouped under the run's name (W&B
`group`, MLflow tag `pneumo.run`); the run's final out-of-fold, ensemble and clinical metrics go
to one more run, NAME/ensemble, logged by the main process. Accelerate's tracker API is not
used: it logs from the main process only, and here every fold process logs its own folds.

W&B runs in offline mode unless WANDB_MODE says otherwise, writing RUN/wandb/offline-run-*
(`wandb sync` uploads them later); MLflow logs to MLFLOW_TRACKING_URI when set, else to a local
file store RUN/mlruns (`mlflow ui --backend-store-uri RUN/mlruns`).
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from pneumo.training.events import EpochEnd, Handler
from pneumo.utils.errors import PneumoError

TRACKERS = ("tensorboard", "wandb", "mlflow")  # tensorboard: pneumo's own (tracking.py), always written
_MLFLOW_BATCH = 100  # MLflow's limit of params per log_batch call (and of metrics: 1000)
_MLFLOW_PARAM_CHARS = 6000  # and of a param value's length


def resolve(names: Iterable[str]) -> tuple[str, ...]:
    """--log-with values, `all` expanded, in TRACKERS order; a one-line error names a missing extra."""
    chosen = set(TRACKERS) if "all" in names else set(names)
    for name in sorted(chosen - {"tensorboard"}):
        if importlib.util.find_spec(name) is None:
            raise PneumoError(f"--log-with {name}: the {name} package is not installed: pip install 'pneumo[{name}]'")
    return tuple(t for t in TRACKERS if t in chosen)


def flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a nested record, as 'a/b/c' -> float (booleans and text left out)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


class TrackerRun(Protocol):
    """One run in an external tracker."""

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def finish(self, summary: Mapping[str, float]) -> None: ...


class WandbRun:
    """A W&B run (offline unless WANDB_MODE is set), its files under `run_dir`/wandb."""

    def __init__(self, run_dir: Path, group: str, name: str, job_type: str, config: Mapping[str, Any]) -> None:
        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "pneumo"),
            group=group,
            name=name,
            job_type=job_type,
            config=dict(config),
            dir=str(run_dir),
            mode=os.environ.get("WANDB_MODE", "offline"),  # type: ignore[arg-type]
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def finish(self, summary: Mapping[str, float]) -> None:
        self.run.summary.update(dict(summary))
        self.run.finish()


class MlflowRun:
    """An MLflow run in experiment MLFLOW_EXPERIMENT_NAME (default 'pneumo'), tagged with its group."""

    def __init__(self, run_dir: Path, group: str, name: str, job_type: str, config: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        self.client = _mlflow_client(run_dir)
        eid = _mlflow_experiment(self.client)
        tags = {"pneumo.run": group, "pneumo.job": job_type}
        self.run_id = self.client.create_run(eid, run_name=name, tags=tags).info.run_id
        params = [Param(k, str(v)[:_MLFLOW_PARAM_CHARS]) for k, v in sorted(config.items()) if v is not None]
        for start in range(0, len(params), _MLFLOW_BATCH):
            self.client.log_batch(self.run_id, params=params[start : start + _MLFLOW_BATCH])
        self.last_step = 0

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(k, v, now, step) for k, v in metrics.items()]
        for start in range(0, len(rows), 10 * _MLFLOW_BATCH):
            self.client.log_batch(self.run_id, metrics=rows[start : start + 10 * _MLFLOW_BATCH])
        self.last_step = step

    def finish(self, summary: Mapping[str, float]) -> None:
        if summary:
            self.log(summary, self.last_step)
        self.client.set_terminated(self.run_id)


def _mlflow_client(run_dir: Path) -> Any:
    """A client of MLFLOW_TRACKING_URI, else of the local file store RUN/mlruns (MLflow >= 3.7 keeps
    the file store for those who opt in; it needs no server or database)."""
    from mlflow.tracking import MlflowClient

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        uri = (run_dir / "mlruns").resolve().as_uri()
    return MlflowClient(uri)


def _mlflow_experiment(client: Any) -> str:
    """The id of experiment MLFLOW_EXPERIMENT_NAME (default 'pneumo'), created if missing."""
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "pneumo")
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name)


def prepare(names: Iterable[str], run_dir: Path) -> None:
    """What must exist before fold processes open their runs at once: the MLflow experiment (two
    processes creating it together can make two of one name in a file store). The main process
    calls this before the fold processes start."""
    if "mlflow" in resolve(names):
        _mlflow_experiment(_mlflow_client(run_dir))


_OPENERS = {"wandb": WandbRun, "mlflow": MlflowRun}


def open_runs(
    names: Iterable[str], run_dir: Path, group: str, name: str, job_type: str, config: Mapping[str, Any]
) -> list[TrackerRun]:
    """One run per external tracker in `names` (TensorBoard is written by pneumo itself)."""
    return [_OPENERS[t](run_dir, group, name, job_type, config) for t in resolve(names) if t in _OPENERS]


def open_fold_runs(names: Iterable[str], run_dir: Path, fold: int, config: Mapping[str, Any]) -> list[TrackerRun]:
    """Fold `fold`'s runs (NAME/foldK in group NAME, the run directory's name), with the run's config."""
    return open_runs(names, run_dir, run_dir.name, f"{run_dir.name}/fold{fold}", "fold", config)


def log_run(names: Iterable[str], run_dir: Path, config: Mapping[str, Any], results: Mapping[str, Any]) -> None:
    """The run's final metrics (out-of-fold, ensemble per split, clinical) into NAME/ensemble."""
    sections = {k: results[k] for k in ("oof", "ensemble", "clinical") if k in results}
    for run in open_runs(names, run_dir, run_dir.name, f"{run_dir.name}/ensemble", "ensemble", config):
        run.finish(flatten(sections))


class TrackerLog(Handler):
    """Each epoch record of a fold into its tracker runs (on resume, the saved history first)."""

    def __init__(self, runs: list[TrackerRun], history: list[dict[str, Any]]) -> None:
        self.runs = runs
        for record in history:
            self._log(record)

    def epoch_end(self, event: EpochEnd) -> None:
        self._log(event.record)

    def _log(self, record: dict[str, Any]) -> None:
        metrics = flatten({k: v for k, v in record.items() if k != "epoch"})
        for run in self.runs:
            run.log(metrics, int(record["epoch"]))
