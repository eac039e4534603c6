#!/usr/bin/env python
"""Evaluate a trained run's fold ensemble again, predict new images with it, or compare runs.

python evaluate.py runs/NAME                        # test split of the run's data dir
python evaluate.py runs/NAME --data-dir PATH/chest_xray --split test
python evaluate.py runs/NAME --threshold-policy sensitivity:0.95   # another operating point, no retraining
python evaluate.py runs/NAME --images a.jpeg b.png some_dir/ --out preds.csv
python evaluate.py --compare runs/A runs/B --out runs/comparison  # runs/comparison.md and .csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pneumo import console
from pneumo.bootstrap import RESAMPLES
from pneumo.clinical import SALIENCY_IMAGES
from pneumo.config import HelpFormatter
from pneumo.errors import PneumoError
from pneumo.evaluation import evaluate_run, predict_images, split_tables
from pneumo.threshold import parse_policy


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument("run_dir", type=str, nargs="?", default=None, help="a run directory written by train.py")
    p.add_argument("--data-dir", type=str, default=None, help="dataset root (default: the one the run trained on)")
    p.add_argument("--split", type=str, default="test", help="split folder to evaluate")
    p.add_argument("--images", nargs="+", default=None, help="image files or folders to predict instead of a split")
    p.add_argument(
        "--out",
        type=str,
        default=None,
        help="CSV for --images (default RUN_DIR/image_predictions.csv); with --compare, the stem of the "
        ".md and .csv tables (default ./comparison)",
    )
    p.add_argument("--compare", nargs="+", default=None, metavar="RUN", help="compare these finished runs in one table")
    p.add_argument(
        "--threshold-policy",
        type=str,
        default=None,
        help="operating point to choose on the run's out-of-fold predictions (youden, balanced, sensitivity:X, "
        "specificity:X, fixed:X; default: the run's own)",
    )
    p.add_argument(
        "--bootstrap-resamples", type=int, default=RESAMPLES, help="patient-bootstrap resamples for the 95%% CIs"
    )
    p.add_argument(
        "--saliency-images",
        type=int,
        default=SALIENCY_IMAGES,
        help="Grad-CAM figures of up to N misclassified and N random images of the split (0: none)",
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
    if bool(args.run_dir) == bool(args.compare):
        raise PneumoError("give one run directory, or --compare RUN [RUN ...] (not both)")
    if args.batch_size < 1:
        raise PneumoError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.threads < 0:
        raise PneumoError(f"--threads {args.threads}: must be >= 0 (0 = automatic)")
    if args.bootstrap_resamples < 1000:
        raise PneumoError(f"--bootstrap-resamples {args.bootstrap_resamples}: use at least 1000 for 95% intervals")
    if args.saliency_images < 0:
        raise PneumoError(f"--saliency-images {args.saliency_images}: must be >= 0 (0 = none)")
    if args.threshold_policy:
        parse_policy(args.threshold_policy)
    if args.out and not (args.images or args.compare):
        raise PneumoError(
            "--out is for --images predictions or --compare tables; a split's results go to RUN_DIR/evaluation/SPLIT/"
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        validate(args)
        if args.compare:
            from pneumo.compare import compare_runs

            runs = [Path(d).expanduser().resolve() for d in args.compare]
            table, written = compare_runs(runs, Path(args.out or "comparison"), args.split)
            console.console.print(table)
            console.log(f"comparison: {', '.join(str(p) for p in written)}")
            return 0
        run_dir = Path(args.run_dir).expanduser().resolve()
        if args.images:
            predict_images(run_dir, args)
        else:
            section = evaluate_run(run_dir, args)
            for table in split_tables(run_dir.name, section):
                console.console.print(table)
    except PneumoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
