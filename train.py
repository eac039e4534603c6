#!/usr/bin/env python
"""Train one timm model per cross-validation fold, folds in parallel, and evaluate the ensemble.

    python train.py                                   # built-in synthetic data, one process
    python train.py --data-dir PATH/chest_xray --output-dir runs/r18
    accelerate launch --num_processes 2 train.py --data-dir PATH/chest_xray   # 2 GPUs: folds in parallel
    accelerate launch --config_file accelerate_configs/cpu_2proc.yaml train.py  # 2 CPU processes

SIGTERM/SIGUSR1 stop it cleanly (state saved, exit status 75); running it again resumes.
Installed as a package, `pneumo-train` is the same command (pneumo/train_cli.py).

See README.md for multi-node and SLURM recipes.
"""

import sys

from pneumo.train_cli import main

if __name__ == "__main__":
    sys.exit(main())
