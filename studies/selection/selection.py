#!/usr/bin/env python
"""Checkpoint selection: each fold's selected checkpoint against its last epoch's weights, on test/.

The recipe study keeps every fold's last training state (`--keep-state`), so one training
run answers both: `best.safetensors` is the epoch the run's `--select` chose (the lowest
validation loss for the study's runs), `state.pt` holds the last epoch's weights (the EMA
when the recipe keeps one). Both are scored on the run's test split through pneumo's own
decode and inference path, in the run's autocast:

    python studies/selection/selection.py runs/recipes/tuned-final runs/recipes/sb-r18d-screen ...

Prints a table (per fold: chosen epoch and test ROC-AUC, last epoch and test ROC-AUC; per
run: the ensemble's ROC-AUC, accuracy, sensitivity and specificity at 0.5 either way) and
writes `--json` / `.md` (default studies/selection/results.*). Nothing is chosen here: it
measures how much the choice of epoch moves the test result.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pneumo.data.images import Preprocess, decode  # noqa: E402
from pneumo.models.checkpoint import load_state  # noqa: E402
from pneumo.models.fold_model import load_fold_model  # noqa: E402
from pneumo.models.inference import predict  # noqa: E402
from pneumo.utils.fsutil import atomic_write_json, atomic_write_text  # noqa: E402
from pneumo.utils.run_files import BEST, RESULT, STATE, fold_dir, read_config  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def test_images(data_dir: Path, classes: list[str], size: int, pre: Preprocess) -> tuple[torch.Tensor, np.ndarray]:
    """Every image of DATA_DIR/test decoded as training decodes it, and its class index."""
    files = [(f, c) for c, name in enumerate(classes) for f in sorted((data_dir / "test" / name).iterdir())]
    pixels = np.stack([decode(f.read_bytes(), size, pre) for f, _ in files])
    return torch.from_numpy(pixels)[:, None], np.asarray([c for _, c in files])


def at_half(labels: np.ndarray, probs: np.ndarray) -> dict:
    called = probs >= 0.5
    return {
        "roc_auc": float(roc_auc_score(labels, probs)),
        "accuracy": float((called == labels).mean()),
        "sensitivity": float(called[labels == 1].mean()),
        "specificity": float((~called[labels == 0]).mean()),
    }


def compare_run(run: Path) -> dict:
    """Selected vs last weights of every finished fold of `run` that kept its state."""
    config = read_config(run)
    dtype = DTYPES.get(config.get("mixed_precision") or "no")
    autocast = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype else nullcontext
    folds = [k for k in range(config["folds"]) if all((fold_dir(run, k) / f).exists() for f in (STATE, RESULT))]
    if not folds:
        raise SystemExit(f"{run}: no finished fold kept its state (train with --keep-state)")
    chosen = [load_fold_model(fold_dir(run, k) / BEST, torch.device("cpu")) for k in folds]
    meta = chosen[0].meta
    positive = int(meta["positive"])
    x, classes = test_images(
        Path(config["data_dir"]), meta["classes"], int(meta["image_size"]), Preprocess.from_dict(meta)
    )
    labels = (classes == positive).astype(int)
    batches = [(x[i : i + 64], torch.zeros(0)) for i in range(0, len(x), 64)]
    probs = {"chosen": predict([(m.model, m.norm) for m in chosen], batches, torch.device("cpu"), autocast)}
    epochs = {"chosen": [int(m.meta["epoch"]) for m in chosen], "last": []}
    for m, k in zip(chosen, folds):
        state = load_state(fold_dir(run, k) / STATE)
        m.model.load_state_dict(state.get("ema", state["model"]))
        epochs["last"].append(int(state["epoch"]))
    probs["last"] = predict([(m.model, m.norm) for m in chosen], batches, torch.device("cpu"), autocast)
    out = {"run": run.name, "folds": folds, "select": config.get("select", "loss")}
    for which in ("chosen", "last"):
        p = probs[which][:, :, positive]
        out[which] = {
            "epochs": epochs[which],
            "fold_auc": [float(roc_auc_score(labels, q)) for q in p],
            "ensemble": at_half(labels, p.mean(axis=0)),
        }
    return out


def markdown(rows: list[dict]) -> str:
    lines = [
        "| run | select | folds | chosen epochs | last epochs | fold test AUC, chosen | fold test AUC, last "
        "| ensemble AUC chosen / last | acc@0.5 | sens@0.5 | spec@0.5 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c, last = r["chosen"], r["last"]
        pair = lambda key, c=c, last=last: f"{c['ensemble'][key]:.3f} / {last['ensemble'][key]:.3f}"
        lines.append(
            f"| {r['run']} | {r['select']} | {' '.join(map(str, r['folds']))} | {' '.join(map(str, c['epochs']))} | "
            f"{' '.join(map(str, last['epochs']))} | {' / '.join(f'{v:.3f}' for v in c['fold_auc'])} | "
            f"{' / '.join(f'{v:.3f}' for v in last['fold_auc'])} | {pair('roc_auc')} | {pair('accuracy')} | "
            f"{pair('sensitivity')} | {pair('specificity')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories trained with --keep-state")
    p.add_argument(
        "--json",
        type=Path,
        default=Path(__file__).with_name("results.json"),
        help="where the rows go, and the table beside it as .md (default: this study's results.json)",
    )
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [compare_run(run) for run in args.runs]
    table = markdown(rows)
    print(table)
    atomic_write_json(args.json, {"rows": rows})
    atomic_write_text(args.json.with_suffix(".md"), table)
    print(f"written: {args.json} and {args.json.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
