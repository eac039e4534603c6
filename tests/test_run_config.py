"""A run's config as the stages' typed records: every flag lands in one, and config.yaml round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pneumo.config import parse_args, to_yaml
from pneumo.run_config import RunConfig
from pneumo.rundir import recorded_config
from pneumo.utils.run_files import CONFIG

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--config", str(CONFIGS / "demo.yaml"), "--train-folds", "0", "1"],
        ["--aug-scale", "0.9", "1.1", "--no-group", "--keep-val-apart", "--equalize", "clahe", "--crop", "0.8"],
        ["--no-cache", "--cache-dir", "/tmp/c", "--model", "resnet34", "--pretrained", "--no-zero-init-last"],
    ],
)
def test_a_written_config_yaml_reads_back_as_the_same_records_and_flags(argv, tmp_path):
    flags = vars(parse_args(argv))
    (tmp_path / CONFIG).write_text(to_yaml(RunConfig.from_config(flags).to_config()))
    read = recorded_config(tmp_path)
    assert read == RunConfig.from_config(flags)
    assert read.to_config() == flags == yaml.safe_load((tmp_path / CONFIG).read_text())


def test_each_stage_reads_its_flags_from_the_config():
    cfg = RunConfig.from_config(
        vars(parse_args(["--image-size", "128", "--crop", "0.9", "--no-group", "--lr", "0.01"]))
    )
    assert (cfg.decode.image_size, cfg.decode.pre.crop) == (128, 0.9)
    assert cfg.train.checkpoint_meta()["image_size"] == 128 and cfg.train.pre == cfg.decode.pre
    assert cfg.splits.no_group and cfg.train.optim.lr == 0.01
    assert (cfg.train.augment.scale_min, cfg.train.augment.scale_max) == (0.85, 1.2)


def test_a_config_recorded_before_a_lever_existed_reads_as_that_lever_off(tmp_path):
    flags = {k: v for k, v in vars(parse_args([])).items() if k not in ("mixup", "aug_gamma", "select")}
    (tmp_path / CONFIG).write_text(to_yaml(flags))
    read = recorded_config(tmp_path)
    assert (read.train.optim.mixup, read.train.augment.gamma, read.train.optim.select) == (0.0, 0.0, "loss")
