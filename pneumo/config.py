"""Command-line flags, YAML config files and validation: the resolved run config (the records
each stage receives from it: pneumo.run_config).

A flag's own checks are its `type=` and `choices=` (pneumo.flags); `--config` values go through
the same parser, so a value is checked alike wherever it comes from. Checks that need several
flags are `check_together`'s rules.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from pneumo.data.cache import default_cache_dir
from pneumo.flags import (
    ArgumentParser,
    FlagError,
    existing_file,
    integer,
    number,
    threshold_policy,
    timm_model,
    timm_optimizer,
)
from pneumo.training.trackers import TRACKERS
from pneumo.training.trackers import resolve as resolve_trackers
from pneumo.utils.errors import PneumoError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except None and False ones (their help text says what happens)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The train.py flags, in groups; every flag documented."""
    p = ArgumentParser(
        description="Train one timm model per cross-validation fold (folds run in parallel across "
        "processes) and evaluate the fold ensemble on the test split.",
        formatter_class=HelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--data-dir",
        type=str,
        default=None,
        help="dataset root holding train/[val/][test/]{CLASS_A,CLASS_B}/; default: the built-in synthetic set",
    )
    g.add_argument(
        "--labels",
        type=existing_file,
        default=None,
        metavar="FILE.csv",
        help="labels from a CSV instead of class folders: columns file (relative to --data-dir), label, "
        "optional patient (groups the folds) and split (train/val/test, default train)",
    )
    g.add_argument(
        "--output-dir",
        type=str,
        default="runs/default",
        help="run directory (created; resumed when it holds the same config)",
    )
    g.add_argument(
        "--image-size", type=integer(32), default=96, help="square input size: resize keeping aspect ratio, pad"
    )
    g.add_argument(
        "--keep-val-apart",
        action="store_true",
        help="keep val/ out of the cross-validation pool and evaluate on it like test/",
    )
    g.add_argument("--cache-dir", type=str, default=None, help=f"decode cache location (default {default_cache_dir()})")
    g.add_argument(
        "--no-cache", action="store_true", help="decode images from their files every epoch instead of the cache"
    )
    g.add_argument(
        "--workers",
        type=integer(-1, note=" (-1 = automatic)"),
        default=-1,
        help="decode processes (-1: the CPUs of this process's share)",
    )
    g.add_argument(
        "--equalize",
        choices=("none", "hist", "clahe"),
        default="none",
        help="per-image intensity normalisation at decode time (cached): none, global histogram "
        "equalisation, or CLAHE (contrast-limited adaptive, kornia, clip 2.0, 8x8 tiles)",
    )
    g.add_argument(
        "--crop",
        type=number(0.3, 1),
        default=1.0,
        help="keep the central FRACTION of each image's width and height at decode time, cached, every "
        "split alike (markers, text and devices sit at the borders)",
    )
    g.add_argument(
        "--jpeg-quality",
        type=integer(0, 100, note=" (0 = off)"),
        default=0,
        help="re-encode every image (every split) as a JPEG of this quality at decode time, cached, so "
        "that sets stored at different qualities carry the same compression (0: off)",
    )
    g.add_argument(
        "--on-bad-image",
        choices=("error", "skip"),
        default="error",
        help="unreadable images: stop and list them, or skip them and record the list in the run",
    )
    g.add_argument(
        "--on-overlap",
        choices=("warn", "error", "drop"),
        default="warn",
        help="evaluation images that copy a pool image (same bytes or near-identical pixels): "
        "warn, stop before training, or drop them from evaluation; listed in overlap.json either way",
    )

    g = p.add_argument_group("folds")
    g.add_argument("--folds", type=integer(2), default=5, help="number of cross-validation folds (one model each)")
    g.add_argument(
        "--seed",
        type=integer(0, 2**32 - 1),
        default=42,
        help="seed for folds, initialisation, sampling and augmentation",
    )
    g.add_argument(
        "--no-group",
        action="store_true",
        help="do not group folds by patient (byte-identical images still stay together)",
    )
    g.add_argument(
        "--train-folds",
        type=integer(0),
        nargs="+",
        default=None,
        help="train only these folds of the --folds split (screening); the ensemble is theirs; default: all",
    )

    g = p.add_argument_group("model")
    g.add_argument(
        "--model", type=timm_model, default="resnet18", help="any timm model name (resnet18/34/50, seresnet50, ...)"
    )
    g.add_argument(
        "--pretrained", action="store_true", help="start from timm's pretrained weights (downloads from the hub)"
    )
    g.add_argument(
        "--pretrained-file",
        type=existing_file,
        default=None,
        help="start from a local weights file (.pth/.safetensors, timm layout); works offline",
    )
    g.add_argument(
        "--dropout", type=number(0, 1, high_open=True), default=0.3, help="dropout before the 2-class linear head"
    )
    g.add_argument(
        "--init",
        choices=("xavier", "timm"),
        default="xavier",
        help="initialisation when not pretrained: Xavier-uniform (reference) or timm's own",
    )
    g.add_argument("--freeze-epochs", type=integer(0), default=0, help="train only the head for the first N epochs")
    g.add_argument(
        "--zero-init-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="zero-initialise each residual block's last BatchNorm (timm's default; torchvision's is off)",
    )
    g.add_argument(
        "--drop-path",
        type=number(0, 1, high_open=True),
        default=0.0,
        help="stochastic depth: timm's drop_path_rate, each residual branch dropped up to this rate (0: off)",
    )

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=integer(1), default=40, help="epochs per fold")
    g.add_argument("--batch-size", type=integer(1), default=32, help="batch size per fold")
    g.add_argument(
        "--opt", type=timm_optimizer, default="adamw", help="optimizer name for timm.optim.create_optimizer_v2"
    )
    g.add_argument("--lr", type=number(0, low_open=True), default=1e-3, help="peak learning rate")
    g.add_argument("--weight-decay", type=number(0), default=0.05, help="weight decay")
    g.add_argument("--min-lr", type=number(0), default=1e-4, help="eta_min of the cosine schedule")
    g.add_argument(
        "--backbone-lr-scale",
        type=number(0, low_open=True),
        default=1.0,
        help="backbone learning rate = --lr x this (the head keeps --lr); below 1 for fine-tuning pretrained weights",
    )
    g.add_argument(
        "--balance",
        choices=("sampler", "sqrt", "loss", "none"),
        default="sqrt",
        help="class imbalance: WeightedRandomSampler drawing classes equally (sampler) or in proportion to the "
        "square root of their counts (sqrt), class-weighted loss, or nothing",
    )
    g.add_argument(
        "--select",
        choices=("loss", "auc", "last"),
        default="last",
        help="the fold's checkpoint: the epoch of lowest validation loss, of highest validation ROC-AUC, or the last",
    )
    g.add_argument("--warmup-epochs", type=number(0), default=0.0, help="linear learning-rate warmup before the cosine")
    g.add_argument(
        "--label-smoothing",
        type=number(0, 1, high_open=True),
        default=0.1,
        help="label smoothing of the cross-entropy loss",
    )
    g.add_argument("--mixup", type=number(0), default=0.4, help="mixup Beta(a, a) concentration a (0: off)")
    g.add_argument("--cutmix", type=number(0), default=1.0, help="CutMix Beta(a, a) concentration a (0: off)")
    g.add_argument(
        "--ema-decay",
        type=number(0, 1, high_open=True),
        default=0.998,
        help="keep an EMA of the weights (timm ModelEmaV3, with warmup) and validate/checkpoint it (0: off)",
    )

    g = p.add_argument_group("augmentation (on the device, per sample, seeded per fold)")
    probability = number(0, 1)
    g.add_argument("--aug-rotate", type=number(0, 180), default=10.0, help="rotation, uniform in +-DEGREES")
    g.add_argument("--aug-flip", type=probability, default=0.5, help="horizontal flip probability")
    g.add_argument(
        "--aug-scale",
        type=number(0, low_open=True),
        nargs=2,
        default=[0.85, 1.2],
        metavar=("MIN", "MAX"),
        help="zoom factor, uniform in [MIN, MAX] (>1 zooms in; 1 1: off)",
    )
    g.add_argument("--aug-aspect", type=number(1), default=1.15, help="aspect stretch, log-uniform in [1/R, R]")
    g.add_argument(
        "--aug-translate",
        type=number(0, 0.5, high_open=True),
        default=0.06,
        help="shift, uniform in +-FRACTION of the image",
    )
    g.add_argument("--aug-gamma", type=number(0), default=0.6, help="gamma, log-uniform in [1/(1+G), 1+G]")
    g.add_argument(
        "--aug-contrast", type=number(0, 1, high_open=True), default=0.5, help="contrast factor, uniform in 1 +- C"
    )
    g.add_argument(
        "--aug-brightness",
        type=number(0, 1, high_open=True),
        default=0.15,
        help="brightness offset, uniform in +-B (0..1 scale)",
    )
    g.add_argument("--aug-blur-p", type=probability, default=0.5, help="probability of a Gaussian blur")
    g.add_argument(
        "--aug-blur-sigma", type=number(0, 10), default=1.5, help="blur sigma, uniform in [0.1, SIGMA] pixels"
    )
    g.add_argument("--aug-noise-p", type=probability, default=0.5, help="probability of Gaussian noise")
    g.add_argument(
        "--aug-noise-std",
        type=number(0, 1, high_open=True),
        default=0.03,
        help="noise std, uniform in [0, STD] (0..1 scale)",
    )
    g.add_argument(
        "--aug-erase-p", type=probability, default=0.25, help="probability of erasing a rectangle (2-20%% of the image)"
    )
    g.add_argument(
        "--mixstyle",
        type=probability,
        default=0.0,
        help="MixStyle: per batch with probability P, mix each image's feature mean/SD with another's after "
        "the first three stages (training only; 0: off)",
    )
    g.add_argument(
        "--tta",
        choices=("none", "flip", "flip-rotate"),
        default="none",
        help="test-time augmentation of every prediction: flip averages the image and its mirror; "
        "flip-rotate adds +-5 degree turns",
    )

    g = p.add_argument_group("clinical evaluation")
    g.add_argument(
        "--threshold-policy",
        type=threshold_policy,
        default="fixed:0.5",
        help="the run's decision, chosen on out-of-fold predictions at the end: fixed:X, youden, balanced, prior, "
        "sensitivity:X, specificity:X (fixed:0.5 by studies/decision: the data-driven policies land low on new sites)",
    )
    g.add_argument(
        "--saliency-images",
        type=integer(0, note=" (0 = none)"),
        default=16,
        help="Grad-CAM figures of up to N misclassified and N random test images (0: none)",
    )

    g = p.add_argument_group("hardware")
    g.add_argument(
        "--mixed-precision",
        choices=("no", "fp16", "bf16"),
        default=None,
        help="autocast dtype (default: the accelerate config, else no); bf16 is fast on recent CPUs",
    )
    g.add_argument(
        "--threads",
        type=integer(0, note=" (0 = automatic)"),
        default=0,
        help="CPU threads per process (0: this process's share of the CPUs); bitwise CPU "
        "reproducibility across launches needs the same value",
    )
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument(
        "--fold-plan",
        choices=("grouped", "round-robin"),
        default="grouped",
        help="how folds map to processes: whole rounds of one fold per process, then the remaining folds "
        "data-parallel on groups of processes (grouped), or fold i on process i mod N only (round-robin)",
    )

    g = p.add_argument_group("run")
    g.add_argument(
        "--config", type=str, default=None, help="YAML file of flag values (flags given on the command line win)"
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --output-dir (also automatic when its config matches)",
    )
    g.add_argument("--overwrite", action="store_true", help="delete a previous run in --output-dir and start over")
    g.add_argument(
        "--no-ensemble",
        action="store_true",
        help="train this launch's folds and stop, without results, ensemble or report (SLURM fold arrays: "
        "`evaluate.py RUN --ensemble` builds them once every fold is done)",
    )
    g.add_argument(
        "--audit",
        action="store_true",
        help="audit the data for shortcut statistics (also done, and saved, in every run), write "
        "OUTPUT_DIR/audit.json and stop without training",
    )
    g.add_argument(
        "--audit-samples",
        action="store_true",
        help="write the file list each fold trained on, per epoch (foldK/samples_epochN.json)",
    )
    g.add_argument(
        "--keep-state",
        action="store_true",
        help="keep each finished fold's resume state (foldK/state.pt); by default it is deleted when the fold is done",
    )
    g.add_argument(
        "--log-with",
        nargs="+",
        choices=(*TRACKERS, "all"),
        default=["tensorboard"],
        help="experiment trackers: each fold's epochs and final metrics, and the run's out-of-fold, ensemble "
        "and clinical metrics (TensorBoard always; W&B offline unless WANDB_MODE is set; MLflow to "
        "MLFLOW_TRACKING_URI, else RUN/mlruns)",
    )
    g.add_argument(
        "--report",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write RUN/report/ (figures, report.html, report.md) after training; evaluate.py RUN --report "
        "writes it later",
    )
    return p


def _tokens(action: argparse.Action, value: Any) -> list[str] | None:
    """The command-line form of a config-file value for `action`; None when the value has the wrong
    shape (a list for a single value, a boolean for a number, ...). [] means "the default"."""
    option = action.option_strings[0]
    if isinstance(action, argparse.BooleanOptionalAction):  # --x / --no-x
        return [option if value else action.option_strings[1]] if isinstance(value, bool) else None
    if action.nargs == 0:  # an on/off flag
        if not isinstance(value, bool):
            return None
        return [option] if value == action.const else []
    if value is None:
        return [] if action.default is None else None
    if isinstance(value, list) and (action.nargs in ("*", "+") or isinstance(action.nargs, int)):
        if all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
            return [option, *map(str, value)]
        return None
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return [f"{option}={value}"]  # "=": a value like -1e-3 is not mistaken for a flag
    return None


def read_config_file(parser: argparse.ArgumentParser, path: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The flag values in a YAML config file, each checked and converted by the parser exactly as
    the same flag on the command line; and each dest's key as written in the file."""
    try:
        loaded = yaml.safe_load(Path(path).expanduser().read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise PneumoError(f"--config {path}: cannot read it ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise PneumoError(f"--config {path}: not valid YAML ({exc})") from exc
    if not isinstance(loaded, dict):
        raise PneumoError(f"--config {path}: expected a mapping of flag names to values")
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}
    values: dict[str, Any] = {}
    keys: dict[str, str] = {}
    for key, value in loaded.items():
        dest = str(key).replace("-", "_")
        if dest not in actions:
            raise PneumoError(f"{path}: {key}: unknown key; config keys are the flags of {parser.prog} --help")
        if dest == "config":
            raise PneumoError(f"{path}: {key}: a config file cannot name another one")
        if dest in keys:
            raise PneumoError(f"{path}: {key}: given twice (also as {keys[dest]})")
        tokens = _tokens(actions[dest], value)
        if tokens is None:
            flag = actions[dest].option_strings[0]
            expected = "true or false" if actions[dest].nargs == 0 else f"a value like {flag} takes"
            raise PneumoError(f"{path}: {key}: expected {expected}, got {json.dumps(value, default=str)}")
        try:
            values[dest] = getattr(parser.parse_args(tokens), dest)
        except FlagError as exc:
            raise PneumoError(f"{path}: {key}: {exc.problem}") from None
        keys[dest] = str(key)
    return values, keys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse flags; values from `--config` YAML act as defaults that explicit flags override.

    Every value, from either source, is checked by the parser (types, ranges, choices), then the
    flags are checked together; a bad one raises PneumoError naming the flag, or the file and key.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    where: dict[str, str] = {}
    if args.config:
        values, keys = read_config_file(parser, args.config)
        parser.set_defaults(**values)
        args = parser.parse_args(argv)
        where = {d: f"{args.config}: {keys[d]}" for d, v in values.items() if getattr(args, d) == v}
    check_together(args, where)
    return args


def check_together(args: argparse.Namespace, where: dict[str, str] | None = None) -> None:
    """Refuse flag values that are fine alone but not together, naming the flag, or the config
    file and key (`where`) that the refused value came from."""
    where = where or {}
    rules = [
        (args.min_lr <= args.lr, "min_lr", f"must be at most --lr ({args.lr:g}), got {args.min_lr:g}"),
        (
            args.freeze_epochs <= args.epochs,
            "freeze_epochs",
            f"must be at most --epochs ({args.epochs}), got {args.freeze_epochs}",
        ),
        (not (args.resume and args.overwrite), "overwrite", "contradicts --resume; pick one"),
        (
            args.warmup_epochs < args.epochs,
            "warmup_epochs",
            f"must be less than --epochs ({args.epochs}), got {args.warmup_epochs:g}",
        ),
        (
            not args.train_folds or max(args.train_folds) < args.folds,
            "train_folds",
            f"each must be a fold of --folds {args.folds} (0..{args.folds - 1}), got {args.train_folds}",
        ),
        (
            not args.aug_scale or args.aug_scale[0] <= args.aug_scale[1],
            "aug_scale",
            f"needs MIN <= MAX, got {args.aug_scale}",
        ),
        (
            not (args.pretrained and args.pretrained_file),
            "pretrained_file",
            "contradicts --pretrained (hub weights); pick one",
        ),
    ]
    for ok, dest, problem in rules:
        if not ok:
            raise PneumoError(f"{where.get(dest, '--' + dest.replace('_', '-'))}: {problem}")


def validate(args: argparse.Namespace) -> None:
    """Fail fast, before any heavy work: the flags together, a --pretrained-file of another
    architecture than --model, and a model option (--mixstyle, --drop-path) the model lacks
    (values alone were checked when parsed)."""
    check_together(args)
    resolve_trackers(args.log_with)
    if args.labels and not args.data_dir:
        raise PneumoError("--labels needs --data-dir: the root its file column is relative to")
    if not (args.pretrained_file or args.mixstyle or args.drop_path):
        return
    from pneumo.models.factory import create_model
    from pneumo.models.mixstyle import stage_modules

    # Seconds now rather than after decoding the data set: weights of another architecture
    # are refused here, naming the file.
    model = create_model(args.model, pretrained_file=args.pretrained_file, drop_path=args.drop_path, init="timm")
    if args.mixstyle:
        stage_modules(model)


def to_yaml(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=True)


class _DefaultsDumper(yaml.SafeDumper):
    """Block mappings, lists on one line (`aug_scale: [0.85, 1.2]`)."""


_DefaultsDumper.add_representer(
    list, lambda dumper, value: dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True)
)


def defaults_yaml() -> str:
    """configs/defaults.yaml: every flag's default as a `--config` file, in the parser's groups."""
    lines = [
        "# Every train.py flag at its default, as a --config file (keys: the flags' names).",
        "# Generated by `python -m pneumo.config --dump-defaults > configs/defaults.yaml`;",
        "# tests/test_config.py checks it against the parser.",
    ]
    for group in build_parser()._action_groups:
        # `config` is left out: a config file cannot name another one.
        values = {
            a.dest: a.default for a in group._group_actions if a.option_strings and a.dest not in ("help", "config")
        }
        if values:
            lines += ["", f"# {group.title}", yaml.dump(values, Dumper=_DefaultsDumper, sort_keys=False).rstrip()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--dump-defaults"]:
        raise SystemExit("usage: python -m pneumo.config --dump-defaults > configs/defaults.yaml")
    sys.stdout.write(defaults_yaml())
