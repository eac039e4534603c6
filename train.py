#!/usr/bin/env python
"""Train one timm model per cross-validation fold, folds in parallel, and evaluate the ensemble.

    python train.py                                   # built-in synthetic data, one process
    python train.py --data-dir PATH/chest_xray --output-dir runs/r18
    accelerate launch --num_processes 2 train.py --data-dir PATH/chest_xray   # 2 GPUs: folds in parallel
    accelerate launch --cpu --num_processes 2 train.py --mixed-precision bf16 # 2 CPU processes

See README.md for multi-node and SLURM recipes.
"""

from __future__ import annotations

import sys

from pneumo.config import parse_args
from pneumo.errors import PneumoError
from pneumo.runner import run_training


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run_training(args)
    except PneumoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
