#!/usr/bin/env python
"""Training-step speed per autocast dtype on this machine: is bf16 (or fp16) worth it here?

    .venv/bin/python benchmarks/precision.py                      # resnet18, 64 px, batch 32, 1 thread
    .venv/bin/python benchmarks/precision.py --sizes 64 128 --threads 2

The model's training step alone (forward under autocast, backward, AdamW) on random
channels-last batches in memory, for float32 and each reduced precision, alternating in
blocks so that drift on a shared machine hits every dtype alike. On a CPU, bf16 is fast only
where oneDNN runs it natively (AVX-512 BF16 or AMX): `native_bf16` says which this is.
Prints a table and writes `--json` (default benchmarks/results/precision-<device>.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import timm
import torch

ROOT = Path(__file__).resolve().parent.parent
DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def step_rate(model, opt, x, y, dtype, steps: int) -> float:
    """Images per second of `steps` training steps under autocast(`dtype`)."""
    device = x.device.type
    started = time.perf_counter()
    for _ in range(steps):
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return len(y) * steps / (time.perf_counter() - started)


def measure(size: int, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=2).to(device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch_size, 3, size, size, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (args.batch_size,), device=device)
    names = [n for n in args.dtypes if not (n == "fp16" and device.type == "cpu")]
    rates: dict[str, list[float]] = {n: [] for n in names}
    for n in names:  # warm-up: oneDNN / cuDNN pick their kernels per dtype
        step_rate(model, opt, x, y, DTYPES[n], args.warmup)
    for _ in range(args.blocks):
        for n in names:
            rates[n].append(step_rate(model, opt, x, y, DTYPES[n], args.steps))
    return {n: sum(v) / len(v) for n, v in rates.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18", help="timm model name")
    p.add_argument("--sizes", type=int, nargs="+", default=[64], help="image sizes")
    p.add_argument("--batch-size", type=int, default=32, help="batch size")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: one fold-parallel process of 2)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per block")
    p.add_argument("--blocks", type=int, default=2, help="alternating blocks per dtype")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per dtype first")
    p.add_argument("--dtypes", nargs="+", default=["no", "bf16", "fp16"], choices=sorted(DTYPES))
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--json", help="results file (default benchmarks/results/precision-<device>.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) if device.type == "cpu" else None
    rows = {size: measure(size, args, device) for size in args.sizes}
    print(f"{args.model}, batch {args.batch_size}, {args.threads} thread(s), {device}; native bf16: {native}")
    print(f"| img/s | {' | '.join(rows[args.sizes[0]])} | bf16 / float32 |")
    print(f"|---|{'---|' * (len(rows[args.sizes[0]]) + 1)}")
    for size, r in rows.items():
        ratio = r["bf16"] / r["no"] if "bf16" in r and "no" in r else float("nan")
        print(f"| {size} px | {' | '.join(f'{v:.1f}' for v in r.values())} | {ratio:.2f} |")
    out = Path(args.json or ROOT / "benchmarks" / "results" / f"precision-{device.type}.json")
    record = {
        "model": args.model,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native,
        "torch": torch.__version__,
        "images_per_second": {str(k): v for k, v in rows.items()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
