"""The report's sections: each a small function of the run's outputs returning a Section of
figures, tables and notes, or None when what it shows is absent.

Adding a section is writing one such function and listing it in SECTIONS.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from pneumo.data.augment import AugmentParams, AugmentSpec, prepare_batch, sample_params
from pneumo.report import figures
from pneumo.report.run_outputs import RunOutputs, Scored

EXTRA_FIGURE_DIRS = ("calibration", "saliency")  # PNGs other tools leave in the run, shown as they are
GALLERY_SIZE = 24

Pixels = Callable[[Sequence[str]], list[np.ndarray | None]]  # letterboxed images by file name (None: unavailable)


@dataclass
class Plot:
    """A figure: `name` becomes its file name (NN-name.png), `caption` its caption and alt text."""

    name: str
    caption: str
    png: bytes


@dataclass
class Table:
    """A table of strings under a caption."""

    caption: str
    header: list[str]
    rows: list[list[str]]


@dataclass
class Note:
    """A sentence, e.g. why a figure is missing."""

    text: str


Block = Plot | Table | Note


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)
    side_by_side: bool = False  # lay small tables out in a grid


@dataclass
class Inputs:
    """What sections draw from: the run's files and, when its data is at hand, its decoded images."""

    run: RunOutputs
    pixels: Pixels | None


def _slug(text: str) -> str:
    return "-".join("".join(ch if ch.isalnum() else " " for ch in text.lower()).split())


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    m, s = divmod(round(seconds), 60)
    return f"{m // 60}h {m % 60:02d}m {s:02d}s" if m >= 60 else f"{m}m {s:02d}s"


def _class_of(file: str, classes: Sequence[str]) -> int:
    return list(classes).index(Path(file).parent.name)


def facts(inp: Inputs) -> Section:
    """The run at a glance: what ran where, on what data, per fold, with which versions and flags."""
    run, res, info, cfg = inp.run, inp.run.results, inp.run.info, inp.run.config
    classes = run.classes
    pool = np.sum(run.folds["val_counts"], axis=0).tolist()
    summary = [
        ["run directory", str(run.run_dir)],
        ["model", f"{res['model']}, {res['image_size']} px, {res['epochs']} epochs"],
        ["data", f"{res['data_dir']}" + (" (BUILT-IN SYNTHETIC DATA, not X-rays)" if res.get("synthetic") else "")],
        ["cross-validation pool", ", ".join(f"{n} {c}" for c, n in zip(classes, pool)) + f" ({sum(pool)} images)"],
        *[
            [f"evaluation split {s}", ", ".join(f"{m['per_class'][c]['support']} {c}" for c in classes)]
            for s, m in res["ensemble"].items()
        ],
        ["folds", f"{res['n_folds']} ({run.folds.get('grouping', '?')}-grouped, seed {run.folds.get('seed', '-')})"],
        ["skipped images", _fmt(info.get("skipped_images", 0))],
        ["wall time", _duration(res.get("wall_seconds"))],
        ["processes", f"{res['processes']}, mixed precision {res['mixed_precision']}"],
        ["device", info.get("device", "not recorded by this run")],
        ["host", _fmt(info.get("host"))],
        ["git commit", _fmt(info.get("git_commit"))],
        ["command", " ".join(info.get("command", []))],
        ["python", _fmt(info.get("python"))],
        *[[name, _fmt(v)] for name, v in info.get("packages", {}).items()],
        ["out-of-fold ROC-AUC", _fmt(res["oof"].get("roc_auc"))],
        *[[f"ensemble ROC-AUC on {s}", _fmt(m.get("roc_auc"))] for s, m in res["ensemble"].items()],
    ]
    header = ["fold", "status", "train", "val", *[f"val {c} (patients)" for c in classes]]
    header += ["best epoch", "val loss", "val AUC", "mean img/s", "time"]
    rows = []
    for r in res["folds"]:
        k = r["fold"]
        groups = run.folds.get("val_groups", [["?"] * len(classes)] * len(run.folds["val_counts"]))[k]
        counts = [f"{n} ({g})" for n, g in zip(run.folds["val_counts"][k], groups)]
        if r["status"] != "done":
            rows.append([str(k), f"failed: {r.get('reason', '')}", "-", "-", *counts, "-", "-", "-", "-", "-"])
            continue
        rates = [h["images_per_second"] for h in run.histories.get(k, []) if h.get("images_per_second")]
        rows.append(
            [
                str(k),
                "done",
                str(r["train_size"]),
                str(r["val_size"]),
                *counts,
                f"{r['best_epoch']} / {r['epochs']}",
                _fmt(r["val"]["loss"], 4),
                _fmt(r["val"]["roc_auc"]),
                _fmt(float(np.mean(rates)) if rates else None, 1),
                _duration(r.get("seconds")),
            ]
        )
    config_rows = [[k, "-" if v is None else str(v)] for k, v in sorted(cfg.items())]
    return Section(
        "Run",
        [
            Table("Facts", ["", ""], summary),
            Table("Folds (validation images per class, their patients in brackets)", header, rows),
            Table("Configuration (config.yaml)", ["flag", "value"], config_rows),
        ],
    )


def class_distribution(inp: Inputs) -> Section:
    run = inp.run
    counts = run.folds["val_counts"]
    groups = [("CV pool (train)", np.sum(counts, axis=0).tolist())]
    groups += [(f"fold {k} val", c) for k, c in enumerate(counts)]
    groups += [(s.name, np.bincount(s.labels, minlength=len(run.classes)).tolist()) for s in run.scored[1:]]
    fig = figures.class_distribution(groups, run.classes)
    caption = "Images per class: the cross-validation pool, each fold's validation part, each evaluation split."
    return Section("Class distribution", [Plot("class-distribution", caption, _png(fig))])


def samples(inp: Inputs) -> Section | None:
    """Random pool images per class as the model sees them, and augmented views of a few."""
    if inp.pixels is None:
        return None
    run, rng = inp.run, np.random.default_rng(int(inp.run.config.get("seed", 0)))
    files = sorted(run.folds["files"])
    per_class = 8
    tiles: list[figures.Tile] = []
    picked = []
    for c, name in enumerate(run.classes):
        mine = [f for f in files if _class_of(f, run.classes) == c]
        chosen = [mine[i] for i in rng.choice(len(mine), min(per_class, len(mine)), replace=False)]
        picked.append((chosen[0], name))
        for f, img in zip(chosen, inp.pixels(chosen)):
            if img is not None:
                tiles.append((img, f"{name}\n{Path(f).name}", None))
    size = int(run.config["image_size"])
    grid = figures.image_grid(tiles, f"Random training-pool images per class ({size} px, before augmentation)")
    views: list[figures.Tile] = []
    generator = torch.Generator().manual_seed(int(run.config.get("seed", 0)))
    spec = AugmentSpec.from_config(run.config)
    n_views = 5
    for (f, name), img in zip(picked, inp.pixels([f for f, _ in picked])):
        if img is None:
            continue
        params = sample_params(n_views, generator, spec)
        batch = torch.from_numpy(np.repeat(img[None, None], n_views, axis=0))
        out = prepare_batch(batch, 0.0, 1.0, params, channels=1)[:, 0].clamp(0, 255).to(torch.uint8).numpy()
        views.append((img, f"original ({name})\n{Path(f).name}", None))
        views += [(v, view_caption(params, i), None) for i, v in enumerate(out)]
    aug = figures.image_grid(views, f"Augmented views (the run's training augmentation: {_levers(spec)})", n_views + 1)
    return Section(
        "Sample images",
        [
            Plot("samples", f"{per_class} random images per class from the training pool, letterboxed.", _png(grid)),
            Plot("augmentations", "Each row: one image and the random augmentations training draws.", _png(aug)),
        ],
    )


def view_caption(p: AugmentParams, i: int) -> str:
    """What view i of an augmented batch drew, one short line each for geometry, gamma/contrast,
    and brightness/blur/noise/erasing (e.g. 'rot +7.6°, flip, zoom 1.08\nγ 0.87\nerased')."""
    lines = [[f"rot {float(p.angles[i]):+.1f}°", *(["flip"] if p.flips[i] else [])], [], []]
    if p.zoom is not None:
        lines[0].append(f"zoom {float(p.zoom[i]):.2f}")
    if p.gamma is not None:
        lines[1].append(f"γ {float(p.gamma[i]):.2f}")
    if p.contrast is not None:
        lines[1].append(f"contrast {float(p.contrast[i]):.2f}")
    if p.brightness is not None:
        lines[2].append(f"bright {float(p.brightness[i]):+.2f}")
    if p.blur_sigma is not None and p.blur_sigma[i] > 0:
        lines[2].append(f"blur {float(p.blur_sigma[i]):.1f} px")
    if p.noise_std is not None and p.noise_std[i] > 0:
        lines[2].append("noise")
    if p.erase is not None and p.erase[i, 2] > 0:
        lines[2].append("erased")
    return "\n".join(", ".join(line) for line in lines if line)


def _levers(spec: AugmentSpec) -> str:
    """The augmentation levers that are on, as 'rotate 10, flip 0.5, gamma 0.3, ...'."""
    default = AugmentSpec(rotate=0.0, flip=0.0)
    values = {f.name: getattr(spec, f.name) for f in fields(spec)}
    on = [f"{k} {v:g}" for k, v in values.items() if v != getattr(default, k)]
    return ", ".join(on) or "none"


def training_curves(inp: Inputs) -> Section | None:
    run = inp.run
    if not run.histories:
        return None
    best = {r["fold"]: r["best_epoch"] for r in run.results["folds"] if r["status"] == "done"}
    fig = figures.loss_accuracy_curves(run.histories, best)
    caption = (
        "Training (dashed, on augmented batches as they were trained) and validation loss and accuracy per epoch. "
        "A star marks the epoch each fold kept (lowest validation loss)."
    )
    return Section("Loss and accuracy", [Plot("loss-accuracy", caption, _png(fig))])


def precision_recall(inp: Inputs) -> Section | None:
    run = inp.run
    if not run.histories:
        return None
    panels = [
        ("Precision (validation)", "precision", lambda r, c: r["val"]["precision"][c]),
        ("Recall (validation)", "recall", lambda r, c: r["val"]["recall"][c]),
    ]
    fig = figures.per_class_curves(run.histories, run.classes, panels, "Per-class precision and recall per epoch")
    caption = "Validation precision and recall of each class per epoch (arg-max prediction); folds thin, mean bold."
    return Section("Precision and recall per class", [Plot("precision-recall-per-class", caption, _png(fig))])


def classwise(inp: Inputs) -> Section | None:
    run = inp.run
    if not run.histories:
        return None
    panels = [("Class-wise accuracy (validation)", "accuracy", lambda r, c: r["val"]["recall"][c])]
    if any("class_loss" in r["val"] for h in run.histories.values() for r in h):
        panels.append(
            ("Class-wise loss (validation)", "cross-entropy loss", lambda r, c: r["val"].get("class_loss", {}).get(c))
        )
    fig = figures.per_class_curves(run.histories, run.classes, panels, "Class-wise accuracy and loss per epoch")
    caption = (
        "Accuracy on the validation images of each class (its recall) and their mean cross-entropy loss, per epoch."
    )
    return Section("Class-wise accuracy and loss", [Plot("classwise", caption, _png(fig))])


def confusion(inp: Inputs) -> Section | None:
    run = inp.run
    if not run.scored:
        return None
    classes = run.classes
    panels = []
    for s in run.scored:
        matrix = s.metrics["confusion_matrix"]["matrix"]
        who = "pooled" if s is run.scored[0] else "ensemble"
        panels += [
            (f"{s.name}\n{who}, counts", np.asarray(matrix)),
            (f"{who}, row fractions", figures.row_normalised(matrix)),
        ]
    title = "Confusion matrices (rows: true class, columns: predicted)"
    ensemble = figures.confusion_matrices(panels, classes, 2, title)
    fold_panels = [
        (
            f"fold {k}: {'its validation fold' if s is run.scored[0] else s.name}",
            np.asarray(m["confusion_matrix"]["matrix"]),
        )
        for s in run.scored
        for k, m in sorted(s.fold_metrics.items())
    ]
    per_fold = figures.confusion_matrices(fold_panels, classes, max(len(run.done_folds), 1), f"{title}, per fold")
    return Section(
        "Confusion matrices",
        [
            Plot(
                "confusion",
                "Ensemble (out-of-fold: pooled fold predictions) in counts and row fractions.",
                _png(ensemble),
            ),
            Plot(
                "confusion-folds",
                "Each fold model: on its validation fold, then on each evaluation split.",
                _png(per_fold),
            ),
        ],
    )


def roc_pr(inp: Inputs) -> Section | None:
    run = inp.run
    positive = run.classes[run.positive]
    blocks: list[Block] = []
    for i, s in enumerate(run.scored):
        is_pos = s.labels == run.positive
        if len(np.unique(is_pos)) < 2:
            blocks.append(Note(f"{s.name}: only one class present, no ROC or precision-recall curve."))
            continue
        bold = "pooled out-of-fold" if i == 0 else "ensemble"
        fig = figures.roc_pr_calibration(
            (is_pos, s.probs[:, run.positive]), s.fold_scores, bold, positive, f"{s.name}: {len(s.files)} images"
        )
        caption = f"{s.name}: each fold thin, the {bold} predictions bold; AUC and average precision in the legends."
        blocks.append(Plot(f"roc-pr-{_slug(s.name)}", caption, _png(fig)))
    return Section("ROC, precision-recall and reliability", blocks) if blocks else None


def decision(inp: Inputs) -> Section | None:
    """The run's one decision, and whether each split scores as out-of-fold predicts (the shift test)."""
    run = inp.run
    d, clinical = run.results.get("decision"), run.results.get("clinical", {})
    if d is None or not run.scored:
        return None
    pos = run.classes[run.positive]
    blocks: list[Block] = [
        Note(
            f"Decision: {pos} where P({pos}) >= {d['threshold']:.3f} (policy {d['policy']}, chosen on "
            f"{d['chosen_on']}); every pred column, table and figure of this run uses it. Change it with "
            f"`python evaluate.py {run.run_dir} --threshold-policy POLICY`."
        )
    ]
    for shift in clinical.get("shift", {}).values():
        blocks.append(Note(("WARNING: " if shift["shifted"] else "") + shift["summary"]))
    oof, splits = run.scored[0], run.scored[1:]
    fig = figures.score_distributions_figure(
        f"P({pos}) per true class: out-of-fold and each evaluated split",
        pos,
        run.classes,
        (oof.probs[:, run.positive], oof.labels),
        {s.name: (s.probs[:, run.positive], s.labels) for s in splits},
    )
    caption = (
        "Where a split's scores sit against out-of-fold: a threshold chosen out-of-fold holds on a split "
        "whose class histograms look like out-of-fold's."
    )
    blocks.append(Plot("score-distributions", caption, _png(fig)))
    return Section("Decision and score shift", blocks)


def _prediction_tiles(inp: Inputs, s: Scored, order: Sequence[int]) -> list[figures.Tile]:
    classes, pos, preds = inp.run.classes, inp.run.positive, s.preds
    tiles = []
    for i, img in zip(order, inp.pixels([s.files[i] for i in order])):
        if img is None:
            continue
        wrong = bool(preds[i] != s.labels[i])
        name = Path(s.files[i]).name
        caption = f"{name if len(name) <= 26 else name[:12] + '…' + name[-13:]}\n"
        caption += f"true {classes[s.labels[i]]}\npred {classes[preds[i]]}" + (" ✗" if wrong else "")
        tiles.append((img, f"{caption}\nP({classes[pos]}) {s.probs[i, pos]:.2f}", wrong))
    return tiles


def predictions(inp: Inputs) -> Section | None:
    """A random grid of each evaluation split's images with the ensemble's verdicts (out-of-fold without one)."""
    run = inp.run
    if inp.pixels is None or not run.scored:
        return None
    rng = np.random.default_rng(int(run.config.get("seed", 0)))
    blocks: list[Block] = []
    for s in run.scored[1:] or run.scored[:1]:
        order = rng.choice(len(s.files), min(GALLERY_SIZE, len(s.files)), replace=False)
        tiles = _prediction_tiles(inp, s, order)
        n_wrong = sum(1 for *_, w in tiles if w)
        fig = figures.image_grid(tiles, f"{s.name}: {len(tiles)} random images, {n_wrong} misclassified (red)")
        blocks.append(Plot(f"predictions-{_slug(s.name)}", f"{s.name}: random images with the verdict.", _png(fig)))
    return Section("Predictions", blocks)


def misclassified(inp: Inputs) -> Section | None:
    """The most confident mistakes first, with the total number of mistakes stated."""
    run = inp.run
    if inp.pixels is None or not run.scored:
        return None
    blocks: list[Block] = []
    for s in run.scored:
        preds = s.preds
        wrong = np.flatnonzero(preds != s.labels)
        if not len(wrong):
            blocks.append(Note(f"{s.name}: no misclassified images out of {len(s.files)}."))
            continue
        order = wrong[np.argsort(-s.probs[wrong, preds[wrong]], kind="stable")][:GALLERY_SIZE]
        tiles = _prediction_tiles(inp, s, order)
        title = f"{s.name}: {len(wrong)} of {len(s.files)} misclassified; the {len(tiles)} most confident shown"
        fig = figures.image_grid(tiles, title)
        caption = f"{s.name}: {len(wrong)} misclassified images in all, the most confident mistakes first."
        blocks.append(Plot(f"misclassified-{_slug(s.name)}", caption, _png(fig)))
    return Section("Misclassified images", blocks)


def schedule(inp: Inputs) -> Section | None:
    if not inp.run.histories:
        return None
    fig = figures.learning_rate_and_throughput(inp.run.histories)
    caption = "The learning rate of every optimizer step (cosine, per step) and each fold's training images/s."
    return Section("Learning rate and throughput", [Plot("lr-throughput", caption, _png(fig))])


def _metric(value: float | None) -> str:
    """A metric with 4 decimals, or n/a where it is undefined (e.g. precision without predicted positives)."""
    return "n/a" if value is None else f"{value:.4f}"


def _report_table(caption: str, m: dict, classes: Sequence[str]) -> Table:
    """A classification report in sklearn's layout, from stored metrics."""
    header = ["", "precision", "recall", "f1-score", "support"]
    rows = [
        [
            c,
            *(_metric(m["per_class"][c][k]) for k in ("precision", "recall", "f1-score")),
            str(m["per_class"][c]["support"]),
        ]
        for c in classes
    ]
    rows.append(["accuracy", "", "", _metric(m["accuracy"]), str(m["n"])])
    for name, key in (("macro avg", "macro_avg"), ("weighted avg", "weighted_avg")):
        avg = m[key]
        rows.append([name, *(_metric(avg[k]) for k in ("precision", "recall", "f1-score")), str(int(avg["support"]))])
    extra = (
        f"ROC-AUC {_metric(m.get('roc_auc'))}, sensitivity {_metric(m['sensitivity'])}, "
        f"specificity {_metric(m['specificity'])}"
    )
    return Table(f"{caption} — {extra}", header, rows)


def classification_reports(inp: Inputs) -> Section | None:
    run = inp.run
    blocks: list[Block] = []
    for i, s in enumerate(run.scored):
        blocks.append(_report_table(f"{s.name}: {'pooled' if i == 0 else 'ensemble'}", s.metrics, run.classes))
        blocks += [_report_table(f"{s.name}: fold {k}", m, run.classes) for k, m in sorted(s.fold_metrics.items())]
    return Section("Classification reports", blocks, side_by_side=True) if blocks else None


def extra_figures(inp: Inputs) -> Section | None:
    """PNG figures other tools left in the run (calibration, saliency), shown as they are."""
    run_dir = inp.run.run_dir
    found = [p for d in EXTRA_FIGURE_DIRS for p in sorted((run_dir / d).rglob("*.png"))]
    if not found:
        return None
    blocks: list[Block] = [
        Plot(_slug(str(p.relative_to(run_dir).with_suffix(""))), str(p.relative_to(run_dir)), p.read_bytes())
        for p in found
    ]
    return Section("More figures from the run", blocks)


SECTIONS: tuple[Callable[[Inputs], Section | None], ...] = (
    facts,
    decision,
    class_distribution,
    samples,
    training_curves,
    precision_recall,
    classwise,
    confusion,
    roc_pr,
    predictions,
    misclassified,
    schedule,
    extra_figures,
    classification_reports,
)
