#!/usr/bin/env python
"""Train one timm model per cross-validation fold, folds in parallel, and evaluate the ensemble.

    python train.py                                   # built-in synthetic data, one process
    python train.py --data-dir PATH/chest_xray --output-dir runs/r18
    accelerate launch --num_processes 2 train.py --data-dir PATH/chest_xray   # 2 GPUs: folds in parallel
    accelerate launch --config_file accelerate_configs/cpu_2proc.yaml train.py  # 2 CPU processes

SIGTERM/SIGUSR1 stop it cleanly (state saved, exit status 75); running it again resumes.

See README.md for multi-node and SLURM recipes.
"""

from __future__ import annotations

import sys

from pneumo.config import parse_args
from pneumo.errors import PneumoError
from pneumo.preempt import StopFlag, requeue_if_asked
from pneumo.runner import EXIT_STOPPED, run_training


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = StopFlag().install()
    try:
        status = run_training(args, stop)
    except PneumoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if status == EXIT_STOPPED:
        requeue_if_asked(stop)
    return status


if __name__ == "__main__":
    sys.exit(main())
