"""Flags, YAML config files and fail-fast validation."""

from __future__ import annotations

import pytest

from pneumo.config import parse_args, result_keys_diff
from pneumo.utils.errors import PneumoError


def test_defaults_are_the_reference_recipe():
    a = parse_args([])
    assert (a.model, a.image_size, a.epochs, a.batch_size, a.lr, a.weight_decay, a.min_lr, a.dropout, a.folds) == (
        "resnet18",
        224,
        10,
        32,
        1e-3,
        1e-4,
        1e-4,
        0.3,
        5,
    )
    assert (a.opt, a.balance, a.init) == ("adamw", "sampler", "xavier")


def test_yaml_config_supplies_values_and_flags_win(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: resnet34\nbatch-size: 16\nepochs: 3\n")
    a = parse_args(["--config", str(cfg), "--epochs", "7"])
    assert (a.model, a.batch_size, a.epochs) == ("resnet34", 16, 7)


def test_yaml_config_with_unknown_key_is_refused(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("modle: resnet34\n")
    with pytest.raises(PneumoError, match=rf"^{cfg}: modle: unknown key; config keys are the flags of "):
        parse_args(["--config", str(cfg)])


def test_config_diff_ignores_keys_that_do_not_change_results():
    old = {"lr": 1e-3, "workers": 4, "output_dir": "a", "no_cache": False}
    new = {"lr": 1e-2, "workers": 1, "output_dir": "b", "no_cache": True}
    assert result_keys_diff(old, new) == ["lr"]


def test_a_flag_newer_than_the_recorded_run_differs_only_when_not_at_its_default():
    old = {"lr": 1e-3}  # recorded before --ema-decay and --tta existed
    assert result_keys_diff(old, {"lr": 1e-3, "ema_decay": 0.0, "tta": "none"}) == []
    assert result_keys_diff(old, {"lr": 1e-3, "ema_decay": 0.998, "tta": "none"}) == ["ema_decay"]
