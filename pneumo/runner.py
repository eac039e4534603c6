"""The training job: prepare data and folds, train this process's folds, report the run."""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate.utils import broadcast_object_list
from rich.console import Group

from pneumo import rundir
from pneumo.config import to_yaml
from pneumo.data.audit import audit, audit_table
from pneumo.data.cache import DecodedImages
from pneumo.data.dataset import check_folds
from pneumo.data.labels import scan_data
from pneumo.data.overlap import check_overlap
from pneumo.data.prepare import decode_images, resolve_data_dir, unusable_images
from pneumo.data.splits import Splits, build_splits
from pneumo.evaluation.clinical import add_clinical, clinical_tables
from pneumo.evaluation.fold import evaluate_fold
from pneumo.evaluation.results import build_results, read_fold_results, summary_table
from pneumo.report.model_card import write_model_card
from pneumo.report.site import pixels_from, write_report
from pneumo.run_config import RunConfig
from pneumo.training.claims import FoldClaims, describe, identity
from pneumo.training.distributed import group_backend, wait_for, wait_for_everyone
from pneumo.training.group import make_groups
from pneumo.training.plan import FoldPlan, make_plan
from pneumo.training.trackers import log_run, open_fold_runs
from pneumo.training.trackers import prepare as prepare_trackers
from pneumo.training.tracking import final_metrics
from pneumo.training.trainer import FoldEnv, train_fold
from pneumo.utils import console
from pneumo.utils.errors import NonFiniteLossError, PneumoError
from pneumo.utils.fsutil import atomic_write_json, atomic_write_text, check_writable, read_json
from pneumo.utils.processes import make_accelerator, retain_freed_memory, set_threads
from pneumo.utils.run_files import (
    AUDIT,
    CONFIG,
    OVERLAP,
    PLAN,
    RESULT,
    RESULTS,
    RUN_INFO,
    SKIPPED,
    STATE,
    SUMMARY,
    fold_dir,
    folds_to_train,
    read_config,
)

EXIT_OK = 0
EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped on request with state saved; run again to resume


def run_training(cfg: RunConfig, should_stop=lambda: False) -> int:
    """Run (or resume) the whole job in this process; returns the exit status."""
    started = time.monotonic()
    args = cfg.run
    accelerator = make_accelerator(args.mixed_precision)
    rank, world, is_main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    console.set_process(rank, world)
    threads = set_threads(args.threads)
    if accelerator.device.type == "cpu":
        retain_freed_memory()
    data_dir, synthetic = resolve_data_dir(args.data_dir)
    config = {**cfg.to_config(), "data_dir": str(data_dir), "mixed_precision": accelerator.mixed_precision}
    if args.no_ensemble:
        config["train_folds"] = None  # the run's ensemble is every fold; this launch's share is in plan.json
    run_dir = Path(args.output_dir).expanduser().resolve()
    mode = rundir.decide(run_dir, config, resume=args.resume, overwrite=args.overwrite)
    check_writable(run_dir, "--output-dir")
    claims = FoldClaims(run_dir)
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
        if mode == "overwrite":
            check_no_claims(claims, cfg.splits.folds)
    data = prepare_data(cfg, data_dir, is_main)
    if args.audit:
        if is_main:
            console.console.print(audit_table(data.audit))
            atomic_write_json(run_dir / AUDIT, data.audit)
            console.log(f"audit: {run_dir / AUDIT}")
        return EXIT_OK
    fingerprint = rundir.data_fingerprint(data.decoded.files, data.decoded.sha1)
    if mode == "resume":
        rundir.check_same_data(run_dir, fingerprint)
    if is_main:
        grouping = "duplicates" if cfg.splits.no_group else "patient"
        extra = {"synthetic": synthetic, "skipped_images": len(data.bad), "device": rundir.describe(accelerator.device)}
        info = rundir.run_info(data_dir, fingerprint, world, extra)
        rundir.initialise(run_dir, mode, config, data.splits.folds_json(seed=cfg.splits.seed, grouping=grouping), info)
        if data.bad:
            atomic_write_json(run_dir / SKIPPED, data.bad)
        atomic_write_json(run_dir / AUDIT, data.audit)
        atomic_write_json(run_dir / OVERLAP, data.overlap)
        prepare_trackers(cfg.run.log_with, run_dir)  # before any fold process opens its run
    wait_for_everyone(accelerator)

    trained = folds_to_train(cfg.to_config())
    pending = broadcast_object_list([claims.claim_pending(trained, should_stop) if is_main else None])[0]
    if pending is None:
        return EXIT_STOPPED
    plan = make_plan(pending, world, grouped=args.fold_plan == "grouped")
    if is_main:
        console.log(f"fold plan ({world} process(es)): {plan.describe()}")
        atomic_write_json(run_dir / PLAN, {**plan.to_json(), "launch": identity()})
    env = FoldEnv(
        cfg.train,
        run_dir,
        accelerator.device,
        accelerator.autocast,
        accelerator.mixed_precision,
        cfg.decode.workers if cfg.decode.workers >= 0 else threads,
        config,
        trackers=tuple(cfg.run.log_with),
    )
    if not train_planned_folds(plan, rank, env, data.splits, data.decoded, should_stop):
        return EXIT_STOPPED
    if not is_main or args.no_ensemble:
        return EXIT_OK

    results_files = [fold_dir(run_dir, k) / RESULT for k in trained]
    waiting = lambda missing: console.log(f"waiting for {len(missing)} fold(s) on other processes or launches")
    others = [k for k in trained if k not in pending]
    if not wait_for(results_files, should_stop, on_wait=waiting, on_poll=lambda _: claims.check_not_abandoned(others)):
        return EXIT_STOPPED
    header = {
        "data_dir": str(data_dir),
        "synthetic": synthetic,
        "processes": world,
        "mixed_precision": accelerator.mixed_precision,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    finish_run(run_dir, cfg, trained, data, header, accelerator.device)
    return EXIT_OK


def train_planned_folds(
    plan: FoldPlan, rank: int, env: FoldEnv, splits: Splits, decoded: DecodedImages, should_stop
) -> bool:
    """Train this process's folds of `plan` in order, each alone or with its group; False when
    stopped (state saved). A diverging fold is marked failed and the others go on."""
    groups = make_groups(plan, rank, env.device, group_backend(env.device, plan.processes))
    for fold in (g.fold for g in plan.for_rank(rank)):
        env.group = group = groups[fold]
        if not group.meet(should_stop):
            return False
        where = f"process {rank}" if group.size == 1 else f"processes {list(group.ranks)} (data-parallel)"
        console.log(f"fold {fold}: training on {where}")
        env.tracker_runs = runs = open_fold_runs(env.trackers, env.run_dir, fold, env.config) if group.is_leader else []
        final: dict[str, float] = {}
        try:
            trained = train_fold(fold, splits, decoded, env, should_stop)
            if trained is None:
                console.log(f"fold {fold}: stopped; state saved, run the same command again to resume")
                return False
            result = evaluate_fold(trained, splits, decoded, env)
            final = final_metrics(result) if group.is_leader else {}
        except NonFiniteLossError as exc:
            out = fold_dir(env.run_dir, fold)
            kept = "its last good epoch's checkpoint is kept" if (out / STATE).exists() else "it had no checkpoint yet"
            console.warn(f"fold {fold} failed: {exc}; {kept}; the other folds go on")
            if group.is_leader:
                atomic_write_json(out / RESULT, {"fold": fold, "status": "failed", "reason": str(exc)})
        finally:
            for run in runs:
                run.finish(final)
    return True


@dataclass
class RunData:
    """The run's images decoded and checked, its folds and evaluation splits, and what the checks found."""

    decoded: DecodedImages
    splits: Splits
    bad: dict[str, str]
    audit: dict[str, Any]
    overlap: dict[str, Any]


def prepare_data(cfg: RunConfig, data_dir: Path, is_main: bool) -> RunData:
    """Scan, decode (through the cache), check and split the data as the run's config says."""
    layout = scan_data(data_dir, cfg.run.labels)
    if is_main and layout.ignored_note():
        console.log(layout.ignored_note())
    folds, args = cfg.splits, cfg.run
    check_folds(layout, folds.folds, keep_val_apart=folds.keep_val_apart, by_patient=not folds.no_group)
    decoded = decode_images(layout, cfg.decode)
    bad = unusable_images(layout, decoded, args.on_bad_image)
    splits = build_splits(layout, decoded, folds)
    audit_record: dict[str, Any] = {}
    if is_main:
        audit_record = audit(decoded, splits.labels, splits.classes, splits.positive, splits.pool, splits.evals)
        for line in audit_record["warnings"]:
            console.warn(f"data audit: {line}")
    quiet = lambda message: None
    if args.audit:
        return RunData(decoded, splits, bad, audit_record, {})
    overlap = check_overlap(
        decoded, splits, args.on_overlap, console.log if is_main else quiet, console.warn if is_main else quiet
    )
    return RunData(decoded, splits, bad, audit_record, overlap)


def finish_run(run_dir: Path, cfg: RunConfig, folds: list[int], data: RunData, header: dict[str, Any], device) -> None:
    """From the finished folds' files: results.json, the ensemble, clinical evaluation, summary and report."""
    fold_results = read_fold_results(run_dir, folds)
    if not any(r["status"] == "done" for r in fold_results):
        raise PneumoError(f"every fold failed; see {run_dir}/fold*/result.json")
    header = {
        "model": cfg.train.model.name,
        "image_size": cfg.decode.image_size,
        "epochs": cfg.train.optim.epochs,
        "n_folds": cfg.splits.folds,
        **header,
        "overlap": data.overlap,
    }
    config = {**cfg.to_config(), **{k: header[k] for k in ("data_dir", "mixed_precision")}}
    results = build_results(run_dir, fold_results, data.splits.classes, data.splits.positive, header, config)
    results = add_clinical(run_dir, results, config, data.decoded, device)
    table = Group(summary_table(results), *clinical_tables(results["clinical"]))
    console.console.print(table)
    with console.console.capture() as captured:
        console.console.print(table)
    (run_dir / SUMMARY).write_text(captured.get(), encoding="utf-8")
    console.log(f"model card: {write_model_card(run_dir)}")
    log_run(cfg.run.log_with, run_dir, config, results)
    console.log(f"results: {run_dir / RESULTS}  (wall time {header['wall_seconds']:.0f}s)")
    console.log(json.dumps({"oof_accuracy": results["oof"]["accuracy"], "oof_roc_auc": results["oof"]["roc_auc"]}))
    if cfg.run.report:
        report(run_dir, pixels_from(data.decoded))


def ensemble_run(run_dir: Path, overrides: dict[str, Any]) -> None:
    """`evaluate.py RUN --ensemble`: what the end of training writes (results, ensemble, clinical
    evaluation, summary, report), from the finished folds of a run trained by several launches
    (a SLURM fold array). `overrides`: where to find the decode cache, how many decode workers."""
    started = time.monotonic()
    config = read_config(run_dir)
    cfg = rundir.recorded_config(run_dir, overrides)
    folds = folds_to_train(config)
    missing = [k for k in folds if not (fold_dir(run_dir, k) / RESULT).exists()]
    if missing:
        raise PneumoError(
            f"{run_dir}: fold(s) {missing} have no result yet (still training, or their launch failed); "
            f"train them with `train.py ... --output-dir {run_dir} --train-folds {' '.join(map(str, missing))}`"
        )
    accelerator = make_accelerator(config["mixed_precision"])
    set_threads(cfg.run.threads)
    data = prepare_data(cfg, Path(config["data_dir"]), is_main=True)
    rundir.check_same_data(run_dir, rundir.data_fingerprint(data.decoded.files, data.decoded.sha1))
    header = {
        "data_dir": config["data_dir"],
        "synthetic": read_json(run_dir / RUN_INFO).get("synthetic", False),
        "processes": max(read_json(fold_dir(run_dir, k) / RESULT).get("processes", 1) for k in folds),
        "mixed_precision": config["mixed_precision"],
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    finish_run(run_dir, cfg, folds, data, header, accelerator.device)


def record_policy(run_dir: Path, policy: str) -> None:
    """`evaluate.py RUN --threshold-policy P`: config.yaml records P as the run's threshold policy (the
    rebuild that follows makes it the run's decision everywhere)."""
    config = read_config(run_dir)
    atomic_write_text(run_dir / CONFIG, to_yaml({**config, "threshold_policy": policy}))


def check_no_claims(claims: FoldClaims, n_folds: int) -> None:
    """--overwrite must not delete folds another launch is training right now."""
    for fold in range(n_folds):
        holder = claims.held_elsewhere(fold)
        if holder is not None:
            raise PneumoError(
                f"--overwrite: fold {fold} of {claims.run_dir} is being trained by another launch "
                f"({describe(holder)}); stop it first or choose another --output-dir"
            )


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
