"""MixStyle and stochastic depth: feature-style mixing in training only, timm's drop path."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pneumo.models.factory import create_model
from pneumo.models.mixstyle import attach_mixstyle, mixstyle, stage_modules
from pneumo.utils.errors import PneumoError


def _styled_batch() -> torch.Tensor:
    """Four samples sharing one spatial pattern per channel, each with its own channel means and SDs."""
    torch.manual_seed(1)
    pattern = torch.randn(1, 3, 8, 8)
    pattern = (pattern - pattern.mean(dim=(2, 3), keepdim=True)) / pattern.std(dim=(2, 3), keepdim=True)
    means = torch.tensor([[0.0, 1.0, 2.0], [10.0, -5.0, 3.0], [-4.0, 0.5, 8.0], [6.0, 6.0, -6.0]])
    sds = torch.tensor([[1.0, 2.0, 0.5], [3.0, 0.2, 1.5], [0.7, 4.0, 2.5], [2.0, 1.0, 0.3]])
    return pattern * sds.view(4, 3, 1, 1) + means.view(4, 3, 1, 1)


def test_mixstyle_keeps_each_images_content_and_gives_it_a_mix_of_two_batch_styles():
    x = _styled_batch()
    means, sds = x.mean(dim=(2, 3)), x.std(dim=(2, 3))
    torch.manual_seed(0)
    out = mixstyle(x)
    # The normalised content is the image's own ...
    z = lambda t: (t - t.mean(dim=(2, 3), keepdim=True)) / t.std(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(z(out), z(x), atol=1e-4, rtol=1e-4)
    # ... and its style is lam * own + (1 - lam) * another sample's, one lam and partner for all channels.
    out_means, out_sds = out.mean(dim=(2, 3)), out.std(dim=(2, 3))
    for i in range(4):
        fits = []
        for j in range(4):
            d = means[i] - means[j]
            lam = 1.0 if torch.all(d.abs() < 1e-6) else float((out_means[i] - means[j]) @ d / (d @ d))
            ok = torch.allclose(out_means[i], lam * means[i] + (1 - lam) * means[j], atol=1e-3)
            ok = ok and torch.allclose(out_sds[i], lam * sds[i] + (1 - lam) * sds[j], atol=1e-3, rtol=1e-3)
            fits.append(ok and -1e-4 <= lam <= 1 + 1e-4)
        assert any(fits), i
    assert not torch.allclose(out, x, atol=1e-2)  # Beta(0.1, 0.1): some sample takes on another's style


def test_mixstyle_hooks_act_in_training_only_and_add_no_weights():
    plain = create_model("test_resnet", init="timm", dropout=0.0)
    mixed = copy.deepcopy(plain)
    attach_mixstyle(mixed, p=1.0)
    assert mixed.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(6, 3, 32, 32)
    plain.eval(), mixed.eval()
    torch.testing.assert_close(mixed(x), plain(x))
    plain.train(), mixed.train()
    torch.manual_seed(3)
    changed = mixed(x)
    assert not torch.allclose(changed, plain(x), atol=1e-4)
    torch.manual_seed(3)
    torch.testing.assert_close(mixed(x), changed)  # seeded: the same draws, the same result


def test_mixstyle_with_probability_zero_changes_nothing():
    plain = create_model("test_resnet", init="timm", dropout=0.0)
    mixed = copy.deepcopy(plain)
    attach_mixstyle(mixed, p=0.0)
    x = torch.randn(6, 3, 32, 32)
    torch.testing.assert_close(mixed.train()(x), plain.train()(x))


def test_mixstyle_goes_after_the_first_three_resnet_stages():
    model = create_model("resnet18", init="timm")
    assert stage_modules(model) == [model.layer1, model.layer2, model.layer3]


def test_a_model_without_feature_stages_is_refused_naming_the_flag():
    with pytest.raises(PneumoError, match="--mixstyle"):
        stage_modules(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))


def test_drop_path_gives_timms_stochastic_depth_rising_to_the_rate():
    model = create_model("resnet18", init="timm", drop_path=0.2)
    blocks = [block for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for block in stage]
    rates = [b.drop_path.drop_prob if b.drop_path is not None else 0.0 for b in blocks]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.2) and rates == sorted(rates)
    assert all(b.drop_path is None for b in create_model("resnet18", init="timm").layer4)


def test_drop_path_on_a_model_without_it_is_refused_naming_the_flag():
    with pytest.raises(PneumoError, match="--drop-path"):
        create_model("vgg11", drop_path=0.1)
