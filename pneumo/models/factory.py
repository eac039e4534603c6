"""timm models with the reference head (dropout + 2-class linear), init and freezing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from pneumo.utils.errors import PneumoError


@dataclass(frozen=True)
class ModelSpec:
    """The network a fold trains: a timm model `name` with its head's dropout, its starting weights
    (`pretrained` from the hub, a `pretrained_file`, else `init`) and its options (see `create_model`),
    and MixStyle's probability (0: off)."""

    name: str
    dropout: float = 0.3
    pretrained: bool = False
    pretrained_file: str | None = None
    init: str = "xavier"
    zero_init_last: bool = True
    drop_path: float = 0.0
    mixstyle: float = 0.0

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> ModelSpec:
        """From a run's config (`--model`, `--dropout`, ...)."""
        keys = ("dropout", "pretrained", "pretrained_file", "init", "zero_init_last", "drop_path", "mixstyle")
        return cls(values["model"], **{k: values[k] for k in keys if k in values})

    def to_config(self) -> dict[str, Any]:
        return {"model": self.name, **{k: v for k, v in vars(self).items() if k != "name"}}


def xavier_init(model: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every conv and linear layer (reference recipe)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def create_model(
    name: str,
    *,
    num_classes: int = 2,
    dropout: float = 0.3,
    pretrained: bool = False,
    pretrained_file: str | Path | None = None,
    init: str = "xavier",
    zero_init_last: bool = True,
    drop_path: float = 0.0,
) -> nn.Module:
    """`timm.create_model` with dropout before a fresh `num_classes` head.

    `pretrained_file` goes through timm's own pretrained loader (the classifier is dropped
    and re-initialised when its shape differs); `pretrained` downloads from the hub.
    Without either, `init` chooses Xavier-uniform or timm's default initialisation;
    `zero_init_last=False` keeps each residual block's last BatchNorm at weight 1 (torchvision);
    `drop_path` is timm's stochastic-depth rate (0: off).
    """
    kwargs = {"num_classes": num_classes, "drop_rate": dropout}
    if not zero_init_last:
        kwargs["zero_init_last"] = False
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    try:
        if pretrained_file:
            model = timm.create_model(
                name, pretrained=True, pretrained_cfg_overlay={"file": str(pretrained_file)}, **kwargs
            )
            _check_backbone_from(model, Path(pretrained_file), name)
            return model
        if pretrained:
            return timm.create_model(name, pretrained=True, **kwargs)
    except (RuntimeError, OSError, ValueError) as exc:
        source = f"--pretrained-file {pretrained_file}" if pretrained_file else "--pretrained (hub download)"
        raise PneumoError(f"{source}: cannot load weights into {name} ({str(exc).splitlines()[0]})") from exc
    try:
        model = timm.create_model(name, **kwargs)
    except TypeError as exc:
        flag = "--no-zero-init-last" if "zero_init_last" in str(exc) else "--drop-path"
        raise PneumoError(f"{flag}: {name} has no such option ({exc})") from exc
    if init == "xavier":
        xavier_init(model)
    return model


def _check_backbone_from(model: nn.Module, path: Path, name: str) -> None:
    """Refuse a weights file that does not hold exactly this model's backbone.

    timm loads non-strictly once it has dropped the classifier, so weights of another
    architecture would leave the model randomly initialised (or, from a deeper relative such
    as resnet34 into resnet18, partly loaded) with only a log line.
    """
    state = timm.models.load_state_dict(str(path))
    heads = model.pretrained_cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    backbone = lambda k: not any(k.startswith(f"{h}.") for h in heads) and not k.endswith("num_batches_tracked")
    own = model.state_dict()
    missing = [k for k in own if backbone(k) and k not in state]
    unexpected = [k for k in state if backbone(k) and k not in own]
    if missing or unexpected:
        raise PneumoError(
            f"--pretrained-file {path}: not {name} weights ({len(missing)} of its tensors missing, "
            f"{len(unexpected)} unexpected, e.g. {(missing or unexpected)[0]!r}); pass weights of {name}"
        )


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load a full state dict strictly; when it does not fit, one line naming `source` and what differs."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    reshaped = [k for k in own if k in state_dict and own[k].shape != state_dict[k].shape]
    if missing or unexpected or reshaped:
        example = (missing or unexpected or reshaped)[0]
        raise PneumoError(
            f"{source}: weights of another architecture than this {type(model).__name__} ({len(missing)} "
            f"missing, {len(unexpected)} unexpected, {len(reshaped)} wrong-shape tensors, e.g. {example!r})"
        )
    model.load_state_dict(state_dict, strict=True)


def set_head_only(model: nn.Module, head_only: bool) -> None:
    """Freeze (or unfreeze) every parameter outside the classifier."""
    head = {id(p) for p in model.get_classifier().parameters()}
    for p in model.parameters():
        p.requires_grad_(not head_only or id(p) in head)


def lr_groups(model: nn.Module, lr: float, backbone_lr_scale: float) -> list[dict]:
    """Optimizer parameter groups: the classifier at `lr` (first), the backbone at `lr` x `backbone_lr_scale`."""
    head = {id(p) for p in model.get_classifier().parameters()}
    return [
        {"params": [p for p in model.parameters() if id(p) in head], "lr": lr},
        {"params": [p for p in model.parameters() if id(p) not in head], "lr": lr * backbone_lr_scale},
    ]


def train_mode(model: nn.Module, head_only: bool) -> None:
    """model.train(); with `head_only`, batch-norm statistics of the frozen backbone stay fixed."""
    model.train()
    if head_only:
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.eval()
