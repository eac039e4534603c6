#!/usr/bin/env python
"""Evaluate a trained run's fold ensemble again, or predict new images with it.

python evaluate.py runs/NAME                        # test split of the run's data dir
python evaluate.py runs/NAME --data-dir PATH/chest_xray --split test
python evaluate.py runs/NAME --images a.jpeg b.png some_dir/ --out preds.csv
python evaluate.py runs/NAME --report               # (re)write runs/NAME/report/ from the run's files
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pneumo import console
from pneumo.config import HelpFormatter
from pneumo.distributed import available_cpus
from pneumo.errors import PneumoError
from pneumo.evaluation import evaluate_run, predict_images
from pneumo.report import metrics_table
from pneumo.report_site import run_pixels, write_report
from pneumo.rundir import read_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument("run_dir", type=str, help="a run directory written by train.py")
    p.add_argument("--data-dir", type=str, default=None, help="dataset root (default: the one the run trained on)")
    p.add_argument("--split", type=str, default="test", help="split folder to evaluate")
    p.add_argument("--images", nargs="+", default=None, help="image files or folders to predict instead of a split")
    p.add_argument("--out", type=str, default=None, help="CSV for --images (default RUN_DIR/image_predictions.csv)")
    p.add_argument(
        "--report",
        action="store_true",
        help="write RUN_DIR/report/ (figures, report.html, report.md) from the run's files instead of evaluating",
    )
    p.add_argument("--batch-size", type=int, default=64, help="inference batch size")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=None, help="default: as trained")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: all of this process's CPUs)")
    p.add_argument("--cache-dir", type=str, default=None, help="decode cache location (default as train.py)")
    p.add_argument("--no-cache", action="store_true", help="decode images directly, without the cache")
    p.add_argument("--workers", type=int, default=-1, help="decode processes (-1: all CPUs)")
    p.add_argument(
        "--on-bad-image", choices=("error", "skip"), default="error", help="unreadable images: stop, or skip"
    )
    return p


def validate(args: argparse.Namespace) -> None:
    """Fail fast, before loading models or data, on values that cannot work; one clear line each."""
    if args.batch_size < 1:
        raise PneumoError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.threads < 0:
        raise PneumoError(f"--threads {args.threads}: must be >= 0 (0 = automatic)")
    if args.report and (args.images or args.out):
        raise PneumoError("--report rewrites RUN_DIR/report/ from the run's files; run --images separately")
    if args.out and not args.images:
        raise PneumoError("--out is for --images predictions; a split's results go to RUN_DIR/evaluation/SPLIT/")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_dir = Path(args.run_dir).expanduser().resolve()
    try:
        validate(args)
        if args.report:
            workers = args.workers if args.workers >= 0 else available_cpus()
            pixels = run_pixels(read_config(run_dir), cache_dir=args.cache_dir, no_cache=args.no_cache, workers=workers)
            console.log(f"report: {write_report(run_dir, pixels)}")
        elif args.images:
            predict_images(run_dir, args)
        else:
            section = evaluate_run(run_dir, args)
            rows = [(f"fold {k}", [m]) for k, m in section["folds"].items()]
            rows += [("mean ± std", [section["fold_mean_std"]]), ("ensemble", [section["ensemble"]])]
            console.console.print(metrics_table(f"{run_dir.name} on {args.split}", [args.split], rows))
    except PneumoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
