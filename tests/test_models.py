"""Models: timm names, the dropout + 2-class head, Xavier init, local pretrained weights, freezing."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from safetensors.torch import save_file

from pneumo.models.factory import create_model, set_head_only, train_mode
from pneumo.utils.errors import PneumoError


def test_head_is_dropout_then_two_class_linear():
    model = create_model("resnet18", dropout=0.3)
    assert model.get_classifier().out_features == 2
    assert model.drop_rate == 0.3


def test_scratch_model_gets_xavier_uniform_weights():
    model = create_model("test_resnet", init="xavier")
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.numel() > 1000)
    fan_in = conv.weight[0].numel()
    fan_out = conv.weight.shape[0] * conv.weight[0, 0].numel()
    bound = math.sqrt(6 / (fan_in + fan_out))
    assert conv.weight.abs().max() <= bound
    assert conv.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.15)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_pretrained_file_loads_backbone_and_replaces_head(tmp_path, suffix):
    source = timm.create_model("test_resnet", num_classes=1000)
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    model = create_model("test_resnet", pretrained_file=path)
    loaded = model.state_dict()
    backbone = [k for k in state if not k.startswith("fc.")]
    assert backbone and all(torch.equal(loaded[k], state[k]) for k in backbone)
    assert loaded["fc.weight"].shape == (2, state["fc.weight"].shape[1])


def test_pretrained_file_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "r18.safetensors"
    save_file(timm.create_model("resnet18").state_dict(), str(path))
    with pytest.raises(PneumoError, match="cannot load weights into test_resnet"):
        create_model("test_resnet", pretrained_file=path)


def test_head_only_training_changes_only_the_head():
    torch.manual_seed(0)
    model = create_model("test_resnet")
    set_head_only(model, True)
    train_mode(model, True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(list(model.parameters()), lr=1e-2)
    loss = model(torch.randn(4, 3, 32, 32)).logsumexp(1).mean()
    loss.backward()
    opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"fc.weight", "fc.bias"}
    set_head_only(model, False)
    assert all(p.requires_grad for p in model.parameters())
