"""Bad flags and flag combinations: the CLIs fail fast, before any heavy work, with one clear line.

train.py and evaluate.py print `error: ...` naming the option (or file) and exit with status 2;
nothing is written: no run directory, no decode cache, no predictions.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest
import timm
import torch
import yaml
from conftest import ROOT, load_script, run_cli, train_args
from PIL import Image
from safetensors.torch import save_file

from pneumo.config import parse_args, validate
from pneumo.models.checkpoint import save_weights
from pneumo.models.factory import create_model
from pneumo.training.preempt import StopFlag
from pneumo.utils.errors import PneumoError


def _cli(name: str) -> ModuleType:
    """train.py or evaluate.py imported as a module, to call its main() in this process."""
    return load_script(ROOT / f"{name}.py", f"{name}_cli")


@pytest.fixture
def cli(monkeypatch):
    """Run a CLI's main(argv) in-process: (exit status, stderr). Leaves no signal handlers or
    Accelerate state behind."""
    from accelerate.state import AcceleratorState

    monkeypatch.setattr(StopFlag, "install", lambda self: self)
    monkeypatch.setattr(sys, "argv", ["pytest"])

    def call(name: str, argv: list[str]) -> int:
        return _cli(name).main(argv)

    yield call
    AcceleratorState._reset_state(reset_partial_state=True)


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def _tiny_data(root: Path, normal: int = 3, pneumonia: int = 5) -> Path:
    for name, n in (("NORMAL", normal), ("PNEUMONIA", pneumonia)):
        (root / "train" / name).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (40, 40), 10 * i + (name == "NORMAL")).save(root / "train" / name / f"img{i}.png")
    return root


# ----------------------------------------------------------------------------- train.py


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "resnet_does_not_exist"], "error: --model: resnet_does_not_exist: not a timm model"),
        (["--image-size", "16"], "error: --image-size: must be at least 32, got 16"),
        (["--folds", "1"], "error: --folds: must be at least 2, got 1"),
        (["--batch-size", "0"], "error: --batch-size: must be at least 1, got 0"),
        (["--opt", "adamww"], "error: --opt: adamww: not a timm optimizer"),
        (["--workers", "-2"], "error: --workers: must be at least -1 (-1 = automatic), got -2"),
        (["--min-lr", "0.1", "--lr", "0.01"], "error: --min-lr: must be at most --lr (0.01), got 0.1"),
    ],
)
def test_invalid_flag_fails_before_any_work_with_one_line(cli, capsys, tmp_path, flags, message):
    out, cache = tmp_path / "run", tmp_path / "cache"
    status = cli("train", train_args(tmp_path / "no_data_needed", out, cache, *flags)[1:])
    assert status == 2
    assert _one_error_line(capsys.readouterr().err).startswith(message)
    assert not out.exists() and not cache.exists()


def test_unknown_model_error_suggests_close_names(cli, capsys, tmp_path):
    status = cli("train", train_args(tmp_path, tmp_path / "run", tmp_path / "cache", "--model", "resnet1")[1:])
    assert status == 2
    assert "--model: resnet1: not a timm model (did you mean " in _one_error_line(capsys.readouterr().err)


def test_pretrained_file_of_another_architecture_fails_before_any_work(cli, capsys, tmp_path):
    weights = tmp_path / "vit.safetensors"
    save_weights(weights, timm.create_model("test_vit"), {})
    out, cache = tmp_path / "run", tmp_path / "cache"
    status = cli("train", train_args(tmp_path, out, cache, "--pretrained-file", str(weights))[1:])
    assert status == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: --pretrained-file {weights}: not test_resnet weights")
    assert not out.exists() and not cache.exists()


@pytest.mark.parametrize("change", ["extra_block", "missing_block"])
def test_pretrained_file_of_a_deeper_or_shallower_relative_is_refused(tmp_path, change):
    # timm loads such a file non-strictly (the head is dropped) and would only log the difference.
    state = {k: v.contiguous() for k, v in timm.create_model("test_resnet").state_dict().items()}
    if change == "extra_block":
        state["layer4.9.conv1.weight"] = torch.zeros(1)
    else:
        state = {k: v for k, v in state.items() if not k.startswith("layer4.")}
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(PneumoError, match=r"not test_resnet weights \((0|\d+) of its tensors missing"):
        create_model("test_resnet", pretrained_file=tmp_path / "w.safetensors")


def test_malformed_flag_value_is_one_line_with_status_2_not_usage_text(cli, capsys):
    assert cli("train", ["--folds", "two"]) == 2
    assert _one_error_line(capsys.readouterr().err) == "error: --folds: expected an integer, got 'two'"


def test_unknown_flag_is_one_line_pointing_at_help(cli, capsys):
    assert cli("train", ["--epoch", "3"]) == 2
    assert _one_error_line(capsys.readouterr().err).startswith("error: unrecognized arguments: --epoch 3; see ")


def test_yaml_config_with_a_bad_value_is_refused_naming_file_and_key(cli, capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"image-size": 8}))
    status = cli("train", ["--config", str(config), "--output-dir", str(tmp_path / "run")])
    assert status == 2
    assert _one_error_line(capsys.readouterr().err) == f"error: {config}: image-size: must be at least 32, got 8"
    assert not (tmp_path / "run").exists()


def test_more_folds_than_images_of_a_class_is_one_line_and_writes_no_run(cli, capsys, tmp_path):
    data, out = _tiny_data(tmp_path / "data"), tmp_path / "run"
    status = cli("train", train_args(data, out, tmp_path / "cache", "--folds", "4")[1:])
    assert status == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("error: --folds 4 is more than the 3 patients of class NORMAL; lower --folds")
    assert not out.exists()


def test_more_folds_than_images_of_a_class_fails_before_decoding(cli, capsys, tmp_path):
    data, cache = _tiny_data(tmp_path / "data"), tmp_path / "cache"
    assert cli("train", train_args(data, tmp_path / "run", cache, "--folds", "4")[1:]) == 2
    assert not cache.exists()


def test_the_real_cli_exits_2_with_only_the_error_line(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    proc = run_cli(train_args(tmp_path / "data", out, cache, "--image-size", "16"), check=False)
    assert proc.returncode == 2
    assert proc.stderr == "error: --image-size: must be at least 32, got 16\n"
    assert not out.exists() and not cache.exists()


def test_optimizer_names_timm_accepts_pass_validation():
    for name in ("adamw", "SGD", "momentum", "lookahead_adamw"):
        validate(parse_args(["--model", "test_resnet", "--opt", name]))


# ----------------------------------------------------------------------------- evaluate.py


def _fake_run(run_dir: Path, model_name: str, checkpoint_model, meta_model: str | None = None) -> Path:
    """A finished one-fold run of `model_name` whose fold checkpoint holds `checkpoint_model`."""
    run_dir.mkdir(parents=True)
    config = {"model": model_name, "folds": 1, "mixed_precision": "no", "data_dir": str(run_dir / "no_data")}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "folds.json").write_text('{"files": {"train/NORMAL/IM-0001-0001.jpeg": 0}}')
    (run_dir / "fold0").mkdir()
    (run_dir / "fold0" / "result.json").write_text('{"fold": 0, "status": "done"}')
    meta = {"fold": 0, "model": meta_model or model_name, "dropout": 0.0, "image_size": 32}
    meta |= {"classes": ["NORMAL", "PNEUMONIA"], "positive": 1, "mean": 100.0, "std": 50.0}
    save_weights(run_dir / "fold0" / "best.safetensors", checkpoint_model, meta)
    return run_dir / "fold0" / "best.safetensors"


def test_evaluate_refuses_a_checkpoint_of_another_run_architecture(cli, capsys, tmp_path):
    ckpt = _fake_run(tmp_path / "run", "test_resnet", create_model("test_efficientnet"), meta_model="test_efficientnet")
    status = cli("evaluate", [str(tmp_path / "run")])
    assert status == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {ckpt}: checkpoint of test_efficientnet, but this run trains test_resnet")


def test_evaluate_refuses_weights_that_do_not_fit_the_architecture(cli, capsys, tmp_path):
    ckpt = _fake_run(tmp_path / "run", "test_resnet", create_model("test_efficientnet"))
    status = cli("evaluate", [str(tmp_path / "run")])
    assert status == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {ckpt}: weights of another architecture than this ResNet")


def test_evaluate_refuses_a_checkpoint_without_training_metadata(cli, capsys, tmp_path):
    ckpt = _fake_run(tmp_path / "run", "test_resnet", create_model("test_resnet"))
    save_weights(ckpt, create_model("test_resnet"), {"model": "test_resnet"})
    assert cli("evaluate", [str(tmp_path / "run")]) == 2
    assert "not a checkpoint written by train.py" in _one_error_line(capsys.readouterr().err)


def test_evaluate_of_a_folder_that_is_not_a_run_is_one_line(cli, capsys, tmp_path):
    assert cli("evaluate", [str(tmp_path)]) == 2
    assert "is not a pneumo run directory" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-size", "0"], "error: --batch-size: must be at least 1, got 0"),
        (["--threads", "-1"], "error: --threads: must be at least 0 (0 = automatic), got -1"),
        (["--out", "preds.csv"], "error: --out is for --images predictions"),
    ],
)
def test_evaluate_invalid_flag_fails_before_reading_the_run(cli, capsys, tmp_path, flags, message):
    assert cli("evaluate", [str(tmp_path / "missing_run"), *flags]) == 2
    assert _one_error_line(capsys.readouterr().err).startswith(message)


def test_evaluate_images_that_do_not_exist_is_one_line_naming_them(cli, capsys, tmp_path):
    _fake_run(tmp_path / "run", "test_resnet", create_model("test_resnet"))
    assert cli("evaluate", [str(tmp_path / "run"), "--images", str(tmp_path / "nope.jpeg")]) == 2
    assert _one_error_line(capsys.readouterr().err) == f"error: --images: {tmp_path / 'nope.jpeg'} does not exist"
