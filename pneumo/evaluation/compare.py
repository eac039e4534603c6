"""Runs side by side (e.g. from scratch vs pretrained): the comparison table of the reference
reports, with the operating point and 95% intervals of each run."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from pneumo.evaluation.clinical import ci_text, run_clinical_section
from pneumo.utils.errors import PneumoError
from pneumo.utils.fsutil import atomic_write_text, read_json
from pneumo.utils.markdown import markdown_table
from pneumo.utils.run_files import METRICS_LOG, RESULTS, fold_dir, read_config

METRICS = (("accuracy", "acc"), ("roc_auc", "AUC"), ("sensitivity", "sens"), ("specificity", "spec"))


def _init(config: dict[str, Any]) -> str:
    if config.get("pretrained_file"):
        return f"pretrained ({Path(config['pretrained_file']).name})"
    if config.get("pretrained"):
        return "pretrained (timm)"
    return f"scratch ({config.get('init', 'xavier')})"


def _train_accuracy(run_dir: Path, fold: dict) -> float | None:
    """Training accuracy of a fold at its best (kept) epoch, from its metrics.jsonl."""
    path = fold_dir(run_dir, fold["fold"]) / METRICS_LOG
    if not path.exists():
        return None
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("epoch") == fold.get("best_epoch"):
            return float(record["train"]["accuracy"])
    return None


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def run_row(run_dir: Path, split: str = "test") -> dict[str, Any]:
    """One run's row: how it was trained, fold means at the best epoch, and out-of-fold and
    `split` ensemble metrics at the run's operating point with their 95% intervals."""
    if not (run_dir / RESULTS).exists():
        raise PneumoError(f"--compare {run_dir}: no {RESULTS}; it is not a finished run (train or resume it first)")
    results, config = read_json(run_dir / RESULTS), read_config(run_dir)
    clinical = results.get("clinical")
    if clinical is None:  # a run made before the clinical evaluation existed: computed now, from its CSVs
        clinical = run_clinical_section(run_dir, results, config)
    done = [f for f in results["folds"] if f["status"] == "done"]
    op = clinical["operating_point"]
    on_split = clinical["splits"].get(split, {}).get("ensemble")
    return {
        "run": run_dir.name,
        "model": results.get("model", config.get("model")),
        "init": _init(config),
        "image_size": config.get("image_size"),
        "epochs": config.get("epochs"),
        "folds": len(done),
        "threshold": f"{op['policy']} {op['threshold']:.3f}",
        "train_accuracy": _mean([_train_accuracy(run_dir, f) for f in done]),
        "best_val_loss": _mean([f["val"]["loss"] for f in done]),
        "best_val_accuracy": _mean([f["val"]["accuracy"] for f in done]),
        "oof": clinical["oof"]["pooled"]["at_threshold"],
        split: on_split["at_threshold"] if on_split else None,
        f"{split}_accuracy_at_0.5": on_split["at_0.5"]["accuracy"] if on_split else None,
    }


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _columns(split: str) -> list[str]:
    head = ["run", "model", "init", "image_size", "epochs", "folds", "threshold"]
    head += ["train acc", "best val loss", "best val acc"]
    head += [f"{where} {short}" for where in ("out-of-fold", split) for _, short in METRICS]
    return [*head, f"{split} acc @0.5"]


def _cells(row: dict[str, Any], split: str) -> list[str]:
    cells = [str(row[k]) for k in ("run", "model", "init", "image_size", "epochs", "folds", "threshold")]
    cells += [_number(row[k]) for k in ("train_accuracy", "best_val_loss", "best_val_accuracy")]
    cells += [ci_text((row[where] or {}).get(key)) for where in ("oof", split) for key, _ in METRICS]
    return [*cells, ci_text(row[f"{split}_accuracy_at_0.5"])]


def comparison_table(rows: list[dict[str, Any]], split: str = "test") -> Table:
    """The rows as a rich table (metrics at each run's own threshold, 95% CIs in brackets)."""
    table = Table(title=f"Comparison (out-of-fold and {split} ensemble at each run's operating point; 95% CIs)")
    for name in _columns(split):
        table.add_column(name, justify="left" if name in ("run", "model", "init") else "right")
    for row in rows:
        table.add_row(*_cells(row, split))
    return table


def comparison_markdown(rows: list[dict[str, Any]], split: str = "test") -> str:
    return "\n".join(markdown_table(_columns(split), [_cells(row, split) for row in rows])) + "\n"


def comparison_csv(rows: list[dict[str, Any]], split: str = "test") -> str:
    """One line per run; every interval as value, low and high columns."""
    flat_keys = ["run", "model", "init", "image_size", "epochs", "folds", "threshold"]
    flat_keys += ["train_accuracy", "best_val_loss", "best_val_accuracy"]
    header = list(flat_keys)
    for where in ("oof", split):
        header += [f"{where}_{key}{part}" for key, _ in METRICS for part in ("", "_low", "_high")]
    header += [f"{split}_accuracy_at_0.5{part}" for part in ("", "_low", "_high")]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        values = [row[k] for k in flat_keys]
        for where in ("oof", split):
            for key, _ in METRICS:
                m = (row[where] or {}).get(key) or {}
                values += [m.get("value"), m.get("low"), m.get("high")]
        m = row[f"{split}_accuracy_at_0.5"] or {}
        values += [m.get("value"), m.get("low"), m.get("high")]
        writer.writerow(["" if v is None else v for v in values])
    return buf.getvalue()


def compare_runs(run_dirs: Sequence[Path], out: Path, split: str = "test") -> tuple[Table, list[Path]]:
    """Write OUT.md and OUT.csv comparing the runs; returns the table and the files written."""
    rows = [run_row(Path(d), split) for d in run_dirs]
    md, csv_path = out.with_suffix(".md"), out.with_suffix(".csv")
    atomic_write_text(md, comparison_markdown(rows, split))
    atomic_write_text(csv_path, comparison_csv(rows, split))
    return comparison_table(rows, split), [md, csv_path]
