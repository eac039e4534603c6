"""Flags, YAML config files and fail-fast validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pneumo.config import build_parser, defaults_yaml, parse_args, validate
from pneumo.rundir import result_keys_diff
from pneumo.utils.errors import PneumoError

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


def test_defaults_are_the_recipe_the_study_chose():
    a = parse_args([])
    assert (a.model, a.image_size, a.epochs, a.batch_size, a.lr, a.weight_decay, a.min_lr, a.dropout, a.folds) == (
        "resnet18",
        96,
        40,
        32,
        1e-3,
        0.05,
        1e-4,
        0.3,
        5,
    )
    assert (a.opt, a.balance, a.init) == ("adamw", "sqrt", "xavier")
    assert (a.mixup, a.cutmix, a.label_smoothing, a.ema_decay) == (0.4, 1.0, 0.1, 0.998)
    assert (a.aug_scale, a.aug_aspect, a.aug_translate, a.aug_rotate, a.aug_flip) == ([0.85, 1.2], 1.15, 0.06, 10, 0.5)
    assert (a.aug_gamma, a.aug_contrast, a.aug_brightness, a.aug_erase_p) == (0.6, 0.5, 0.15, 0.25)
    assert (a.aug_blur_p, a.aug_blur_sigma, a.aug_noise_p, a.aug_noise_std) == (0.5, 1.5, 0.5, 0.03)
    assert (a.select, a.mixstyle, a.drop_path) == ("last", 0.0, 0.0)


def test_the_study_recipe_file_is_exactly_the_defaults():
    """studies/recipe/recipes/ts-96.yaml on top of the study's reference recipe gives train.py's defaults."""
    reference = yaml.safe_load((CONFIGS / "reference.yaml").read_text())
    study = {**reference, **yaml.safe_load((ROOT / "studies" / "recipe" / "recipes" / "ts-96.yaml").read_text())}
    defaults = vars(parse_args([]))
    assert {k: defaults[k] for k in study} == study


def test_the_reference_recipe_file_turns_every_lever_of_the_study_off():
    reference = vars(parse_args(["--config", str(CONFIGS / "reference.yaml")]))
    assert (reference["image_size"], reference["epochs"], reference["weight_decay"]) == (64, 10, 1e-4)
    assert reference["aug_scale"] == [1.0, 1.0] and reference["aug_aspect"] == 1.0
    levers = ("mixup", "cutmix", "label_smoothing", "ema_decay", "aug_translate", "aug_gamma", "aug_contrast")
    assert all(reference[k] == 0 for k in (*levers, "aug_brightness", "aug_erase_p", "aug_blur_p", "aug_noise_p"))


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_each_shipped_config_sets_exactly_its_keys_and_passes_validation(path):
    """A configs/ file, read as plain YAML, is what train.py resolves: its keys take its values,
    every other flag keeps the parser's default, and the resolved flags pass validation."""
    text = path.read_text()
    assert text.startswith("# ")  # says what it is for
    written = {key.replace("-", "_"): value for key, value in yaml.safe_load(text).items()}
    resolved, defaults = vars(parse_args(["--config", str(path)])), vars(parse_args([]))
    assert resolved.pop("config") == str(path) and defaults.pop("config") is None
    assert written and set(written) <= set(resolved)
    assert resolved == {**defaults, **written}
    validate(parse_args(["--config", str(path)]))


def test_the_defaults_file_holds_every_flag_at_its_default_key_for_key():
    shipped = yaml.safe_load((CONFIGS / "defaults.yaml").read_text())
    defaults = vars(parse_args([]))
    del defaults["config"]  # a config file cannot name another one
    assert shipped == defaults


def test_training_from_the_defaults_file_is_training_with_no_flags():
    path = str(CONFIGS / "defaults.yaml")
    assert vars(parse_args(["--config", path])) == {**vars(parse_args([])), "config": path}


def test_the_defaults_file_is_what_dump_defaults_writes():
    # Regenerate with: python -m pneumo.config --dump-defaults > configs/defaults.yaml
    assert (CONFIGS / "defaults.yaml").read_text() == defaults_yaml()


def _readme_defaults_table() -> dict[str, object]:
    """The README's defaults table: `| `--flag` | `default` | ... |` rows between its markers."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- defaults -->")[1].split("<!-- /defaults -->")[0]
    rows = [line.strip().strip("|").split("|") for line in table.strip().splitlines()[2:]]
    return {cells[0].strip().strip("`"): yaml.safe_load(cells[1].strip().strip("`")) for cells in rows}


def test_the_readme_defaults_table_states_the_parsers_defaults():
    parser = build_parser()
    defaults = {flag: action.default for action in parser._actions for flag in action.option_strings}
    table = _readme_defaults_table()
    main = {"--model", "--image-size", "--epochs", "--batch-size", "--folds", "--select", "--balance"}
    main |= {"--threshold-policy", "--mixed-precision", "--fold-plan", "--seed"}
    assert main <= table.keys()
    for flag, stated in table.items():
        assert flag in defaults, f"README defaults table: {flag} is not a train.py flag"
        assert stated == defaults[flag], f"README says {flag} defaults to {stated!r}; the parser: {defaults[flag]!r}"


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


def test_a_flag_newer_than_the_recorded_run_counts_as_what_the_older_version_did():
    old = {"lr": 1e-3}  # recorded before --ema-decay and --tta existed: no EMA, no TTA
    assert result_keys_diff(old, {"lr": 1e-3, "ema_decay": 0.0, "tta": "none"}) == []
    assert result_keys_diff(old, {"lr": 1e-3, "ema_decay": 0.998, "tta": "none"}) == ["ema_decay"]  # today's default
    assert result_keys_diff(old, {"lr": 1e-3, "ema_decay": 0.0, "tta": "flip"}) == ["tta"]


def test_a_run_recorded_before_select_existed_counts_as_selecting_by_validation_loss():
    old = {"lr": 1e-3}
    assert result_keys_diff(old, {"lr": 1e-3, "select": "loss"}) == []
    assert result_keys_diff(old, {"lr": 1e-3, "select": "last"}) == ["select"]  # today's default
    assert result_keys_diff(old, {"lr": 1e-3, "aug_blur_p": 0.0, "aug_noise_p": 0.0}) == []
