"""The baseline ladder: standard inits per activation, with the right scales."""

import math

import pytest
import torch
from torch import nn

from vgpcompile.tools.baselines import Arm, init_linear, ladder, plain_mlp, standard_inits


@pytest.mark.parametrize(
    "activation,first", [("relu", "kaiming"), ("leaky_relu", "kaiming"), ("selu", "lecun"), ("tanh", "xavier"),
                         ("sigmoid", "xavier"), ("gelu", "kaiming")],
)  # fmt: skip
def test_standard_init_comes_first(activation, first):
    inits = standard_inits(activation)
    assert inits[0] == first and len(inits) == len(set(inits)) == 5


@pytest.mark.parametrize(
    "init,activation,std", [("kaiming", "relu", math.sqrt(2 / 512)), ("lecun", "selu", math.sqrt(1 / 512)),
                            ("xavier", "tanh", 5 / 3 * math.sqrt(2 / (512 + 256)))],
)  # fmt: skip
def test_init_scales(init, activation, std):
    torch.manual_seed(0)
    layer = nn.Linear(512, 256)
    init_linear(layer, init, activation)
    assert abs(layer.weight.std().item() / std - 1) < 0.02
    assert torch.count_nonzero(layer.bias) == 0


def test_orthogonal_init_has_the_activation_gain():
    layer = nn.Linear(64, 64)
    init_linear(layer, "orthogonal", "tanh")
    w = layer.weight.detach() / (5 / 3)
    assert torch.allclose(w @ w.T, torch.eye(64), atol=1e-5)


def test_ladder_arms_build_the_architectures_they_name():
    arms = ladder("relu")
    assert [a.name for a in arms][-3:] == ["kaiming+batchnorm", "kaiming+layernorm", "kaiming+residual"]
    net = plain_mlp("relu", depth=3, width=8, d_in=2, d_out=2, arm=Arm("kaiming", norm="batch", residual=True))
    assert sum(isinstance(m, nn.BatchNorm1d) for m in net.modules()) == 3
    x = torch.randn(5, 2)
    assert net(x).shape == (5, 2)
