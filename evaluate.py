#!/usr/bin/env python
"""Evaluate a trained run's fold ensemble again, or predict new images with it.

python evaluate.py runs/NAME                        # test split of the run's data dir
python evaluate.py runs/NAME --data-dir PATH/chest_xray --split test
python evaluate.py runs/NAME --images a.jpeg b.png some_dir/ --out preds.csv

Installed as a package, `pneumo-evaluate` is the same command (pneumo/evaluate_cli.py).
"""

import sys

from pneumo.evaluate_cli import main

if __name__ == "__main__":
    sys.exit(main())
