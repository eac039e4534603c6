"""The report's figures (matplotlib): each function takes plain data and returns a Figure.

Figures are made without pyplot (no GUI backend, no global figure registry) and saved by
the caller; nothing here reads or writes files.
"""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Callable, Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from sklearn.calibration import CalibrationDisplay
from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay

History = Sequence[Mapping]  # one fold's epoch records (metrics.jsonl)
Getter = Callable[[Mapping], float | None]
Tile = tuple[np.ndarray, str, bool | None]  # image, caption, wrong (None: not a prediction)

TRAIN, VAL = "tab:blue", "tab:orange"
WRONG, RIGHT = "tab:red", "tab:green"
CLASS_COLORS = ("tab:green", "tab:purple", "tab:brown", "tab:pink")
STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "figure.titlesize": 13,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 9,
}


def styled(draw: Callable[..., Figure]) -> Callable[..., Figure]:
    """Draw under the report's style without touching the process-wide matplotlib settings."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs) -> Figure:
        with matplotlib.rc_context(STYLE):
            return draw(*args, **kwargs)

    return wrapper


def _figure(rows: int, cols: int, size: tuple[float, float], title: str) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.suptitle(title)
    return fig, axes


def _series(histories: Mapping[int, History], get: Getter) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per fold, the epochs where `get` has a value and those values."""
    out = {}
    for fold, records in histories.items():
        points = [(r["epoch"], get(r)) for r in records]
        points = [(e, v) for e, v in points if v is not None and np.isfinite(v)]
        if points:
            out[fold] = (np.array([e for e, _ in points]), np.array([v for _, v in points], dtype=float))
    return out


def _band(ax, series: dict[int, tuple[np.ndarray, np.ndarray]], color: str, label: str, style: str = "-") -> None:
    """Each fold thin, the across-fold mean bold with a ±1 std band."""
    for epochs, values in series.values():
        ax.plot(epochs, values, style, color=color, linewidth=0.8, alpha=0.35)
    by_epoch: dict[int, list[float]] = {}
    for epochs, values in series.values():
        for e, v in zip(epochs, values):
            by_epoch.setdefault(int(e), []).append(float(v))
    epochs = sorted(by_epoch)
    mean = np.array([np.mean(by_epoch[e]) for e in epochs])
    std = np.array([np.std(by_epoch[e]) for e in epochs])
    ax.plot(epochs, mean, style, color=color, linewidth=2.2, marker="o", markersize=3, label=f"{label} (mean)")
    ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.15, linewidth=0, label=f"{label} ±1 std")


def _epoch_axes(ax, title: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.xaxis.get_major_locator().set_params(integer=True)


@styled
def class_distribution(groups: Sequence[tuple[str, Sequence[int]]], classes: Sequence[str]) -> Figure:
    """Images per class in each group (pool, validation folds, evaluation splits), counts on the bars."""
    fig, axes = _figure(1, 1, (max(7.0, 1.1 * len(groups) + 3), 4.2), "Class distribution")
    ax = axes[0, 0]
    x = np.arange(len(groups))
    width = 0.8 / len(classes)
    for c, name in enumerate(classes):
        counts = [g[1][c] for g in groups]
        offset = (c - (len(classes) - 1) / 2) * width
        bars = ax.bar(x + offset, counts, width, label=name, color=CLASS_COLORS[c % len(CLASS_COLORS)])
        ax.bar_label(bars, fontsize=8)
    totals = [sum(g[1]) for g in groups]
    ax.set_xticks(x, [f"{name}\n(n={n})" for (name, _), n in zip(groups, totals)], fontsize=9)
    ax.set_ylabel("images")
    ax.legend(title="class")
    ax.grid(axis="x", visible=False)
    return fig


def _tiles(tiles: Sequence[Tile], cols: int, title: str, tile_inches: float = 1.9) -> Figure:
    rows = max(1, -(-len(tiles) // cols))
    # A long title (the augmentation levers) wraps to the figure's width, about 9 characters per inch.
    title = textwrap.fill(title, width=int(cols * tile_inches * 9))
    fig, axes = _figure(
        rows, cols, (cols * tile_inches, rows * (tile_inches + 0.6) + 0.6 + 0.2 * title.count("\n")), title
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, caption, wrong) in zip(axes.flat, tiles):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        color = "black" if wrong is None else (WRONG if wrong else RIGHT)
        ax.set_title(caption, fontsize=8, color=color)
        if wrong is not None:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(3 if wrong else 1)
    return fig


@styled
def image_grid(tiles: Sequence[Tile], title: str, cols: int = 8) -> Figure:
    """Images in a grid, each captioned; predictions framed green when right, thick red when wrong."""
    return _tiles(tiles, cols, title)


@styled
def loss_accuracy_curves(histories: Mapping[int, History], best_epochs: Mapping[int, int]) -> Figure:
    """Training and validation loss and accuracy per epoch: folds thin, mean ± std bold, best epochs starred."""
    fig, axes = _figure(1, 2, (12, 4.4), "Loss and accuracy per epoch (each fold thin, mean ± std bold)")
    for ax, key, ylabel in ((axes[0, 0], "loss", "cross-entropy loss"), (axes[0, 1], "accuracy", "accuracy")):
        _band(ax, _series(histories, lambda r, k=key: r["train"][k]), TRAIN, "training", "--")
        val = _series(histories, lambda r, k=key: r["val"][k])
        _band(ax, val, VAL, "validation")
        best = [(e, v[list(es).index(e)]) for f, (es, v) in val.items() if (e := best_epochs.get(f)) in es]
        if best:
            ax.plot(*zip(*best), "*", color="black", markersize=11, label="best epoch of a fold (lowest val loss)")
        _epoch_axes(ax, key.capitalize(), ylabel)
        if key == "accuracy":
            ax.set_ylim(top=1.01)
    axes[0, 1].legend(loc="lower right")
    return fig


@styled
def per_class_curves(
    histories: Mapping[int, History], classes: Sequence[str], panels: Sequence[tuple[str, str, Getter]], title: str
) -> Figure:
    """One panel per (title, ylabel, getter(record, class)); one colour per class, folds thin, mean bold."""
    fig, axes = _figure(1, len(panels), (6 * len(panels), 4.4), title)
    for ax, (panel, ylabel, get) in zip(axes[0], panels):
        for c, name in enumerate(classes):
            series = _series(histories, lambda r, n=name, g=get: g(r, n))
            if series:
                _band(ax, series, CLASS_COLORS[c % len(CLASS_COLORS)], name)
        _epoch_axes(ax, panel, ylabel)
        if "loss" not in ylabel:  # a fraction: keep the ±std band inside [0, 1]
            ax.set_ylim(-0.02, 1.02)
        ax.legend(loc="best")
    return fig


@styled
def learning_rate_and_throughput(histories: Mapping[int, History]) -> Figure:
    """The learning rate every optimizer step used, and training images/s per epoch, per fold."""
    fig, axes = _figure(1, 2, (12, 4.2), "Learning-rate schedule and training throughput")
    ax = axes[0, 0]
    for fold, records in histories.items():
        if all("lr_steps" in r for r in records):
            lrs = [lr for r in records for lr in r["lr_steps"]]
            ax.plot(np.arange(1, len(lrs) + 1), lrs, linewidth=1.2, label=f"fold {fold}")
        else:  # runs from before per-step recording: the rate after each epoch's last step
            steps = np.cumsum([r["optimizer_steps"] for r in records])
            ax.plot(steps, [r["lr"] for r in records], "o-", linewidth=1.2, label=f"fold {fold} (end of epoch)")
    ax.set_title("Learning rate per optimizer step")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax.legend()
    ax = axes[0, 1]
    rates = _series(histories, lambda r: r.get("images_per_second"))
    title = "Training throughput"
    if not rates:  # runs from before it was recorded: images over the whole epoch's time
        rates = _series(histories, lambda r: r["train_samples"] / r["seconds"] if r.get("seconds") else None)
        title = "Training throughput (epoch time including validation)"
    for fold, (epochs, rate) in rates.items():
        ax.plot(epochs, rate, "o-", linewidth=1.2, label=f"fold {fold} (mean {rate.mean():.1f})")
    _epoch_axes(ax, title, "images / s")
    ax.set_ylim(bottom=0)
    ax.legend()
    return fig


@styled
def confusion_matrices(
    panels: Sequence[tuple[str, np.ndarray]], classes: Sequence[str], cols: int, title: str
) -> Figure:
    """Confusion matrices (rows true, columns predicted); a float matrix is shown as row fractions."""
    rows = -(-len(panels) // cols)
    fig, axes = _figure(rows, cols, (3.3 * cols + 0.5, 3.2 * rows + 0.6), title)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (name, matrix) in zip(axes.flat, panels):
        fractions = np.issubdtype(np.asarray(matrix).dtype, np.floating)
        ConfusionMatrixDisplay(np.asarray(matrix), display_labels=list(classes)).plot(
            ax=ax,
            colorbar=False,
            cmap="Blues",
            values_format=".2f" if fractions else "d",
            im_kw={"vmin": 0, "vmax": 1 if fractions else None},
        )
        ax.set_title(name)
        ax.grid(False)
    return fig


def row_normalised(matrix: Sequence[Sequence[int]]) -> np.ndarray:
    """Each row divided by its total (a row with no samples stays 0)."""
    m = np.asarray(matrix, dtype=float)
    return m / np.maximum(m.sum(axis=1, keepdims=True), 1)


@styled
def roc_pr_calibration(
    ensemble: tuple[np.ndarray, np.ndarray],
    folds: Mapping[int, tuple[np.ndarray, np.ndarray]],
    ensemble_name: str,
    positive: str,
    title: str,
) -> Figure:
    """ROC, precision-recall and reliability curves: each fold thin, the ensemble (or pooled) bold.

    Inputs are (is_positive, score) pairs; AUC / AP appear in the legends.
    """
    fig, axes = _figure(1, 3, (16, 5), title)
    roc, pr, cal = axes[0]
    thin = {"linewidth": 1.0, "alpha": 0.55}
    bold = {"linewidth": 2.6, "color": "black"}
    for fold, (fy, fs) in folds.items():
        if len(np.unique(fy)) == 2:
            RocCurveDisplay.from_predictions(fy, fs, name=f"fold {fold}", ax=roc, curve_kwargs=thin)
            PrecisionRecallDisplay.from_predictions(fy, fs, name=f"fold {fold}", ax=pr, curve_kwargs=thin)
        CalibrationDisplay.from_predictions(fy, fs, n_bins=10, name=f"fold {fold}", ax=cal, **thin)
    y, s = ensemble
    RocCurveDisplay.from_predictions(y, s, name=ensemble_name, ax=roc, plot_chance_level=True, curve_kwargs=bold)
    PrecisionRecallDisplay.from_predictions(y, s, name=ensemble_name, ax=pr, plot_chance_level=True, curve_kwargs=bold)
    CalibrationDisplay.from_predictions(y, s, n_bins=10, name=ensemble_name, ax=cal, **bold)
    roc.set_title("ROC curve")
    roc.set_xlabel(f"false positive rate (1 - specificity), positive class {positive}")
    roc.set_ylabel("true positive rate (sensitivity)")
    pr.set_title("Precision-recall curve")
    pr.set_xlabel(f"recall of {positive}")
    pr.set_ylabel(f"precision of {positive}")
    cal.set_title("Reliability (10 equal-width bins)")
    cal.set_xlabel(f"mean predicted P({positive})")
    cal.set_ylabel(f"fraction {positive}")
    for ax in (roc, pr, cal):
        ax.legend(loc="lower right" if ax is not cal else "upper left", fontsize=8)
        ax.set_aspect("auto")
    return fig


@styled
def score_distributions_figure(
    title: str,
    positive_name: str,
    class_names: Sequence[str],
    oof: tuple[np.ndarray, np.ndarray],
    splits: Mapping[str, tuple[np.ndarray, np.ndarray | None]],
) -> Figure:
    """Density histograms of P(positive) per true class, out-of-fold first, then each split;
    a split with labels None gets one histogram of all its scores."""
    sources = [("out-of-fold", oof), *splits.items()]
    cols = min(len(sources), 3)
    rows = -(-len(sources) // cols)
    fig, axes = _figure(rows, cols, (4.6 * cols, 3.6 * rows + 0.5), title)
    for ax in axes.flat[len(sources) :]:
        ax.axis("off")
    bins = np.linspace(0.0, 1.0, 26)
    for ax, (name, (scores, labels)) in zip(axes.flat, sources):
        scores = np.asarray(scores, dtype=float)
        if labels is None:
            groups = [("all images (unlabelled)", scores, "tab:gray")]
        else:
            labels = np.asarray(labels)
            groups = [
                (f"true {c_name}", scores[labels == c], CLASS_COLORS[c % len(CLASS_COLORS)])
                for c, c_name in enumerate(class_names)
            ]
        for label, values, color in groups:
            if values.size:  # a class absent from a split has no density to draw
                ax.hist(
                    values,
                    bins=bins,
                    density=True,
                    histtype="step",
                    linewidth=1.8,
                    color=color,
                    label=f"{label} (n={values.size})",
                )
        ax.set_title(name)
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel(f"P({positive_name})")
        ax.set_ylabel("density")
        if ax.get_legend_handles_labels()[0]:
            ax.set_ylim(top=ax.get_ylim()[1] * 1.25)  # headroom: the legend sits above the bars
            ax.legend(loc="upper center")
    return fig
