"""The run directory: new, resumed or overwritten (when its recorded config allows), what made
the run recorded in it, and its config read back as the stages' records."""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from pneumo.config import build_parser, to_yaml
from pneumo.run_config import RunConfig
from pneumo.utils.errors import PneumoError
from pneumo.utils.fsutil import atomic_write_json, atomic_write_text, read_json
from pneumo.utils.run_files import CONFIG, FOLDS, RUN_INFO, read_config

PACKAGES = ("torch", "torchvision", "timm", "accelerate", "scikit-learn", "numpy", "pillow", "safetensors")


# Keys that change where or how fast a run goes, never its numbers: ignored when a run
# directory's recorded config is compared with a new invocation (resume).
# Recipe levers added after runs were first recorded and on by default since the recipe study:
# a run recorded before such a flag existed trained with it off (and kept its lowest-loss epoch).
OFF_BEFORE_IT_EXISTED = {
    "label_smoothing": 0.0,
    "mixup": 0.0,
    "cutmix": 0.0,
    "ema_decay": 0.0,
    "aug_scale": None,
    "aug_aspect": 1.0,
    "aug_translate": 0.0,
    "aug_gamma": 0.0,
    "aug_contrast": 0.0,
    "aug_brightness": 0.0,
    "aug_erase_p": 0.0,
    "aug_blur_p": 0.0,
    "aug_blur_sigma": 0.0,
    "aug_noise_p": 0.0,
    "aug_noise_std": 0.0,
    "select": "loss",
}
NON_RESULT_KEYS = frozenset(
    {
        "output_dir",
        "resume",
        "overwrite",
        "workers",
        "cache_dir",
        "no_cache",
        "config",
        "audit",
        "audit_samples",
        "keep_state",
        "saliency_images",
        "report",
        "log_with",
        # How a run is split over launches and processes: SLURM array tasks train different folds
        # into one run directory, and a resumed run may use another process count.
        "train_folds",
        "fold_plan",
        "no_ensemble",
        # The decision is made after training, from the out-of-fold predictions; evaluate.py can change it.
        "threshold_policy",
    }
)


def as_recorded(config: dict[str, Any], keys: set[str] | None = None) -> dict[str, Any]:
    """A recorded config with every flag (or every one of `keys`): a key it lacks (a run started
    by an earlier version, before the flag existed) as the earlier version behaved, the lever off
    for the recipe levers whose default the study turned on, else the flag's default."""
    parser = build_parser()
    wanted = keys if keys is not None else {a.dest for a in parser._actions if a.option_strings and a.dest != "help"}
    before = {k: OFF_BEFORE_IT_EXISTED.get(k, parser.get_default(k)) for k in wanted if k not in config}
    return {**config, **before}


def result_keys_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Config keys whose values differ in a way that changes results.

    A key the old record lacks (a run started by an earlier version, before the flag existed)
    counts as the value the earlier version behaved as: the lever off for the recipe levers
    whose default the study turned on, else the flag's default.
    """
    keys = (set(old) | set(new)) - NON_RESULT_KEYS
    old, new = as_recorded(old, keys), as_recorded(new, keys)
    return sorted(k for k in keys if old[k] != new[k])


def recorded_config(run_dir: Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """A run's config.yaml as its records (with flag-named `overrides`), keys it lacks as the run
    behaved before they existed."""
    return RunConfig.from_config({**as_recorded(read_config(run_dir)), **(overrides or {})})


def decide(run_dir: Path, config: dict[str, Any], *, resume: bool, overwrite: bool) -> str:
    """'new', 'resume' or 'overwrite' for `run_dir`; refuses what would lose or mix work."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        if resume:
            raise PneumoError(f"--resume: {run_dir} holds no run to resume")
        return "new"
    if not (run_dir / CONFIG).exists():
        raise PneumoError(
            f"--output-dir {run_dir} exists and is not a pneumo run (no {CONFIG}); choose another directory"
        )
    if overwrite:
        return "overwrite"
    old = recorded_config(run_dir).to_config()
    diff = result_keys_diff(old, config)
    if diff:
        changes = ", ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in diff)
        raise PneumoError(
            f"{run_dir} holds a run with a different config ({changes}); "
            "pass --overwrite to start over or choose another --output-dir"
        )
    return "resume"


def data_fingerprint(files: list[str], sha1: list[str]) -> str:
    """Hash of the file list and contents the run's folds were made from."""
    h = hashlib.sha256()
    for f, s in sorted(zip(files, sha1)):
        h.update(f"{f}\t{s}\n".encode())
    return h.hexdigest()


def _git_commit() -> str | None:
    code_dir = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(code_dir), "describe", "--always", "--dirty", "--abbrev=40"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def describe(device) -> str:
    """The training device in words: `cpu` or `cuda:0 (NVIDIA H100 80GB HBM3)`."""
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({platform.machine()}, {os.cpu_count()} CPUs)"


def run_info(data_dir: Path, fingerprint: str, world: int, extra: dict[str, Any]) -> dict[str, Any]:
    """Everything that made the run besides its config: code, packages, data, machine."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "command": sys.argv,
        "python": platform.python_version(),
        "packages": versions,
        "git_commit": _git_commit(),
        "host": platform.node(),
        "processes": world,
        "data_dir": str(data_dir),
        "data_fingerprint": fingerprint,
        **extra,
    }


def check_same_data(run_dir: Path, fingerprint: str) -> None:
    """On resume, the data must be what the run's folds were made from."""
    path = run_dir / RUN_INFO
    if path.exists() and read_json(path).get("data_fingerprint") != fingerprint:
        raise PneumoError(
            f"{run_dir}: the data changed since this run started (file list or contents differ); "
            "pass --overwrite to start over or choose another --output-dir"
        )


def initialise(run_dir: Path, mode: str, config: dict[str, Any], folds: dict, info: dict[str, Any]) -> None:
    """Create (or wipe and recreate) the run directory and write config, folds and run info."""
    if mode == "overwrite":
        shutil.rmtree(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PneumoError(f"--output-dir {run_dir}: cannot create it ({exc.strerror})") from exc
    if mode != "resume":
        atomic_write_text(run_dir / CONFIG, to_yaml(config))
    # On resume these exist unless the first start died right after writing the config.
    if mode != "resume" or not (run_dir / FOLDS).exists():
        atomic_write_json(run_dir / FOLDS, folds)
    if mode != "resume" or not (run_dir / RUN_INFO).exists():
        atomic_write_json(run_dir / RUN_INFO, info)
