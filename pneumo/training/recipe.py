"""What a fold trains with, as typed records read from the run's config: the optimisation and the
whole training recipe (model, optimisation, augmentation, the inputs' geometry)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pneumo.data.augment import AugmentSpec
from pneumo.data.images import Preprocess
from pneumo.models.factory import ModelSpec


@dataclass(frozen=True)
class OptimSpec:
    """Optimisation: epochs and batches, the optimiser and its cosine schedule, class balance,
    regularisation (label smoothing, mixup/CutMix, weight EMA), the kept epoch, torch.compile."""

    epochs: int
    batch_size: int
    opt: str
    lr: float
    weight_decay: float
    min_lr: float
    backbone_lr_scale: float = 1.0
    warmup_epochs: float = 0.0
    freeze_epochs: int = 0
    balance: str = "sampler"
    select: str = "loss"
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    ema_decay: float = 0.0
    compile: bool = False

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> OptimSpec:
        """From a run's config (`--epochs`, `--lr`, ...)."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


@dataclass(frozen=True)
class TrainSpec:
    """Everything one fold's training reads: its seed, model, optimisation and augmentation, the
    inputs' geometry (recorded in its checkpoint), test-time augmentation, and what it keeps."""

    seed: int
    model: ModelSpec
    optim: OptimSpec
    augment: AugmentSpec
    image_size: int
    pre: Preprocess = field(default_factory=Preprocess)
    tta: str = "none"
    audit_samples: bool = False
    keep_state: bool = False

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> TrainSpec:
        """From a run's config."""
        keys = ("tta", "audit_samples", "keep_state")
        return cls(
            int(values["seed"]),
            ModelSpec.from_config(values),
            OptimSpec.from_config(values),
            AugmentSpec.from_config(values),
            int(values["image_size"]),
            Preprocess.from_dict(values),
            **{k: values[k] for k in keys if k in values},
        )

    def to_config(self) -> dict[str, Any]:
        """The record as a run's config keys (`from_config`'s inverse)."""
        return {
            "seed": self.seed,
            **self.model.to_config(),
            **asdict(self.optim),
            **self.augment.to_config(),
            "image_size": self.image_size,
            **asdict(self.pre),
            **{k: getattr(self, k) for k in ("tta", "audit_samples", "keep_state")},
        }

    def checkpoint_meta(self) -> dict[str, Any]:
        """What a fold checkpoint records of how it was made (pneumo.models.fold_model reads it)."""
        inputs = {"image_size": self.image_size, **asdict(self.pre)}
        return {"model": self.model.name, "dropout": self.model.dropout, **inputs, "tta": self.tta}
