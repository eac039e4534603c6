"""Re-evaluate a finished run's fold ensemble on a split (optionally adapted to a site), or predict arbitrary images."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from rich.console import Group
from rich.table import Table

from pneumo.data.cache import decode_file
from pneumo.data.dataset import SUFFIX_TEXT, expand_image_paths, scan_split
from pneumo.data.images import Preprocess
from pneumo.data.labels import scan_labels_split
from pneumo.data.loader import PixelDataset, eval_batches, make_loader
from pneumo.data.predictions import write_predictions
from pneumo.data.prepare import DecodeSpec, decode_images, unusable_images
from pneumo.evaluation.adapt import (
    METHODS,
    adapt_decision,
    adapt_models,
    adaptation_table,
    batchnorm_layers,
    check_enough,
    describe,
    shift_line,
    site_images,
)
from pneumo.evaluation.clinical import (
    SALIENCY_IMAGES,
    SplitPredictions,
    clinical_section,
    clinical_tables,
    oof_predictions,
    warn_shift,
)
from pneumo.evaluation.decision import run_decision
from pneumo.evaluation.ensemble import mean_probs
from pneumo.evaluation.results import SPREAD, evaluate_split, metrics_table, write_split_predictions
from pneumo.metrics.bootstrap import RESAMPLES
from pneumo.metrics.classification import report_text
from pneumo.metrics.shift import score_shift
from pneumo.models.fold_model import FoldModel, load_fold_model
from pneumo.models.inference import Autocast, predict
from pneumo.utils import console
from pneumo.utils.errors import PneumoError
from pneumo.utils.fsutil import atomic_write_json, atomic_write_text, read_json
from pneumo.utils.processes import make_accelerator, set_threads
from pneumo.utils.run_files import (
    BEST,
    CONFIG,
    EVALUATION,
    FOLDS,
    IMAGE_PREDICTIONS,
    PREDICTIONS,
    REPORT,
    RESULT,
    RESULTS,
    SUMMARY,
    fold_dir,
    folds_to_train,
    read_config,
)

IN_POOL = "in-pool: optimistic"


@dataclass(frozen=True)
class EvalSpec:
    """What evaluate.py does with a finished run: the split (or `images`) to score, from which data
    dir, with which site adaptation, test-time augmentation and clinical extras, and how it runs.
    `decode` carries the cache and decode processes; the size and preprocessing come from the run's
    checkpoints. None: the run's own (data dir, split test, TTA, mixed precision)."""

    split: str | None = None
    data_dir: str | None = None
    allow_pool_split: bool = False
    images: list[str] | None = None
    out: str | None = None
    adapt_on: str | None = None
    adapt: str | None = None
    bootstrap_resamples: int = RESAMPLES
    saliency_images: int = SALIENCY_IMAGES
    tta: str | None = None
    batch_size: int = 64
    mixed_precision: str | None = None
    threads: int = 0
    on_bad_image: str = "error"
    cache_dir: str | None = None
    no_cache: bool = False
    workers: int = -1


def _done_folds(run_dir: Path, folds: list[int]) -> list[int]:
    missing = [k for k in folds if not (fold_dir(run_dir, k) / RESULT).exists()]
    if missing:
        raise PneumoError(f"{run_dir}: fold(s) {missing} have not finished; resume the run (train.py) first")
    return [k for k in folds if read_json(fold_dir(run_dir, k) / RESULT)["status"] == "done"]


def _run_config(run_dir: Path) -> dict:
    """The run's config.yaml, with the keys evaluation needs."""
    config = read_config(run_dir)
    lacking = [k for k in ("folds", "model", "data_dir", "mixed_precision") if k not in config]
    if lacking:
        raise PneumoError(f"{run_dir / CONFIG}: lacks {lacking}; not a config written by train.py")
    return config


def _load_models(run_dir: Path, config: dict, device: torch.device) -> list[FoldModel]:
    folds = _done_folds(run_dir, folds_to_train(config))
    return [load_fold_model(fold_dir(run_dir, k) / BEST, device, expect_model=config["model"]) for k in folds]


def pool_splits(run_dir: Path) -> set[str]:
    """The splits of the run's data dir whose images formed its cross-validation pool."""
    return {PurePosixPath(f).parts[0] for f in read_json(run_dir / FOLDS)["files"]}


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def check_not_in_pool(run_dir: Path, config: dict, data_dir: Path, split: str, allow: bool) -> bool:
    """Whether `split` of `data_dir` was in the run's pool (then metrics on it are optimistic).

    Refused unless `allow`: every fold model but one trained on each of its images, and the
    epochs were chosen on them.
    """
    if not (_same_dir(data_dir, Path(config["data_dir"])) and split in pool_splits(run_dir)):
        return False
    if not allow:
        raise PneumoError(
            f"--split {split}: {data_dir / split} was part of this run's cross-validation pool (see "
            f"{run_dir / FOLDS}): every fold model but one trained on its images and each picked its epoch "
            "on them, so its metrics would be optimistic. Evaluate test/ or an external set, or pass "
            "--allow-pool-split to evaluate it anyway (labelled in-pool)"
        )
    console.warn(f"{split} was in the cross-validation pool: {IN_POOL} (--allow-pool-split)")
    return True


def evaluate_run(run_dir: Path, args: EvalSpec) -> dict:
    """Each fold model and the ensemble on `args.split`; written to run_dir/evaluation/<split>/.

    Only DATA_DIR/<split> is scanned and decoded. A split of the run's own pool is refused
    unless `args.allow_pool_split`, and then labelled in-pool. With `args.adapt_on`, the models
    and the decision are first adapted to those images (pneumo.evaluation.adapt: pixels and
    scores only), and the results go to <split>-adapted/; the checkpoints are left as they are.
    """
    config = _run_config(run_dir)
    data_dir = Path(args.data_dir or config["data_dir"]).expanduser().resolve()
    site = site_images(args.adapt_on, data_dir) if args.adapt_on else None
    split = args.split or (site[1] if site else None) or "test"
    in_pool = check_not_in_pool(run_dir, config, data_dir, split, args.allow_pool_split)
    accelerator = make_accelerator(args.mixed_precision or config["mixed_precision"])
    set_threads(args.threads)
    models = _load_models(run_dir, config, accelerator.device)
    methods = METHODS[args.adapt or "both"] if site else ()
    site_pixels = _site_pixels(run_dir, models, site[2], methods, args) if site else None
    classes = tuple(models[0].meta["classes"])
    labels_csv = config.get("labels") if args.data_dir is None else None  # the run's own data set
    layout = (
        scan_labels_split(data_dir, labels_csv, split, classes) if labels_csv else scan_split(data_dir, split, classes)
    )
    if layout.ignored_note():
        console.log(layout.ignored_note())
    if not len(layout.splits[split]):
        raise PneumoError(f"--split {split}: {data_dir / split} holds no {SUFFIX_TEXT} images")
    classes, positive = layout.classes, int(models[0].meta["positive"])
    # Decoded as the models were trained: their size and preprocessing, this command's cache and processes.
    meta = models[0].meta
    as_trained = DecodeSpec(
        int(meta["image_size"]), Preprocess.from_dict(meta), args.cache_dir, args.no_cache, args.workers
    )
    decoded = decode_images(layout, as_trained)
    unusable_images(layout, decoded, args.on_bad_image)
    index = decoded.index_of()
    idx = np.asarray([index[f] for f in layout.splits[split].files if index[f] not in decoded.errors])
    files = [decoded.files[i] for i in idx]
    labels = layout.splits[split].labels[[layout.splits[split].files.index(f) for f in files]]
    loader = make_loader(PixelDataset(decoded), eval_batches(idx, args.batch_size), accelerator.device, 0)
    trained_tta = models[0].meta.get("tta", "none")
    tta = args.tta or trained_tta
    pairs, device, autocast = [(m.model, m.norm) for m in models], accelerator.device, accelerator.autocast
    per_fold = predict(pairs, loader, device, autocast, tta)
    folds = [m.fold for m in models]
    decision = run_decision(run_dir)
    if site:
        before = per_fold
        adaptation, decision = _adapt(models, site_pixels, site[0], methods, decision, args, device, autocast, tta)
        if "adabn" in methods:
            per_fold = predict(pairs, loader, device, autocast, tta)
    at = {"positive": positive, "threshold": decision["threshold"]}
    section = {
        "split": split,
        "tta": tta,
        "data_dir": str(layout.root),
        "in_pool": in_pool,
        **({"label": IN_POOL} if in_pool else {}),
        **({"adaptation": adaptation} if site else {}),
        **evaluate_split(files, labels, per_fold, folds, classes, **at),
    }
    name = split if tta == trained_tta else f"{split}-tta-{tta}"
    out = run_dir / EVALUATION / (f"{name}-adapted" if site else name)
    section["clinical"] = clinical_section(
        run_dir,
        folds,
        {split: SplitPredictions(files, labels, per_fold, folds)},
        classes,
        positive,
        config,
        decision,
        out_dir=out,
        resamples=args.bootstrap_resamples,
        models=models,
        decoded=decoded,
        saliency_images=args.saliency_images,
    )
    if site:
        after = section["clinical"]["shift"][split]
        before_shift = _shift(run_dir, folds, classes, positive, config, split, before)
        adaptation["shift"] = {"before": before_shift, "after": after}
        console.log(shift_line(split, adaptation["shift"]))
    atomic_write_json(out / RESULTS, section)
    atomic_write_text(out / SUMMARY, console.render_text(Group(*split_tables(run_dir.name, section))))
    report = report_text(labels, mean_probs(per_fold), classes, **at)
    atomic_write_text(out / REPORT, report)
    write_split_predictions(out / PREDICTIONS, files, labels, per_fold, folds, classes, **at)
    warn_shift(section["clinical"])
    console.log(f"{split}: ensemble of folds {folds} on {len(files)} images -> {out}")
    return section


# ---- site adaptation (--adapt-on) ---------------------------------------------------------------------------------


def _site_pixels(
    run_dir: Path, models: list[FoldModel], files: list[Path], methods: tuple[str, ...], args: EvalSpec
) -> torch.Tensor:
    """The adaptation images' pixels, decoded as the models were trained and ordered by content (the
    estimates then do not depend on file names or folders); refused when AdaBN has no BatchNorm to
    adapt or the images are too few."""
    if "adabn" in methods:
        for m in models:
            if not batchnorm_layers(m.model):
                raise PneumoError(
                    f"--adapt {args.adapt or 'both'}: {fold_dir(run_dir, m.fold) / BEST} ({m.meta['model']}) has no "
                    "BatchNorm layer for AdaBN to re-estimate; use --adapt prior"
                )
    _, sha1, pixels = _decode_paths(files, models[0].meta, args.on_bad_image, "--adapt-on")
    check_enough(args.adapt_on, len(pixels), methods)
    return pixels[np.argsort(sha1, kind="stable")]


def _adapt(
    models: list[FoldModel],
    pixels: torch.Tensor,
    source: Path,
    methods: tuple[str, ...],
    decision: dict,
    args: EvalSpec,
    device: torch.device,
    autocast: Autocast,
    tta: str,
) -> tuple[dict, dict]:
    """Adapt `models` in place (AdaBN) and the run's decision (the site's prior) to the site's pixels:
    the adaptation record and the adapted decision."""
    pairs = [(m.model, m.norm) for m in models]
    if "adabn" in methods:
        adapt_models(pairs, pixels, args.batch_size, device, autocast)
    t, train_prior = float(decision["threshold"]), float(decision["train_prior"])
    record = {
        "methods": list(methods),
        "source": str(source),
        "images": len(pixels),
        "site_prior": None,
        "train_prior": train_prior,
        "threshold_before": t,
        "threshold": t,
        "reads_labels": False,
    }
    if "prior" in methods:
        scores = mean_probs(predict(pairs, _pixel_batches(pixels, args.batch_size), device, autocast, tta))
        record.update(adapt_decision(scores[:, int(models[0].meta["positive"])], decision["policy"], t, train_prior))
    console.log(describe(record, decision["policy"]))
    note = f"; adapted to {source} (label-free: {', '.join(methods)})"
    return record, {**decision, "threshold": record["threshold"], "chosen_on": decision.get("chosen_on", "") + note}


def _shift(
    run_dir: Path, folds: list[int], classes: list[str], positive: int, config: dict, split: str, per_fold: np.ndarray
) -> dict:
    """The score-shift test of the split's ensemble scores against out-of-fold, as the clinical section runs it."""
    _, oof_labels, oof_probs, _ = oof_predictions(run_dir, folds, classes)
    seed = int(config.get("seed", 0))
    scores = mean_probs(per_fold)[:, positive]
    return score_shift(
        oof_probs[:, positive], oof_labels == positive, scores, seed=seed, positive_name=classes[positive], name=split
    )


def split_tables(name: str, section: dict) -> list[Table]:
    """Per fold, mean ± std and ensemble on the split at the run's decision; then the adaptation and
    clinical tables."""
    rows = [(f"fold {k}", [m]) for k, m in section["folds"].items()]
    rows += [(SPREAD, [section["fold_mean_std"]]), ("ensemble", [section["ensemble"]])]
    label = f" ({section['label']})" if section.get("in_pool") else ""
    label += " (adapted)" if "adaptation" in section else ""
    return [
        metrics_table(f"{name} on {section['split']}{label}", [section["split"]], rows),
        *([adaptation_table(section["adaptation"])] if "adaptation" in section else []),
        *clinical_tables(section["clinical"]),
    ]


# ---- images ---------------------------------------------------------------------------------------------------------


def _decode_paths(
    paths: list[Path], meta: dict, on_bad_image: str, option: str
) -> tuple[list[str], list[str], torch.Tensor]:
    """The readable files among `paths`, the SHA-1 of their bytes and their uint8 pixels (n, 1, H, W),
    decoded as the models were trained; unreadable files stop it (listed) unless `on_bad_image` is
    skip and some are readable."""
    size, pre = int(meta["image_size"]), Preprocess.from_dict(meta)
    decoded, bad = [], {}
    for path in paths:
        arr, sha1, err = decode_file(path, size, pre)
        if arr is None:
            bad[str(path)] = err
        else:
            decoded.append((str(path), sha1, arr))
    if bad and (on_bad_image == "error" or not decoded):
        lines = "\n".join(f"  {p}: {why}" for p, why in bad.items())
        raise PneumoError(f"{option}: {len(bad)} unreadable file(s), nothing written:\n{lines}")
    for p, why in bad.items():
        console.warn(f"skipping {p}: {why}")
    pixels = torch.from_numpy(np.stack([a for *_, a in decoded])).unsqueeze(1)
    return [p for p, *_ in decoded], [h for _, h, _ in decoded], pixels


def _pixel_batches(pixels: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (pixels[i : i + batch_size], torch.arange(i, min(i + batch_size, len(pixels))))
        for i in range(0, len(pixels), batch_size)
    ]


def predict_images(run_dir: Path, args: EvalSpec) -> Path:
    """Ensemble probabilities for image files/folders; written as CSV to `args.out`."""
    config = _run_config(run_dir)
    accelerator = make_accelerator(args.mixed_precision or config["mixed_precision"])
    set_threads(args.threads)
    models = _load_models(run_dir, config, accelerator.device)
    classes = models[0].meta["classes"]
    paths, skipped = expand_image_paths(args.images)
    if skipped:
        names = ", ".join(str(p) for p in skipped[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
        console.warn(f"skipping {len(skipped)} non-image, hidden or system file(s) in the folders given: {names}")
    names, _, pixels = _decode_paths(paths, models[0].meta, args.on_bad_image, "--images")
    batches = _pixel_batches(pixels, args.batch_size)
    tta = args.tta or models[0].meta.get("tta", "none")
    per_fold = predict([(m.model, m.norm) for m in models], batches, accelerator.device, accelerator.autocast, tta)
    positive = int(models[0].meta["positive"])
    out = Path(args.out) if args.out else run_dir / IMAGE_PREDICTIONS
    extra = {
        f"fold{m.fold}_prob_{classes[positive]}": [repr(float(v)) for v in p[:, positive]]
        for m, p in zip(models, per_fold)
    }
    decision = run_decision(run_dir)
    at = {"positive": positive, "threshold": decision["threshold"]}
    write_predictions(out, names, None, mean_probs(per_fold), classes, extra, **at)
    console.log(
        f"predicted {len(names)} image(s) with the {len(models)}-fold ensemble, {classes[positive]} where "
        f"P >= {decision['threshold']:.3f} (the run's decision, {decision['policy']}) -> {out}"
    )
    return out
