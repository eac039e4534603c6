"""Command-line flags, YAML config files, validation, and the resolved run config."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import yaml

from pneumo.errors import PneumoError

# Keys that change where or how fast a run goes, never its numbers: ignored when a run
# directory's recorded config is compared with a new invocation (resume).
NON_RESULT_KEYS = frozenset(
    {"output_dir", "resume", "overwrite", "workers", "cache_dir", "no_cache", "config", "audit_samples", "report"}
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except None and False ones (their help text says what happens)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False):
            return action.help or ""
        return super()._get_help_string(action)


def default_cache_dir() -> Path:
    """$PNEUMO_CACHE, else $XDG_CACHE_HOME/pneumo, else ~/.cache/pneumo."""
    if os.environ.get("PNEUMO_CACHE"):
        return Path(os.environ["PNEUMO_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "pneumo"


def build_parser() -> argparse.ArgumentParser:
    """The train.py flags, in groups; every flag documented."""
    p = argparse.ArgumentParser(
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
        "--output-dir",
        type=str,
        default="runs/default",
        help="run directory (created; resumed when it holds the same config)",
    )
    g.add_argument("--image-size", type=int, default=224, help="square input size: resize keeping aspect ratio, pad")
    g.add_argument(
        "--keep-val-apart",
        action="store_true",
        help="keep val/ out of the cross-validation pool and evaluate on it like test/",
    )
    g.add_argument("--cache-dir", type=str, default=None, help=f"decode cache location (default {default_cache_dir()})")
    g.add_argument(
        "--no-cache", action="store_true", help="decode images from their files every epoch instead of the cache"
    )
    g.add_argument("--workers", type=int, default=-1, help="decode processes (-1: the CPUs of this process's share)")
    g.add_argument(
        "--on-bad-image",
        choices=("error", "skip"),
        default="error",
        help="unreadable images: stop and list them, or skip them and record the list in the run",
    )

    g = p.add_argument_group("folds")
    g.add_argument("--folds", type=int, default=5, help="number of cross-validation folds (one model each)")
    g.add_argument("--seed", type=int, default=42, help="seed for folds, initialisation, sampling and augmentation")
    g.add_argument(
        "--no-group",
        action="store_true",
        help="do not group folds by patient (byte-identical images still stay together)",
    )

    g = p.add_argument_group("model")
    g.add_argument(
        "--model", type=str, default="resnet18", help="any timm model name (resnet18/34/50, seresnet50, ...)"
    )
    g.add_argument(
        "--pretrained", action="store_true", help="start from timm's pretrained weights (downloads from the hub)"
    )
    g.add_argument(
        "--pretrained-file",
        type=str,
        default=None,
        help="start from a local weights file (.pth/.safetensors, timm layout); works offline",
    )
    g.add_argument("--dropout", type=float, default=0.3, help="dropout before the 2-class linear head")
    g.add_argument(
        "--init",
        choices=("xavier", "timm"),
        default="xavier",
        help="initialisation when not pretrained: Xavier-uniform (reference) or timm's own",
    )
    g.add_argument("--freeze-epochs", type=int, default=0, help="train only the head for the first N epochs")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=10, help="epochs per fold")
    g.add_argument("--batch-size", type=int, default=32, help="batch size per fold")
    g.add_argument("--opt", type=str, default="adamw", help="optimizer name for timm.optim.create_optimizer_v2")
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay")
    g.add_argument("--min-lr", type=float, default=1e-4, help="eta_min of the cosine schedule")
    g.add_argument(
        "--balance",
        choices=("sampler", "loss", "none"),
        default="sampler",
        help="class imbalance: WeightedRandomSampler, class-weighted loss, or nothing",
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
        type=int,
        default=0,
        help="CPU threads per process (0: this process's share of the CPUs); bitwise CPU "
        "reproducibility across launches needs the same value",
    )
    g.add_argument("--compile", action="store_true", help="torch.compile the model")

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
        "--audit-samples",
        action="store_true",
        help="write the file list each fold trained on, per epoch (foldK/samples_epochN.json)",
    )
    g.add_argument(
        "--report",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write RUN/report/ (figures, report.html, report.md) after training; evaluate.py RUN --report "
        "writes it later",
    )
    return p


def _yaml_defaults(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise PneumoError(f"--config {path}: cannot read it ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise PneumoError(f"--config {path}: not valid YAML ({exc})") from exc
    if not isinstance(loaded, dict):
        raise PneumoError(f"--config {path}: expected a mapping of flag names to values")
    known = {a.dest for a in parser._actions}
    values = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise PneumoError(f"--config {path}: unknown key(s) {unknown}; see train.py --help")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse flags; values from `--config` YAML act as defaults that explicit flags override."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        parser.set_defaults(**_yaml_defaults(parser, args.config))
        args = parser.parse_args(argv)
    return args


def validate(args: argparse.Namespace) -> None:
    """Fail fast, before any heavy work, on values that cannot work; one clear line each."""
    import timm

    checks = [
        (args.image_size >= 32, f"--image-size {args.image_size}: must be at least 32"),
        (args.folds >= 2, f"--folds {args.folds}: cross-validation needs at least 2"),
        (args.batch_size >= 1, f"--batch-size {args.batch_size}: must be at least 1"),
        (args.epochs >= 1, f"--epochs {args.epochs}: must be at least 1"),
        (args.lr > 0, f"--lr {args.lr}: must be positive"),
        (0 <= args.min_lr <= args.lr, f"--min-lr {args.min_lr}: must be between 0 and --lr {args.lr}"),
        (args.weight_decay >= 0, f"--weight-decay {args.weight_decay}: must be >= 0"),
        (0 <= args.dropout < 1, f"--dropout {args.dropout}: must be in [0, 1)"),
        (0 <= args.freeze_epochs <= args.epochs, f"--freeze-epochs {args.freeze_epochs}: must be in [0, --epochs]"),
        (args.threads >= 0, f"--threads {args.threads}: must be >= 0 (0 = automatic)"),
        (args.workers >= -1, f"--workers {args.workers}: must be >= 0, or -1 for automatic"),
        (not (args.resume and args.overwrite), "--resume and --overwrite contradict each other; pick one"),
    ]
    for ok, message in checks:
        if not ok:
            raise PneumoError(message)
    if not timm.is_model(args.model):
        close = timm.list_models(f"*{args.model}*")[:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else "; see timm.list_models()"
        raise PneumoError(f"--model {args.model}: not a timm model{hint}")
    _check_optimizer(args.opt)
    if args.pretrained_file:
        if not Path(args.pretrained_file).is_file():
            raise PneumoError(f"--pretrained-file {args.pretrained_file}: no such file")
        from pneumo.models import create_model

        # Seconds now rather than after decoding the data set: weights of another
        # architecture are refused here, naming the file.
        create_model(args.model, pretrained_file=args.pretrained_file)


def _check_optimizer(name: str) -> None:
    """Refuse an optimizer name that timm's `create_optimizer_v2` would not know."""
    from timm.optim import get_optimizer_info

    base = name.lower().split("_")[-1]  # as timm parses it: "lookahead_adamw" -> adamw
    try:
        get_optimizer_info(base)
    except ValueError:
        raise PneumoError(f"--opt {name}: not a timm optimizer; see timm.optim.list_optimizers()") from None


def result_keys_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Config keys whose values differ in a way that changes results."""
    keys = (set(old) | set(new)) - NON_RESULT_KEYS
    return sorted(k for k in keys if old.get(k) != new.get(k))


def to_yaml(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=True)
