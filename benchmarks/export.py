#!/usr/bin/env python
"""What an exported ensemble costs: file size and CPU latency per image, onnxruntime and TorchScript
beside pneumo's own eager ensemble, in one run on one machine.

    python benchmarks/export.py runs/r18 --threads 2

Exports RUN as both formats (into a temporary folder), then times each path on random uint8
letterboxes at batch 1 and batch 32 (--repeats timed calls after --warmup untimed ones; the
median per call, divided by the batch size). The eager path is pneumo's inference
(`pneumo.models.inference.predict` and the ensemble mean) on the same fold models, in float32.
Each path's agreement with the eager one on the timed batch is printed too. Prints a table and
writes JSON (default benchmarks/results/export-cpu.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pneumo.export.bundle import load_bundle  # noqa: E402
from pneumo.export.export import eager_probability, export_run  # noqa: E402
from pneumo.export.formats import require  # noqa: E402

BATCHES = (1, 32)


def median_seconds(call: Callable[[], object], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def runners(paths: dict[str, Path], bundle, threads: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Each path as pixels -> P(positive), its session or module loaded once."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(paths["onnx"]), options, providers=["CPUExecutionProvider"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        module = torch.jit.load(str(paths["torchscript"]), map_location="cpu")

    def scripted(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(pixels))[0].numpy()

    return {
        "eager (pneumo)": lambda pixels: eager_probability(bundle, pixels),
        "onnxruntime": lambda pixels: session.run(["probability"], {"pixels": pixels})[0],
        "torchscript": scripted,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a finished run")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for every path")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "export-cpu.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        formats = (("onnx", ".onnx"), ("torchscript", ".pt"))
        files = {fmt: export_run(run_dir, fmt, Path(tmp) / f"ensemble{ext}") for fmt, ext in formats}
        bundle = load_bundle(run_dir)
        size = bundle.image_size
        paths = {fmt: e.path for fmt, e in files.items()}
        calls = runners(paths, bundle, args.threads)
        rng = np.random.default_rng(0)
        rows = []
        for name, call in calls.items():
            row = {"path": name, "file_mb": None, "max_abs_dp_vs_eager": 0.0}
            if name != "eager (pneumo)":
                fmt = "onnx" if name == "onnxruntime" else "torchscript"
                row["file_mb"] = round(paths[fmt].stat().st_size / 1e6, 2)
            for batch in BATCHES:
                pixels = rng.integers(0, 256, (batch, 1, size, size), dtype=np.uint8)
                seconds = median_seconds(lambda px=pixels, c=call: c(px), args.warmup, args.repeats)
                row[f"ms_per_image_b{batch}"] = round(1000 * seconds / batch, 3)
                diff = float(np.abs(np.asarray(call(pixels), dtype=np.float64) - calls["eager (pneumo)"](pixels)).max())
                row["max_abs_dp_vs_eager"] = max(row["max_abs_dp_vs_eager"], diff)
            rows.append(row)
    meta = bundle.meta
    record = {
        "run": str(run_dir),
        "model": meta["model"],
        "image_size": size,
        "folds": len(bundle.models),
        "tta": bundle.tta,
        "threads": args.threads,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}",
        "onnxruntime": require("onnxruntime").__version__,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],  # other jobs on the machine skew the times
        "rows": rows,
    }
    header = f"{'path':<16}{'file MB':>9}{'ms/img b1':>11}{'ms/img b32':>12}{'max|dP| vs eager':>18}"
    print(f"{meta['model']} x{len(bundle.models)} folds at {size} px, {args.threads} threads")
    print(header)
    for r in rows:
        mb = "-" if r["file_mb"] is None else f"{r['file_mb']:.1f}"
        print(
            f"{r['path']:<16}{mb:>9}{r['ms_per_image_b1']:>11.2f}{r['ms_per_image_b32']:>12.2f}"
            f"{r['max_abs_dp_vs_eager']:>18.1e}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
