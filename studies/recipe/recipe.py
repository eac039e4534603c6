#!/usr/bin/env python
"""Recipe study: train named recipe variants on real data and tabulate how each generalises.

Each variant is a train.py config file, `studies/recipe/recipes/NAME.yaml` (its first comment
line is the variant's description), read on top of `configs/reference.yaml` — the recipe
before the study (the reference reports' recipe at 64 px, 10 epochs) — so a variant names only
what it changes, whatever train.py's defaults are. The study's first rows ran in bf16, later ones
in float32 (`--mixed-precision`; the table's autocast column).
A stage trains every variant the same way:

    screen   folds 0 and 1 of the 5-fold split (2 processes: one fold each), for ablations
    final    all 5 folds, for finalists

    python studies/recipe/recipe.py --data-dir ../shared/data/chest_xray --stage screen
    python studies/recipe/recipe.py --data-dir ../shared/data/chest_xray --stage final --variants baseline tuned

Runs go to `runs/recipes/NAME-STAGE/` (a half-done study resumes: finished runs are read back,
unfinished ones resume through train.py's own resume). The table — out-of-fold accuracy and
AUC, dev-test ensemble accuracy/AUC/sensitivity/specificity at 0.5 and at the threshold
chosen on the out-of-fold predictions (Youden), single-fold test AUCs, wall time — is
written to `studies/recipe/results.{md,json}` with every variant ever run, and printed
(this study's README tells what it found). The test split is only read, never used to choose anything in a run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from sklearn.metrics import roc_auc_score, roc_curve

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pneumo.utils.fsutil import atomic_write_json, atomic_write_text  # noqa: E402

STUDY = Path(__file__).resolve().parent
RECIPES = STUDY / "recipes"
SCREEN_FOLDS = [0, 1]
STAGES = {"screen": ["--train-folds", *map(str, SCREEN_FOLDS)], "final": []}
# What every variant starts from unless its YAML says otherwise: the recipe before the study
# (`make demo` trains it too). train.py's defaults are the study's winner.
REFERENCE = yaml.safe_load((ROOT / "configs" / "reference.yaml").read_text(encoding="utf-8"))


def describe(path: Path) -> str:
    """The variant's description: the first comment line of its YAML."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def train(name: str, stage: str, data_dir: str, out: Path, processes: int, mixed_precision: str) -> None:
    """Train (or resume) one variant's run through the real launcher."""
    recipe = RECIPES / f"{name}.yaml"
    own = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
    config = out.with_suffix(".yaml")
    resolved = {**REFERENCE, "mixed_precision": mixed_precision, **own}
    atomic_write_text(config, f"# {describe(recipe)}\n" + yaml.safe_dump(resolved, sort_keys=True))
    # --keep-state keeps each fold's last weights beside its best (selected) ones, so both can be judged.
    args = ["train.py", "--config", str(config), "--data-dir", data_dir, "--output-dir", str(out), "--keep-state"]
    args += STAGES[stage]
    if processes > 1:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
        launch += [str(ROOT / "accelerate_configs" / "cpu_2proc.yaml"), "--num_processes", str(processes)]
    else:
        launch = [sys.executable]
    with open(out.with_suffix(".log"), "a", encoding="utf-8") as log:
        subprocess.run([*launch, *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)


def read_probs(path: Path, positive: str) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(labels, ensemble P(positive), {column: values}) of a predictions CSV written by a run."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    labels = np.asarray([r["label"] == positive for r in rows], dtype=int)
    columns = {k: np.asarray([float(r[k]) for r in rows]) for k in rows[0] if k.startswith(("prob_", "fold"))}
    return labels, columns[f"prob_{positive}"], columns


def youden(labels: np.ndarray, probs: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1."""
    fpr, tpr, thresholds = roc_curve(labels, probs)
    return float(min(thresholds[int(np.argmax(tpr - fpr))], 1.0))


def at_threshold(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict:
    pred = probs >= threshold
    return {
        "accuracy": float((pred == labels).mean()),
        "sensitivity": float(pred[labels == 1].mean()),
        "specificity": float((~pred[labels == 0]).mean()),
    }


def row(name: str, stage: str, run: Path, folds: list[int] | None = None) -> dict:
    """The study's numbers for one finished run, or for the ensemble of some of its `folds`.

    A fold's training depends on (seed, fold) only, so folds 0-1 of a final run are exactly
    what a screening run of the same recipe trains.
    """
    results = json.loads((run / "results.json").read_text())
    positive = results["positive_class"]
    folds = folds or results["folds_done"]
    oof_y, oof_p, oof_cols = read_probs(run / "oof.csv", positive)
    keep = np.isin(oof_cols["fold"], folds)
    oof_y, oof_p = oof_y[keep], oof_p[keep]
    threshold = youden(oof_y, oof_p)
    test_y, _, cols = read_probs(run / "predictions_test.csv", positive)
    per_fold = [cols[f"fold{k}_prob_{positive}"] for k in folds]
    test_p = np.mean(per_fold, axis=0)
    fold_auc = [float(roc_auc_score(test_y, p)) for p in per_fold]
    oof_acc = float(((oof_p >= 0.5) == oof_y).mean())
    return {
        "variant": name,
        "stage": stage,
        "description": describe(RECIPES / f"{name}.yaml"),
        "folds": folds,
        "source": run.name,
        "precision": yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")).get("mixed_precision") or "no",
        "oof": {"accuracy": oof_acc, "roc_auc": float(roc_auc_score(oof_y, oof_p))},
        "oof_threshold": threshold,
        "test_auc": float(roc_auc_score(test_y, test_p)),
        "test_at_0.5": at_threshold(test_y, test_p, 0.5),
        "test_at_oof_threshold": at_threshold(test_y, test_p, threshold),
        "test_auc_per_fold": fold_auc,
        # A derived screening row's wall time is its two folds' (they run side by side).
        "fold_seconds": [r["seconds"] for r in results["folds"] if r["fold"] in folds],
        "wall_seconds": results["wall_seconds"] if folds == results["folds_done"] else None,
        "fold_train_minutes": [fold_minutes(run / f"fold{k}" / "metrics.jsonl") for k in folds],
    }


def key(r: dict) -> tuple[str, str, str]:
    """A table row's identity: variant, stage and autocast (rows from before it was recorded: bf16)."""
    return r["variant"], r["stage"], r.get("precision", "bf16")


def fold_minutes(path: Path) -> float:
    """A fold's training time: the sum of its epochs' seconds (across resumes), in minutes."""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return sum(r["seconds"] for r in records) / 60


def fold_train_minutes(r: dict) -> float:
    """A row's mean training minutes per fold (rows tabulated before that was recorded: the
    folds' whole seconds, evaluation included)."""
    if "fold_train_minutes" in r:
        return float(np.mean(r["fold_train_minutes"]))
    return float(np.mean(r["fold_seconds"])) / 60


def current_description(r: dict) -> str:
    """A row's variant described by its YAML today, or by the row where the file is gone."""
    path = RECIPES / f"{r['variant']}.yaml"
    return describe(path) if path.exists() else r["description"]


def markdown(rows: list[dict]) -> str:
    head = (
        "| variant | stage | folds | autocast | OOF acc | OOF AUC | test AUC | test acc@0.5 | sens@0.5 | spec@0.5 "
        "| thr (OOF) | test acc@thr | sens@thr | spec@thr | single-fold test AUC | min/fold |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        a, b = r["test_at_0.5"], r["test_at_oof_threshold"]
        lines.append(
            f"| {r['variant']} | {r['stage']} | {len(r['folds'])} | {key(r)[2]} | "
            f"{r['oof']['accuracy']:.3f} | "
            f"{r['oof']['roc_auc']:.3f} | **{r['test_auc']:.3f}** | {a['accuracy']:.3f} | {a['sensitivity']:.3f} | "
            f"{a['specificity']:.3f} | {r['oof_threshold']:.2f} | **{b['accuracy']:.3f}** | {b['sensitivity']:.3f} | "
            f"{b['specificity']:.3f} | {' / '.join(f'{v:.3f}' for v in r['test_auc_per_fold'])} | "
            f"{fold_train_minutes(r):.0f} |"
        )
    # The legend describes each recipe file as it stands (a row keeps the text it was tabulated with).
    variants = {r["variant"]: current_description(r) for r in rows}
    descriptions = "\n".join(f"- **{name}**: {text}" for name, text in variants.items())
    return head + "\n".join(lines) + "\n\n" + descriptions + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="dataset root with train/ and test/")
    p.add_argument("--stage", choices=sorted(STAGES), default="screen", help="screen: folds 0-1; final: all 5")
    p.add_argument("--variants", nargs="+", default=None, help="recipe names (default: every YAML, sorted)")
    p.add_argument("--processes", type=int, default=2, help="training processes (one fold each at a time)")
    p.add_argument("--runs-dir", default="runs/recipes", help="where the runs go")
    p.add_argument(
        "--mixed-precision",
        choices=("no", "bf16", "fp16"),
        default="bf16",
        help="autocast of every variant (the study's table: bf16; 'no' on a CPU without AVX-512 BF16)",
    )
    p.add_argument(
        "--results-dir", default=str(STUDY), help="where results.{md,json} go (default: this study's folder)"
    )
    p.add_argument("--table-only", action="store_true", help="tabulate finished runs, train nothing")
    args = p.parse_args(argv)
    names = args.variants or sorted(f.stem for f in RECIPES.glob("*.yaml"))
    missing = [n for n in names if not (RECIPES / f"{n}.yaml").exists()]
    if missing:
        p.error(f"no recipe file for {missing} in {RECIPES}")
    runs = ROOT / args.runs_dir
    runs.mkdir(parents=True, exist_ok=True)
    results = ROOT / args.results_dir
    results.mkdir(parents=True, exist_ok=True)
    study = results / "results.json"
    for name in names:
        out = runs / f"{name}-{args.stage}"
        final = runs / f"{name}-final"
        if args.stage == "screen" and not (out / "results.json").exists() and (final / "results.json").exists():
            out, folds = final, SCREEN_FOLDS  # its folds 0-1 are the screening run
        else:
            folds = None
        if not (out / "results.json").exists() and not args.table_only:
            started = time.monotonic()
            print(f"training {name} ({args.stage}) -> {out}", flush=True)
            train(name, args.stage, args.data_dir, out, args.processes, args.mixed_precision)
            print(f"  done in {(time.monotonic() - started) / 60:.1f} min", flush=True)
        if (out / "results.json").exists():
            # Read the table afresh: another study process may have added rows meanwhile.
            table = {key(r): r for r in (json.loads(study.read_text()) if study.exists() else [])}
            new = row(name, args.stage, out, folds)
            table[key(new)] = new
            rows = sorted(table.values(), key=lambda r: (r["stage"] != "final", r["variant"]))
            atomic_write_json(study, rows)
            atomic_write_text(results / "results.md", markdown(rows))
    print((results / "results.md").read_text() if study.exists() else "no finished runs yet")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
