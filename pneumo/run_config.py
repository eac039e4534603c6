"""A run's resolved config as the typed records its stages receive, and back.

The command line (pneumo.config) resolves flags and `--config` files once; `RunConfig.from_config`
turns the result, or a run's config.yaml, into one record per stage (decoding, folds, the fold
recipe, and the run's own settings), and `to_config` gives back the flat flag-named mapping that
config.yaml records. Nothing below the command line reads flags.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pneumo.data.prepare import DecodeSpec
from pneumo.data.splits import SplitSpec
from pneumo.training.recipe import TrainSpec


@dataclass(frozen=True)
class RunSpec:
    """The run as a whole: where its data and directory are, what to do with bad or overlapping
    images, which folds this launch trains and how over processes, the decision, and what it writes."""

    data_dir: str | None
    output_dir: str
    labels: str | None = None
    on_bad_image: str = "error"
    on_overlap: str = "warn"
    train_folds: list[int] | None = None
    fold_plan: str = "grouped"
    threads: int = 0
    mixed_precision: str | None = None
    threshold_policy: str = "fixed:0.5"
    saliency_images: int = 16
    log_with: list[str] = field(default_factory=lambda: ["tensorboard"])
    report: bool = True
    no_ensemble: bool = False
    audit: bool = False
    resume: bool = False
    overwrite: bool = False
    config: str | None = None

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> RunSpec:
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


@dataclass(frozen=True)
class RunConfig:
    """Every stage's record of one run."""

    run: RunSpec
    decode: DecodeSpec
    splits: SplitSpec
    train: TrainSpec

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> RunConfig:
        """From a resolved config: `vars()` of the parsed flags, or a run's config.yaml."""
        return cls(
            RunSpec.from_config(values),
            DecodeSpec.from_config(values),
            SplitSpec.from_config(values),
            TrainSpec.from_config(values),
        )

    def to_config(self) -> dict[str, Any]:
        """The flat, flag-named mapping config.yaml records (`from_config`'s inverse)."""
        values = {**asdict(self.run), **self.decode.to_config(), **asdict(self.splits), **self.train.to_config()}
        return dict(sorted(values.items()))
