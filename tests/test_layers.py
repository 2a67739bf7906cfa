"""Our ViT building blocks equal timm's (which the models used to import), value for value."""

import pytest
import timm.layers as timm_layers
import torch

from endofm.models import layers


@pytest.mark.parametrize(("shape", "std"), [((1000,), 0.02), ((64, 96), 1.0)])
def test_trunc_normal_draws_what_timm_draws(shape, std):
    ours, theirs = torch.empty(shape), torch.empty(shape)
    torch.manual_seed(0)
    layers.trunc_normal_(ours, std=std)
    torch.manual_seed(0)
    timm_layers.trunc_normal_(theirs, std=std)
    assert torch.equal(ours, theirs) and ours.abs().max() <= 2.0


def test_drop_path_mlp_and_quick_gelu_equal_timms():
    x = torch.randn(8, 5, 16)
    torch.manual_seed(1)
    ours = layers.DropPath(0.3).train()(x)
    torch.manual_seed(1)
    assert torch.equal(ours, timm_layers.DropPath(0.3).train()(x))
    assert torch.equal(layers.DropPath(0.3).eval()(x), x)
    kept = (ours != 0).flatten(1).all(1)
    assert torch.allclose(ours[kept], x[kept] / 0.7)  # whole samples dropped, the rest scaled by 1 / keep
    assert torch.equal(layers.QuickGELU()(x), timm_layers.QuickGELU()(x))
    theirs = timm_layers.Mlp(16, 32)
    mlp = layers.Mlp(16, 32)
    mlp.load_state_dict(theirs.state_dict())  # same parameter names: fc1, fc2
    assert torch.equal(mlp(x), theirs(x))
