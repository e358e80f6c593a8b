"""freeze folds GPN into declared affine layers (core/affine.py), on their own weight layout,
as into nn.Linear: transformers' Conv1D is one (tests/zoo/test_hf.py checks GPT-2 itself)."""

import warnings

import pytest
import torch
from torch import nn

from vgpcompile import VgpWarning, freeze, register_affine, vgpcompile
from vgpcompile.freeze import unfolded
from vgpcompile.nn import GPNActivation


class InOut(nn.Module):
    """x @ W + b with W stored (in, out), as transformers' Conv1D."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) / n_in**0.5)
        self.bias = nn.Parameter(torch.randn(n_out))

    def forward(self, x):
        return x @ self.weight + self.bias


class OutIn(InOut):
    """x @ W.T + b with W stored (out, in), as nn.Linear's, in a class torch does not know."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__(n_in, n_out)
        self.weight = nn.Parameter(self.weight.detach().T.contiguous())

    def forward(self, x):
        return x @ self.weight.T + self.bias


register_affine(InOut, layout="in_out")
register_affine(OutIn, layout="out_in")


@pytest.mark.parametrize("layer", [InOut, OutIn])
@pytest.mark.parametrize("act", [nn.GELU, nn.Tanh, nn.SiLU])
def test_gpn_folds_into_declared_affine_layers(layer, act):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), act(), layer(8, 5)).double()
    model = vgpcompile(net, ["gpn"]).eval()
    frozen = freeze(model)
    x = torch.randn(4, 6, dtype=torch.float64)
    assert (frozen(x) - model(x)).abs().max() < 1e-12
    assert not any(isinstance(m, GPNActivation) for m in frozen.modules()) and unfolded(frozen) == {}
    assert type(frozen.get_submodule("2")) is layer
    assert sorted(frozen.state_dict()) == sorted(net.state_dict())


def test_freeze_warns_and_lists_what_it_could_not_fold():
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh())  # the activation is the output: nothing to fold into
    model = vgpcompile(net, ["gpn"], select=["1"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frozen = freeze(model)
    assert unfolded(frozen) == {"1": ("gpn", False)}
    message = next(str(w.message) for w in caught if issubclass(w.category, VgpWarning))
    assert "1 (gpn)" in message and "not the original architecture" in message
