#!/usr/bin/env python
"""How far a fold trained data-parallel on a group of processes lands from the same fold trained
by one process, next to how far a change of seed moves it.

    python benchmarks/dp_tolerance.py --data-dir ../shared/data/chest_xray --image-size 64 --epochs 5

Trains one fold (--fold, default 0) three times with the product's recipe (the defaults, or
--config, at --image-size): seed S and seed S+1 on 1 process each (side by side), then seed S on
a group of --group processes (the fold plan puts a single fold on every launched process). For each pair it reports the
relative L2 distance of the learnable weights of the kept checkpoint and the differences of the
fold's validation metrics (loss, ROC-AUC, accuracy) and of its test-split metrics. The grouped
fold is within tolerance when its distance from the 1-process fold is of the order of a seed
change or smaller: data parallelism on CPU differs only in batch-norm statistics (each member
normalises over its own rows) and dropout draws. Prints a table and writes JSON (default
benchmarks/results/dp-tolerance-<device>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from launching import launch  # noqa: E402

from pneumo.models.checkpoint import load_weights_file  # noqa: E402


def weights(run: Path, fold: int) -> dict[str, torch.Tensor]:
    """The kept checkpoint's learnable tensors (floating, not batch-norm running statistics)."""
    tensors, _ = load_weights_file(run / f"fold{fold}" / "best.safetensors")
    return {k: v.double() for k, v in tensors.items() if v.is_floating_point() and "running_" not in k}


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """||a - b|| / ||a|| over all tensors together."""
    num = sum(float((a[k] - b[k]).pow(2).sum()) for k in a)
    den = sum(float(a[k].pow(2).sum()) for k in a)
    return (num / den) ** 0.5


def metrics(run: Path, fold: int) -> dict[str, float]:
    r = json.loads((run / f"fold{fold}" / "result.json").read_text())
    out = {f"val_{k}": r["val"][k] for k in ("loss", "roc_auc", "accuracy")}
    for split, m in r["splits"].items():
        out.update({f"{split}_{k}": m[k] for k in ("roc_auc", "accuracy")})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=None, help="dataset root (default: the built-in synthetic set)")
    p.add_argument("--config", default=None, help="recipe YAML (default: train.py's defaults)")
    p.add_argument("--fold", type=int, default=0, help="the fold trained")
    p.add_argument("--group", type=int, default=2, help="processes of the data-parallel group")
    p.add_argument("--seed", type=int, default=0, help="seed S (the seed-change reference uses S+1)")
    p.add_argument("--epochs", type=int, default=5, help="epochs")
    p.add_argument("--image-size", type=int, default=None, help="image size (default: the recipe's)")
    p.add_argument("--mixed-precision", default="no", choices=("no", "bf16", "fp16"), help="autocast dtype")
    p.add_argument("--runs-dir", default=None, help="where the runs go (default: a temporary directory)")
    p.add_argument("--json", default=None, help="results file")
    a = p.parse_args()

    runs = Path(a.runs_dir or tempfile.mkdtemp(prefix="pneumo-dp-tolerance-"))
    runs.mkdir(parents=True, exist_ok=True)
    common = ["--train-folds", str(a.fold), "--epochs", str(a.epochs), "--mixed-precision", a.mixed_precision]
    common += ["--saliency-images", "0", "--no-report", "--overwrite", "--threads", "1"]
    common += ["--data-dir", a.data_dir] if a.data_dir else []
    common += ["--config", a.config] if a.config else []
    common += ["--image-size", str(a.image_size)] if a.image_size else []
    variants = {"alone": (1, a.seed), "group": (a.group, a.seed), "alone_next_seed": (1, a.seed + 1)}

    def run(name: str) -> float:
        processes, seed = variants[name]
        args = [*common, "--seed", str(seed), "--output-dir", str(runs / name)]
        return round(launch(processes, args, runs / f"{name}.log"), 1)

    # The two one-process folds side by side (as a 2-process launch trains them), then the group.
    with ThreadPoolExecutor(2) as pool:
        seconds = dict(zip(("alone", "alone_next_seed"), pool.map(run, ("alone", "alone_next_seed"))))
    seconds["group"] = run("group")
    w = {name: weights(runs / name, a.fold) for name in variants}
    m = {name: metrics(runs / name, a.fold) for name in variants}
    pairs = {"group vs alone": ("group", "alone"), "next seed vs alone": ("alone_next_seed", "alone")}
    compared = {
        label: {
            "weights_relative_l2": round(distance(w[y], w[x]), 5),
            **{k: round(m[x][k] - m[y][k], 5) for k in m[y]},
        }
        for label, (x, y) in pairs.items()
    }
    device = f"cpu ({platform.machine()}, {os.cpu_count()} CPUs)"
    result = {
        "device": device,
        "command": " ".join(sys.argv),
        "fold": a.fold,
        "group": a.group,
        "epochs": a.epochs,
        "image_size": a.image_size or "the recipe's",
        "data_dir": a.data_dir or "built-in synthetic",
        "config": a.config or "train.py defaults",
        "metrics": m,
        "launch_seconds": seconds,
        "differences": compared,
    }
    keys = list(m["alone"])
    print(f"\nfold {a.fold}, {a.epochs} epochs, {result['config']}, data {result['data_dir']}")
    print(f"{'':<20}" + "".join(f"{k:>14}" for k in keys))
    for name in variants:
        print(f"{name:<20}" + "".join(f"{m[name][k]:>14.4f}" for k in keys))
    print()
    for label, c in compared.items():
        print(
            f"{label:<20} weights rel. L2 {c['weights_relative_l2']:.4f}; "
            + ", ".join(f"{k} {c[k]:+.4f}" for k in keys)
        )
    path = Path(a.json or ROOT / "benchmarks" / "results" / "dp-tolerance-cpu.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
