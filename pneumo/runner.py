"""The training job: prepare data and folds, train this process's folds, report the run."""

from __future__ import annotations

import json
import time
import traceback
from argparse import Namespace
from pathlib import Path

from rich.console import Group

from pneumo import rundir
from pneumo.config import validate
from pneumo.data.audit import audit, audit_table
from pneumo.data.dataset import check_folds, scan
from pneumo.data.overlap import check_overlap
from pneumo.data.prepare import decode_images, resolve_data_dir, unusable_images
from pneumo.data.splits import build_splits
from pneumo.evaluation.clinical import add_clinical, clinical_tables
from pneumo.evaluation.results import build_results, read_fold_results, summary_table
from pneumo.report.site import pixels_from, write_report
from pneumo.training.distributed import available_cpus, folds_for_process, make_accelerator, set_threads, wait_for
from pneumo.training.trainer import FoldEnv, train_fold
from pneumo.utils import console
from pneumo.utils.errors import NonFiniteLossError, PneumoError
from pneumo.utils.fsutil import atomic_write_json, check_writable, read_json
from pneumo.utils.run_files import AUDIT, OVERLAP, RESULT, SKIPPED, STATE, SUMMARY, fold_dir, folds_to_train

EXIT_OK = 0
EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped on request with state saved; run again to resume


def run_training(args: Namespace, should_stop=lambda: False) -> int:
    """Run (or resume) the whole job in this process; returns the exit status."""
    started = time.monotonic()
    validate(args)
    accelerator = make_accelerator(args.mixed_precision)
    rank, world, is_main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    console.set_process(rank, world)
    threads = set_threads(args.threads)
    data_dir, synthetic = resolve_data_dir(args.data_dir)
    config = {**vars(args), "data_dir": str(data_dir), "mixed_precision": accelerator.mixed_precision}
    run_dir = Path(args.output_dir).expanduser().resolve()
    mode = rundir.decide(run_dir, config, resume=args.resume, overwrite=args.overwrite)
    check_writable(run_dir, "--output-dir")
    if is_main:
        console.log(
            f"{world} process(es), device {accelerator.device}, {threads} thread(s) each, "
            f"mixed precision {accelerator.mixed_precision}; run directory {run_dir} ({mode})"
        )
        if synthetic:
            console.log(
                f"USING THE BUILT-IN SYNTHETIC DATASET at {data_dir}: generated images, not real X-rays. "
                "Pass --data-dir PATH/chest_xray for the real data.",
                style="bold red",
            )
    layout = scan(data_dir)
    if is_main and layout.ignored_note():
        console.log(layout.ignored_note())
    check_folds(layout, args.folds, keep_val_apart=args.keep_val_apart, by_patient=not args.no_group)
    decoded = decode_images(layout, args, args.workers if args.workers >= 0 else available_cpus())
    bad = unusable_images(layout, decoded, args.on_bad_image)
    splits = build_splits(layout, decoded, args)
    if is_main:
        audit_record = audit(decoded, splits.labels, splits.classes, splits.positive, splits.pool, splits.evals)
        if args.audit:
            console.console.print(audit_table(audit_record))
            atomic_write_json(run_dir / AUDIT, audit_record)
            console.log(f"audit: {run_dir / AUDIT}")
        for line in audit_record["warnings"]:
            console.warn(f"data audit: {line}")
    if args.audit:
        return EXIT_OK
    quiet = lambda message: None
    overlap = check_overlap(
        decoded, splits, args.on_overlap, console.log if is_main else quiet, console.warn if is_main else quiet
    )
    fingerprint = rundir.data_fingerprint(decoded.files, decoded.sha1)
    if mode == "resume":
        rundir.check_same_data(run_dir, fingerprint)
    if is_main:
        grouping = "duplicates" if args.no_group else "patient"
        extra = {"synthetic": synthetic, "skipped_images": len(bad), "device": rundir.describe(accelerator.device)}
        info = rundir.run_info(data_dir, fingerprint, world, extra)
        rundir.initialise(run_dir, mode, config, splits.folds_json(seed=args.seed, grouping=grouping), info)
        if bad:
            atomic_write_json(run_dir / SKIPPED, bad)
        atomic_write_json(run_dir / AUDIT, audit_record)
        atomic_write_json(run_dir / OVERLAP, overlap)
    accelerator.wait_for_everyone()

    env = FoldEnv(
        args,
        run_dir,
        accelerator.device,
        accelerator.autocast,
        accelerator.mixed_precision,
        args.workers if args.workers >= 0 else threads,
    )
    trained = folds_to_train(args)
    for fold in folds_for_process(trained, rank, world):
        out = fold_dir(run_dir, fold)
        if (out / RESULT).exists():
            status = read_json(out / RESULT)["status"]
            hint = "" if status == "done" else f" (delete {out} to train it again)"
            console.log(f"fold {fold}: already {status}, skipping{hint}")
            continue
        console.log(f"fold {fold}: training on process {rank}")
        try:
            if train_fold(fold, splits, decoded, env, should_stop) is None:
                console.log(f"fold {fold}: stopped; state saved, run the same command again to resume")
                return EXIT_STOPPED
        except NonFiniteLossError as exc:
            kept = "its last good epoch's checkpoint is kept" if (out / STATE).exists() else "it had no checkpoint yet"
            console.warn(f"fold {fold} failed: {exc}; {kept}; the other folds go on")
            atomic_write_json(out / RESULT, {"fold": fold, "status": "failed", "reason": str(exc)})
    if not is_main:
        return EXIT_OK

    results_files = [fold_dir(run_dir, k) / RESULT for k in trained]
    waiting = lambda missing: console.log(f"waiting for {len(missing)} fold(s) on other processes")
    if not wait_for(results_files, should_stop, on_wait=waiting):
        return EXIT_STOPPED
    fold_results = read_fold_results(run_dir, trained)
    if not any(r["status"] == "done" for r in fold_results):
        raise PneumoError(f"every fold failed; see {run_dir}/fold*/result.json")
    header = {
        "model": args.model,
        "data_dir": str(data_dir),
        "synthetic": synthetic,
        "image_size": args.image_size,
        "epochs": args.epochs,
        "n_folds": args.folds,
        "processes": world,
        "mixed_precision": accelerator.mixed_precision,
        "wall_seconds": round(time.monotonic() - started, 1),
        "overlap": overlap,
    }
    results = build_results(run_dir, fold_results, splits.classes, splits.positive, header)
    results = add_clinical(run_dir, results, config, decoded, accelerator.device)
    table = Group(summary_table(results), *clinical_tables(results["clinical"]))
    console.console.print(table)
    with console.console.capture() as captured:
        console.console.print(table)
    (run_dir / SUMMARY).write_text(captured.get(), encoding="utf-8")
    console.log(f"results: {run_dir / 'results.json'}  (wall time {header['wall_seconds']:.0f}s)")
    console.log(json.dumps({"oof_accuracy": results["oof"]["accuracy"], "oof_roc_auc": results["oof"]["roc_auc"]}))
    if args.report:
        report(run_dir, pixels_from(decoded))
    return EXIT_OK


def report(run_dir: Path, pixels) -> None:
    """Write the run's report; a failure here loses no training, so it is a warning with the retry command."""
    started = time.monotonic()
    try:
        page = write_report(run_dir, pixels)
    except Exception as exc:  # the run's results are already on disk
        traceback.print_exc()
        console.warn(f"the report failed ({exc}); write it again with: python evaluate.py {run_dir} --report")
        return
    console.log(f"report ({time.monotonic() - started:.1f}s): {page}")
