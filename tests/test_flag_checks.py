"""Every flag's value is checked the same way on the command line and in a `--config` file.

A bad value is one `error:` line with exit status 2, naming the flag (`--epochs: ...`) or the
file and key (`c.yaml: epochs: ...`) with the same problem text, before any data is read or
anything is written. The CLIs run in this process: each case costs milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumo import evaluate_cli, train_cli
from pneumo.config import build_parser, parse_args

# (flag, a bad value): written the same on the command line and as `key: value` in YAML, where
# YAML gives it its own type (2.5 a float, -2 an int, weighted a string).
TRAIN_BAD_VALUES = [
    ("--image-size", "16"),
    ("--image-size", "64.0"),
    ("--workers", "-2"),
    ("--on-bad-image", "ignore"),
    ("--on-overlap", "ignore"),
    ("--folds", "1"),
    ("--folds", "five"),
    ("--seed", "-1"),
    ("--seed", "4294967296"),
    ("--model", "resnet_does_not_exist"),
    ("--pretrained-file", "/nonexistent/weights.pth"),
    ("--labels", "/nonexistent/labels.csv"),
    ("--log-with", "neptune"),
    ("--dropout", "1"),
    ("--dropout", "-0.1"),
    ("--init", "kaiming"),
    ("--freeze-epochs", "-1"),
    ("--epochs", "2.5"),
    ("--epochs", "0"),
    ("--batch-size", "0"),
    ("--opt", "adamww"),
    ("--lr", "-0.001"),
    ("--lr", "0"),
    ("--lr", "fast"),
    ("--lr", "nan"),
    ("--lr", "inf"),
    ("--weight-decay", "-0.0001"),
    ("--min-lr", "-1"),
    ("--balance", "weighted"),
    ("--mixed-precision", "fp8"),
    ("--threads", "-1"),
    ("--threads", "1.5"),
    ("--equalize", "sharpen"),
    ("--crop", "0.1"),
    ("--jpeg-quality", "101"),
    ("--train-folds", "-1"),
    ("--backbone-lr-scale", "0"),
    ("--warmup-epochs", "-1"),
    ("--label-smoothing", "1"),
    ("--mixup", "-0.1"),
    ("--cutmix", "-1"),
    ("--ema-decay", "1"),
    ("--aug-rotate", "200"),
    ("--aug-flip", "1.5"),
    ("--aug-scale", "0"),
    ("--aug-aspect", "0.5"),
    ("--aug-translate", "0.5"),
    ("--aug-gamma", "-0.2"),
    ("--aug-contrast", "1"),
    ("--aug-brightness", "-0.1"),
    ("--aug-blur-p", "2"),
    ("--aug-blur-sigma", "11"),
    ("--aug-noise-p", "-1"),
    ("--aug-noise-std", "1"),
    ("--aug-erase-p", "1.1"),
    ("--mixstyle", "1.5"),
    ("--select", "first"),
    ("--fold-plan", "balanced"),
    ("--drop-path", "1"),
    ("--tta", "mirror"),
    ("--threshold-policy", "sensitivity:1.5"),
    ("--saliency-images", "-1"),
]
# Flags whose value is any path or name: nothing to refuse in the value itself (a missing data
# dir or an unwritable output dir is refused when it is used, naming the flag).
TRAIN_FREE_TEXT = {"data_dir", "output_dir", "cache_dir", "config"}


def _on_off(parser) -> list[str]:
    return [a.option_strings[0] for a in parser._actions if a.option_strings and a.nargs == 0 and a.dest != "help"]


TRAIN_ON_OFF = _on_off(build_parser())
EVALUATE_BAD_VALUES = [
    ("--batch-size", "0"),
    ("--batch-size", "many"),
    ("--threads", "-1"),
    ("--workers", "-2"),
    ("--mixed-precision", "fp8"),
    ("--on-bad-image", "ignore"),
    ("--threshold-policy", "youden:0.5"),
    ("--bootstrap-resamples", "100"),
    ("--saliency-images", "-2"),
    ("--tta", "mirror"),
    ("--adapt", "everything"),
]
EVALUATE_FREE_TEXT = {"run_dir", "data_dir", "split", "images", "out", "cache_dir", "compare", "adapt_on"}


def _error_line(main, argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def paths(tmp_path) -> dict[str, Path]:
    return {
        "data": tmp_path / "data",
        "out": tmp_path / "run",
        "cache": tmp_path / "cache",
        "yaml": tmp_path / "c.yaml",
    }


def _train_error(argv: list[str], paths: dict[str, Path], capsys) -> str:
    where = ["--data-dir", str(paths["data"]), "--output-dir", str(paths["out"]), "--cache-dir", str(paths["cache"])]
    line = _error_line(train_cli.main, [*where, *argv], capsys)
    assert not paths["out"].exists() and not paths["cache"].exists()
    return line


@pytest.mark.parametrize(("flag", "value"), TRAIN_BAD_VALUES)
def test_a_bad_value_is_refused_alike_as_a_flag_and_in_a_config_file(paths, capsys, flag, value):
    on_cli = _train_error([flag, value], paths, capsys)
    assert on_cli.startswith(f"error: {flag}: ")
    problem = on_cli.removeprefix(f"error: {flag}: ")
    key = flag.removeprefix("--")
    paths["yaml"].write_text(f"{key}: {value}\n")
    in_file = _train_error(["--config", str(paths["yaml"])], paths, capsys)
    assert in_file == f"error: {paths['yaml']}: {key}: {problem}"


@pytest.mark.parametrize(
    ("yaml_text", "problem"),
    [
        ("epochs: true", "epochs: expected a value like --epochs takes, got true"),
        ("batch_size: [8, 16]", "batch_size: expected a value like --batch-size takes, got [8, 16]"),
        ("model: {name: resnet18}", 'model: expected a value like --model takes, got {"name": "resnet18"}'),
        ("lr: null", "lr: expected a value like --lr takes, got null"),
        ("data-dir: [a, b]", 'data-dir: expected a value like --data-dir takes, got ["a", "b"]'),
        ("compile: 'yes'", 'compile: expected true or false, got "yes"'),
        ("keep-state: 1", "keep-state: expected true or false, got 1"),
        ("config: other.yaml", "config: a config file cannot name another one"),
        ("modle: resnet34", "modle: unknown key; config keys are the flags of "),
        ("image-size: 64\nimage_size: 96", "image_size: given twice (also as image-size)"),
    ],
)
def test_a_config_value_of_the_wrong_kind_is_refused_naming_file_and_key(paths, capsys, yaml_text, problem):
    paths["yaml"].write_text(yaml_text + "\n")
    line = _train_error(["--config", str(paths["yaml"])], paths, capsys)
    assert line.startswith(f"error: {paths['yaml']}: {problem}")


@pytest.mark.parametrize("flag", TRAIN_ON_OFF)
def test_an_on_off_flag_takes_no_value(paths, capsys, flag):
    line = _train_error([f"{flag}=yes"], paths, capsys)
    assert line.startswith(f"error: {flag}") and line.endswith(": ignored explicit argument 'yes'")


@pytest.mark.parametrize("dest", sorted(TRAIN_FREE_TEXT))
def test_a_path_flag_without_its_value_is_refused(paths, capsys, dest):
    flag = f"--{dest.replace('_', '-')}"
    assert _train_error([flag], paths, capsys) == f"error: {flag}: expected one argument"


def test_every_train_flag_has_a_bad_value_case():
    dests = {a.dest for a in build_parser()._actions if a.option_strings and a.dest != "help"}
    covered = {f.removeprefix("--").replace("-", "_") for f, _ in TRAIN_BAD_VALUES}
    covered |= {f.removeprefix("--").replace("-", "_") for f in TRAIN_ON_OFF} | TRAIN_FREE_TEXT
    assert dests == covered, "add a bad-value case for each new flag"


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("lr: 0.001\nmin-lr: 0.01", "min-lr: must be at most --lr (0.001), got 0.01"),
        ("epochs: 2\nfreeze_epochs: 3", "freeze_epochs: must be at most --epochs (2), got 3"),
        ("resume: true\noverwrite: true", "overwrite: contradicts --resume; pick one"),
        ("epochs: 2\nwarmup-epochs: 2", "warmup-epochs: must be less than --epochs (2), got 2"),
        ("folds: 3\ntrain-folds: [0, 3]", "train-folds: each must be a fold of --folds 3 (0..2), got [0, 3]"),
        ("aug-scale: [1.2, 0.9]", "aug-scale: needs MIN <= MAX, got [1.2, 0.9]"),
    ],
)
def test_flags_that_contradict_in_a_config_file_name_the_file_and_key(paths, capsys, yaml_text, message):
    paths["yaml"].write_text(yaml_text + "\n")
    assert _train_error(["--config", str(paths["yaml"])], paths, capsys) == f"error: {paths['yaml']}: {message}"


def test_a_command_line_flag_that_mends_a_config_combination_wins(paths):
    paths["yaml"].write_text("lr: 0.001\nmin-lr: 0.01\n")
    args = parse_args(["--config", str(paths["yaml"]), "--min-lr", "0"])
    assert (args.lr, args.min_lr) == (0.001, 0.0)


@pytest.mark.parametrize(("flag", "value"), EVALUATE_BAD_VALUES)
def test_evaluate_refuses_a_bad_value_before_reading_the_run(tmp_path, capsys, flag, value):
    line = _error_line(evaluate_cli.main, [str(tmp_path / "no_run"), flag, value], capsys)
    assert line.startswith(f"error: {flag}: ")


@pytest.mark.parametrize("flag", _on_off(evaluate_cli.build_parser()))
def test_evaluate_on_off_flag_takes_no_value(tmp_path, capsys, flag):
    line = _error_line(evaluate_cli.main, [str(tmp_path), f"{flag}=yes"], capsys)
    assert line == f"error: {flag}: ignored explicit argument 'yes'"


def test_every_evaluate_flag_has_a_bad_value_case():
    parser = evaluate_cli.build_parser()
    dests = {a.dest for a in parser._actions if a.dest != "help"}
    covered = {f.removeprefix("--").replace("-", "_") for f, _ in EVALUATE_BAD_VALUES} | EVALUATE_FREE_TEXT
    covered |= {f.removeprefix("--").replace("-", "_") for f in _on_off(parser)}
    assert dests == covered, "add a bad-value case for each new flag"
