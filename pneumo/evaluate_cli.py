"""`pneumo-evaluate` / `evaluate.py`: evaluate a trained run's fold ensemble again, or predict new images.

pneumo-evaluate runs/NAME                        # test split of the run's data dir
pneumo-evaluate runs/NAME --data-dir EXTERNAL --split test  # EXTERNAL/test/{NORMAL,PNEUMONIA} only
pneumo-evaluate runs/NAME --split val --allow-pool-split    # a pool split: refused without the flag
pneumo-evaluate runs/NAME --report                          # (re)write runs/NAME/report/ from the run's files
pneumo-evaluate runs/NAME --ensemble                        # results + ensemble + report after a SLURM fold array
pneumo-evaluate runs/NAME --images a.jpeg b.png some_dir/ --out preds.csv
pneumo-evaluate --compare runs/A runs/B --out runs/comparison  # runs/comparison.md and .csv
pneumo-evaluate runs/NAME --adapt-on test                   # test adapted to its own images: evaluation/test-adapted/
pneumo-evaluate runs/NAME --data-dir SITE --adapt-on site_images/ --split test  # adapt on a folder, evaluate SITE/test
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from pneumo.config import HelpFormatter
from pneumo.evaluation.adapt import METHODS, MIN_IMAGES
from pneumo.evaluation.clinical import SALIENCY_IMAGES
from pneumo.evaluation.evaluate import EvalSpec, evaluate_run, predict_images, split_tables
from pneumo.flags import ArgumentParser, integer, threshold_policy
from pneumo.metrics.bootstrap import RESAMPLES
from pneumo.models.inference import TTA_VIEWS
from pneumo.report.model_card import write_model_card
from pneumo.report.site import run_pixels, write_report
from pneumo.utils import console
from pneumo.utils.errors import PneumoError
from pneumo.utils.processes import available_cpus
from pneumo.utils.run_files import read_config


def build_parser() -> argparse.ArgumentParser:
    """The evaluate flags; every flag documented, every value checked by its type or choices."""
    p = ArgumentParser(
        description="Evaluate a trained run's fold ensemble again, or predict new images with it.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("run_dir", type=str, nargs="?", default=None, help="a run directory written by train.py")
    p.add_argument("--data-dir", type=str, default=None, help="dataset root (default: the one the run trained on)")
    p.add_argument(
        "--split",
        type=str,
        default=None,
        help="split folder to evaluate (only DATA_DIR/SPLIT is read; it may be the only folder there); default "
        "test (with --adapt-on SPLIT: that split), none with --threshold-policy alone",
    )
    p.add_argument(
        "--allow-pool-split",
        action="store_true",
        help="evaluate a split of the run's own cross-validation pool anyway (labelled in-pool: optimistic)",
    )
    p.add_argument("--images", nargs="+", default=None, help="image files or folders to predict instead of a split")
    p.add_argument(
        "--out",
        type=str,
        default=None,
        help="CSV for --images (default RUN_DIR/image_predictions.csv); with --compare, the stem of the "
        ".md and .csv tables (default ./comparison)",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="write RUN_DIR/report/ (figures, report.html, report.md) from the run's files instead of evaluating",
    )
    p.add_argument(
        "--ensemble",
        action="store_true",
        help="build what the end of training writes (results.json, the fold ensemble on the evaluation splits, "
        "clinical evaluation, summary, report) from the run's finished folds: the last step after a SLURM fold "
        "array (train.py --no-ensemble); every fold of the run must be done",
    )
    p.add_argument("--compare", nargs="+", default=None, metavar="RUN", help="compare these finished runs in one table")
    p.add_argument(
        "--threshold-policy",
        type=threshold_policy,
        default=None,
        help="change the run's decision: the operating point chosen on its out-of-fold predictions (fixed:X, youden, "
        "balanced, prior, sensitivity:X, specificity:X); rewrites results.json, every pred column, the summary and "
        "the report, and records it in config.yaml (default: keep the run's own)",
    )
    p.add_argument(
        "--adapt-on",
        type=str,
        default=None,
        metavar="DIR_OR_SPLIT",
        help="adapt the fold models and the decision to a new site, label-free, before evaluating: a split of the "
        "data dir (e.g. test) or any folder of the site's images (searched recursively; class folders are ignored, "
        f"no label is read; at least {MIN_IMAGES} images); writes evaluation/SPLIT-adapted/ (SPLIT defaults to "
        "DIR_OR_SPLIT when it is a split, else test); the checkpoints are not changed",
    )
    p.add_argument(
        "--adapt",
        choices=tuple(METHODS),
        default=None,
        help="with --adapt-on: adabn re-estimates every BatchNorm layer's statistics on the site's images (Li et al. "
        "2016); prior estimates the site's positive-class prior by EM on the ensemble's scores (Saerens et al. 2002) "
        "and moves a prior-dependent decision (fixed:X, prior; youden, balanced, sensitivity:X and specificity:X "
        "keep their threshold); both: adabn, then prior on the adapted scores (default: both)",
    )
    p.add_argument(
        "--bootstrap-resamples",
        type=integer(1000, note=" for 95%% intervals"),
        default=RESAMPLES,
        help="patient-bootstrap resamples for the 95%% CIs",
    )
    p.add_argument(
        "--saliency-images",
        type=integer(0, note=" (0 = none)"),
        default=SALIENCY_IMAGES,
        help="Grad-CAM figures of up to N misclassified and N random images of the split (0: none)",
    )
    p.add_argument(
        "--tta",
        choices=tuple(TTA_VIEWS),
        default=None,
        help="test-time augmentation (default: as trained); another one than the run's writes "
        "evaluation/SPLIT-tta-TTA/, its operating point still chosen on the run's out-of-fold predictions",
    )
    p.add_argument("--batch-size", type=integer(1), default=64, help="inference batch size")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=None, help="default: as trained")
    p.add_argument(
        "--threads",
        type=integer(0, note=" (0 = automatic)"),
        default=0,
        help="CPU threads (0: all of this process's CPUs)",
    )
    p.add_argument("--cache-dir", type=str, default=None, help="decode cache location (default as train.py)")
    p.add_argument("--no-cache", action="store_true", help="decode images directly, without the cache")
    p.add_argument(
        "--workers", type=integer(-1, note=" (-1 = automatic)"), default=-1, help="decode processes (-1: all CPUs)"
    )
    p.add_argument(
        "--on-bad-image", choices=("error", "skip"), default="error", help="unreadable images: stop, or skip"
    )
    return p


def check_together(args: argparse.Namespace) -> None:
    """Refuse flags that are fine alone but not together, before loading models or data."""
    if bool(args.run_dir) == bool(args.compare):
        raise PneumoError("give one run directory, or --compare RUN [RUN ...] (not both)")
    if args.ensemble and (args.images or args.out or args.compare or args.report or args.data_dir):
        raise PneumoError("--ensemble rebuilds the run's own results from its folds; run other modes separately")
    if args.report and (args.images or args.out or args.compare):
        raise PneumoError(
            "--report rewrites RUN_DIR/report/ from the run's files; run --images or --compare separately"
        )
    if args.adapt_on and (args.images or args.compare or args.report or args.ensemble or args.threshold_policy):
        raise PneumoError(
            "--adapt-on evaluates a split with models adapted to a site; run --images, --compare, --report, "
            "--ensemble or --threshold-policy separately"
        )
    if args.adapt and not args.adapt_on:
        raise PneumoError("--adapt chooses how to adapt to the images of --adapt-on DIR_OR_SPLIT; give --adapt-on too")
    if args.out and not (args.images or args.compare):
        raise PneumoError(
            "--out is for --images predictions or --compare tables; a split's results go to RUN_DIR/evaluation/SPLIT/"
        )


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation CLI; returns the exit status (2: bad input)."""
    try:
        args = build_parser().parse_args(argv)
        check_together(args)
        if args.compare:
            from pneumo.evaluation.compare import compare_runs

            runs = [Path(d).expanduser().resolve() for d in args.compare]
            table, written = compare_runs(runs, Path(args.out or "comparison"), args.split or "test")
            console.console.print(table)
            console.log(f"comparison: {', '.join(str(p) for p in written)}")
            return 0
        run_dir = Path(args.run_dir).expanduser().resolve()
        overrides = {"cache_dir": args.cache_dir, "no_cache": args.no_cache, "workers": args.workers}
        if args.ensemble or args.threshold_policy:
            from pneumo.runner import ensemble_run, record_policy

            if args.threshold_policy:
                record_policy(run_dir, str(args.threshold_policy))
            ensemble_run(run_dir, {**overrides, "threads": args.threads})
            if args.ensemble or not (args.split or args.images or args.report):
                return 0
        spec = EvalSpec(**{f.name: getattr(args, f.name) for f in fields(EvalSpec)})
        if args.report:
            workers = args.workers if args.workers >= 0 else available_cpus()
            pixels = run_pixels(read_config(run_dir), cache_dir=args.cache_dir, no_cache=args.no_cache, workers=workers)
            console.log(f"report: {write_report(run_dir, pixels)}")
        elif args.images:
            predict_images(run_dir, spec)
        else:
            section = evaluate_run(run_dir, spec)
            for table in split_tables(run_dir.name, section):
                console.console.print(table)
            console.log(f"model card: {write_model_card(run_dir)}")
    except PneumoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
