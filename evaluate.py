#!/usr/bin/env python
"""Evaluate a trained run's fold ensemble again, or predict new images with it.

python evaluate.py runs/NAME                                   # test split of the run's data dir
python evaluate.py runs/NAME --data-dir EXTERNAL --split test  # EXTERNAL/test/{NORMAL,PNEUMONIA} only
python evaluate.py runs/NAME --split val --allow-pool-split    # a pool split: refused without the flag
python evaluate.py runs/NAME --report                          # (re)write runs/NAME/report/ from the run's files
python evaluate.py runs/NAME --images a.jpeg b.png some_dir/ --out preds.csv

Installed as a package, `pneumo-evaluate` is the same command (pneumo/evaluate_cli.py).
"""

import sys

from pneumo.evaluate_cli import main

if __name__ == "__main__":
    sys.exit(main())
