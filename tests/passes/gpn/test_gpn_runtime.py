"""gpn's runtime module against its reference math a * phi(x) + b, in float64 (outputs and gradients)."""

import pytest
import torch

from vgpcompile.core.catalogue import DEFAULT
from vgpcompile.nn import GPNActivation


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "gelu", "selu", "softplus", "silu"])
@pytest.mark.parametrize("learnable", [False, True])
def test_gpn_activation_is_its_formula(name, learnable):
    gpn = GPNActivation(name, learnable=learnable).double()
    act = DEFAULT.get(name)
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
    a, b = gpn.a.detach().clone().requires_grad_(), gpn.b.detach().clone().requires_grad_()
    y, y_ref = gpn(x), a * act.fn(x, **gpn.params) + b
    torch.testing.assert_close(y, y_ref, rtol=1e-14, atol=1e-14)
    g = torch.randn_like(y)
    ours = torch.autograd.grad(y, [x, *([gpn.a, gpn.b] if learnable else [])], g)
    ref = torch.autograd.grad(y_ref, [x, a, b] if learnable else [x], g)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradcheck(lambda t: gpn(t), (x,))
