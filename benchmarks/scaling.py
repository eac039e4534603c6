#!/usr/bin/env python
"""Fold-parallel scaling: wall time of the fold phase against the ideal (total fold work / processes).

    python benchmarks/scaling.py                      # 2 CPU processes x 5 folds, both fold plans
    python benchmarks/scaling.py --processes 4 --device-note "4 x H100"   # on a GPU node

Launches train.py three times with N processes into fresh run directories, same data and recipe:
the round-robin rule (fold i on process i mod N), the grouped plan, and the grouped plan with its
CPU groups on gloo's all-reduce instead of shared memory (`PNEUMO_SHM_DISABLE=1`). From each
fold's result.json (its seconds and when it was written) it takes:
- fold work T: the mean time of a fold trained alone on one process (folds trained alone while
  the other processes train theirs, so contention is counted),
- wall: first fold start to last fold end (data preparation and the ensemble step excluded),
- ideal: folds x T / N, and the ratio wall / ideal (1.0: no process ever idle);
- a grouped fold's data-parallel efficiency per doubling of its group, measured, which then
  predicts the ratio of each plan for other process counts (4, 8, 10).
Prints a table and writes JSON (default benchmarks/results/scaling-<device>.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from launching import launch  # noqa: E402

from pneumo.training.plan import DP_EFFICIENCY, make_plan  # noqa: E402


def fold_times(run: Path, folds: int) -> list[dict]:
    """Each fold's start, end (seconds, epoch time) and process count, from its result.json (the
    run's end rewrites it at the run's decision, so its own `finished_at`, not its mtime)."""
    out = []
    for k in range(folds):
        path = run / f"fold{k}" / "result.json"
        result = json.loads(path.read_text())
        end = result["finished_at"]
        out.append(
            {
                "fold": k,
                "start": end - result["seconds"],
                "end": end,
                "seconds": result["seconds"],
                "processes": result.get("processes", 1),
            }
        )
    return out


def summarise(times: list[dict], processes: int) -> dict:
    alone = [t["seconds"] for t in times if t["processes"] == 1]
    fold_work = sum(alone) / len(alone)
    wall = max(t["end"] for t in times) - min(t["start"] for t in times)
    ideal = len(times) * fold_work / processes
    grouped = [t for t in times if t["processes"] > 1]
    efficiency = None
    if grouped:
        # A fold on g processes takes T / (g * e^log2 g): solve for e, averaged over grouped folds.
        es = [(fold_work / (t["processes"] * t["seconds"])) ** (1 / math.log2(t["processes"])) for t in grouped]
        efficiency = sum(es) / len(es)
    return {
        "fold_work_seconds": round(fold_work, 2),
        "wall_seconds": round(wall, 2),
        "ideal_seconds": round(ideal, 2),
        "ratio": round(wall / ideal, 4),
        "grouped_folds": [{"fold": t["fold"], "processes": t["processes"], "seconds": t["seconds"]} for t in grouped],
        "efficiency_per_doubling": None if efficiency is None else round(efficiency, 4),
        "folds": times,
    }


def predictions(folds: int, efficiency: float, counts: tuple[int, ...] = (2, 4, 8, 10)) -> list[dict]:
    """Each plan's predicted wall / ideal for other process counts, with a fold on g processes
    taking 1 / (g * efficiency^log2 g) fold-times."""
    rows = []
    for n in counts:
        grouped = make_plan(list(range(folds)), n, efficiency)
        robin = make_plan(list(range(folds)), n, efficiency, grouped=False)
        rows.append(
            {
                "processes": n,
                "round_robin": round(robin.wall() / robin.ideal(), 3),
                "grouped": round(grouped.wall() / grouped.ideal(), 3),
                "plan": grouped.describe(),
            }
        )
    return rows


# (name, --fold-plan, environment): the grouped plan as shipped, and with gloo's all-reduce for its groups.
LAUNCHES = (
    ("round-robin", "round-robin", {}),
    ("grouped", "grouped", {}),
    ("grouped-gloo", "grouped", {"PNEUMO_SHM_DISABLE": "1"}),
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--processes", type=int, default=2, help="processes per launch")
    p.add_argument("--folds", type=int, default=5, help="folds (all trained)")
    p.add_argument("--data-dir", default=None, help="dataset root (default: the built-in synthetic set)")
    p.add_argument("--model", default="resnet18", help="timm model")
    p.add_argument("--image-size", type=int, default=64, help="image size")
    p.add_argument("--epochs", type=int, default=6, help="epochs per fold")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (global, per fold)")
    p.add_argument("--mixed-precision", default="no", choices=("no", "bf16", "fp16"), help="autocast dtype")
    p.add_argument("--runs-dir", default=None, help="where the three runs go (default: a temporary directory)")
    p.add_argument("--device-note", default=None, help="what ran it, for the JSON (default: this CPU)")
    p.add_argument("--json", default=None, help="results file (default benchmarks/results/scaling-<device>.json)")
    a = p.parse_args()

    runs = Path(a.runs_dir or tempfile.mkdtemp(prefix="pneumo-scaling-"))
    runs.mkdir(parents=True, exist_ok=True)
    common = [
        "--model",
        a.model,
        "--image-size",
        str(a.image_size),
        "--epochs",
        str(a.epochs),
        "--batch-size",
        str(a.batch_size),
        "--folds",
        str(a.folds),
        "--mixed-precision",
        a.mixed_precision,
        "--saliency-images",
        "0",
        "--no-report",
        "--overwrite",
    ]
    if a.data_dir:
        common += ["--data-dir", a.data_dir]
    measured = {}
    for name, plan, env in LAUNCHES:
        out = runs / name
        args = [*common, "--output-dir", str(out), "--fold-plan", plan]
        seconds = launch(a.processes, args, runs / f"{name}.log", env)
        measured[name] = {**summarise(fold_times(out, a.folds), a.processes), "launch_seconds": round(seconds, 1)}
    efficiency = measured["grouped"]["efficiency_per_doubling"] or DP_EFFICIENCY
    device = a.device_note or f"cpu ({platform.machine()}, {os.cpu_count()} CPUs)"
    result = {
        "device": device,
        "command": " ".join(sys.argv),
        "processes": a.processes,
        "folds": a.folds,
        "recipe": {k: getattr(a, k) for k in ("model", "image_size", "epochs", "batch_size", "mixed_precision")},
        "data_dir": a.data_dir or "built-in synthetic",
        "measured": measured,
        "predicted_with_measured_efficiency": predictions(a.folds, efficiency),
        "predicted_with_assumed_efficiency": predictions(a.folds, DP_EFFICIENCY),
    }
    print(f"\n{a.processes} processes x {a.folds} folds on {device}; {a.model} {a.image_size} px, {a.epochs} epochs")
    print(f"{'plan':<12} {'fold work s':>11} {'wall s':>8} {'ideal s':>8} {'wall/ideal':>10} {'grouped eff':>11}")
    for plan, m in measured.items():
        eff = m["efficiency_per_doubling"]
        print(
            f"{plan:<12} {m['fold_work_seconds']:>11.1f} {m['wall_seconds']:>8.1f} {m['ideal_seconds']:>8.1f} "
            f"{m['ratio']:>10.3f} {'' if eff is None else f'{eff:.3f}':>11}"
        )
    print(
        f"\ngrouped folds: {measured['grouped']['grouped_folds']}; data-parallel efficiency per doubling "
        f"{efficiency:.3f} (measured)"
    )
    print(f"\npredicted wall/ideal (efficiency {efficiency:.3f} measured here; {DP_EFFICIENCY} assumed in brackets)")
    print(f"{'processes':>9} {'round-robin':>12} {'grouped':>16}  plan")
    for m, s in zip(result["predicted_with_measured_efficiency"], result["predicted_with_assumed_efficiency"]):
        print(f"{m['processes']:>9} {m['round_robin']:>12.3f} {m['grouped']:>8.3f} ({s['grouped']:.3f})  {m['plan']}")
    tag = "cpu" if a.device_note is None else a.device_note.replace(" ", "").lower()
    path = Path(a.json or ROOT / "benchmarks" / "results" / f"scaling-{tag}.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
