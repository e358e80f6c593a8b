"""arp's runtime math (the fused rotated Linear) against the reference formula, in float64.

The golden values were computed with the composed-autograd implementation before it was fused
(ac28821): outputs and gradients must not change. gradcheck proves the hand-written backward.
"""

import pytest
import torch
import torch.nn.functional as F

from vgpcompile.nn import AutoRotLinear
from vgpcompile.passes.arp import arp_linear
from vgpcompile.passes.arp.modules import rotated_linear

# (floor, bias) -> y.sum, (y^2).sum, dx.sum, (dx^2).sum, dW.sum, (dW^2).sum[, db.sum, (db^2).sum]; floor 0.5
# floors some units and not others, 3.0 floors every unit
GOLDEN = {
    (0.0, True): [-3.269522191464551, 21.786727442472444, 1.335571814302183, 30.42223043887132, -33.08869448273588,
                  210.0335846710028, 1.832794208654949, 5.990351022647447],
    (0.0, False): [3.00558479878804, 10.330274152101586, 0.7142898964483, 55.13292237990878, 11.012970902666572,
                   37.784272875395],
    (0.5, True): [-2.950539392984627, 20.815617605146716, 1.444710425001308, 26.84437275444655, -17.979600647820078,
                  161.05124969439322, 2.944718050047166, 8.06555248412684],
    (0.5, False): [1.829345659991219, 7.673187913445343, 1.297892361266495, 29.585540382721803, -3.602745335159865,
                   4.737785066785223],
    (3.0, True): [-0.780677844318518, 0.933473279124625, 0.354476975454776, 1.099900393272477, 1.427427235026609,
                  0.741357951606224, 1.071747913460673, 0.315849845784642],
    (3.0, False): [0.415972723568375, 0.282589264537754, 0.354476975454776, 1.099900393272477, -0.790629820534419,
                   0.210961297977872],
}  # fmt: skip


def _tensors(bias: bool, seed: int = 0, batch: tuple[int, ...] = (3,)):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(5, 4, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64) if bias else None
    x = torch.randn(*batch, 4, generator=g, dtype=torch.float64)
    return x, w, b


def reference(x, w, b, q: float, L: float, eps: float, floor: float) -> torch.Tensor:
    """The formula as the module docstring writes it, in composed autograd ops."""
    zq = q * w.sum(1) + (0 if b is None else b)
    den = torch.maximum(zq.abs(), floor * abs(q) * w.norm(dim=1))
    return F.linear(x, w, b) * (L / (den + eps))


@pytest.mark.parametrize("floor,bias", list(GOLDEN))
def test_rotated_linear_golden(floor, bias):
    x, w, b = _tensors(bias)
    lin = AutoRotLinear(4, 5, bias=bias, L=2.0, xQ=3.0, floor=floor, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(w)
        if bias:
            lin.bias.copy_(b)
    x.requires_grad_()
    y = lin(x)
    (y * torch.linspace(-1, 2, y.numel(), dtype=torch.float64).view_as(y)).sum().backward()
    got = [y.sum(), (y * y).sum(), x.grad.sum(), (x.grad**2).sum(), lin.weight.grad.sum(), (lin.weight.grad**2).sum()]
    if bias:
        got += [lin.bias.grad.sum(), (lin.bias.grad**2).sum()]
    assert [v.item() for v in torch.stack(got).detach()] == pytest.approx(GOLDEN[(floor, bias)], rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("floor", [0.0, 0.5, 3.0])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [(3,), (2, 3), ()], ids=["from-output", "from-weight-grad", "one-vector"])
def test_rotated_linear_matches_reference_and_gradcheck(floor, bias, batch):
    # 3 rows <= 4 inputs: dL/drho from the saved output; 6 rows (a (batch, seq) shape): from dW;
    # () an unbatched input, as F.linear takes it
    x, w, b = _tensors(bias, seed=1, batch=batch)
    inputs = [t.requires_grad_() for t in (x, w, b) if t is not None]
    opts = dict(q=1.5, L=2.0, eps=1e-5, floor=floor)

    def fused(*ts):
        return rotated_linear(ts[0], ts[1], ts[2] if bias else None, **opts)

    def ref(*ts):
        return reference(ts[0], ts[1], ts[2] if bias else None, **opts)

    y, y_ref = fused(*inputs), ref(*inputs)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    torch.testing.assert_close(
        torch.autograd.grad(y, inputs, g), torch.autograd.grad(y_ref, inputs, g), rtol=1e-10, atol=1e-12
    )
    assert torch.autograd.gradcheck(fused, tuple(inputs))


def test_rotated_linear_skips_gradients_not_asked_for():
    x, w, b = _tensors(True)
    w.requires_grad_()
    y = rotated_linear(x, w, b, q=3.0, L=2.0, eps=1e-5, floor=0.25)
    (gw,) = torch.autograd.grad(y.sum(), [w])
    torch.testing.assert_close(gw, torch.autograd.grad(reference(x, w, b, 3.0, 2.0, 1e-5, 0.25).sum(), [w])[0])


@pytest.mark.parametrize("wants", ["x", "b", "xb", "wb", "w"])
@pytest.mark.parametrize("batch", [(3,), (1, 3), (2, 3)], ids=["from-output", "3d-from-output", "from-weight-grad"])
@pytest.mark.parametrize("floor", [0.0, 0.5])
def test_rotated_linear_gradients_of_any_subset(wants, batch, floor):
    """Each input's gradient alone equals the reference's (the backward skips or reorders work
    by what is asked: dW's rank-1 pivot row, db as the column sum with dL/dz_Q)."""
    x, w, b = _tensors(True, seed=2, batch=batch)
    named = {"x": x, "w": w, "b": b}
    asked = [named[k].requires_grad_() for k in wants]
    g = torch.randn(*batch, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ours = torch.autograd.grad(rotated_linear(x, w, b, q=1.5, L=2.0, eps=1e-5, floor=floor), asked, g)
    ref = torch.autograd.grad(reference(x, w, b, 1.5, 2.0, 1e-5, floor), asked, g)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


def test_arp_linear_is_the_module():
    x, w, b = _tensors(True)
    lin = AutoRotLinear(4, 5, L=2.0, xQ=3.0, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    assert torch.equal(lin(x), arp_linear(x, w, b, L=2.0, q=3.0, floor=lin.floor))


def test_rotated_linear_refuses_double_backward():
    x, w, b = _tensors(True)
    w.requires_grad_()
    (gw,) = torch.autograd.grad(rotated_linear(x, w, b, q=3.0, L=2.0, eps=1e-5, floor=0.25).sum(), [w],
                                create_graph=True)  # fmt: skip
    with pytest.raises(RuntimeError, match="twice|once|does not require grad"):
        gw.sum().backward()


def test_low_precision_keeps_float32_rotation():
    lin = AutoRotLinear(3, 2, L=2.0, xQ=3.0, dtype=torch.bfloat16)
    x = torch.rand(4, 3, dtype=torch.bfloat16, requires_grad=True)
    y = lin(x)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and lin.weight.grad.dtype == torch.bfloat16 and x.grad is not None


def test_rotated_linear_compiles_whole():
    """Under torch.compile(fullgraph=True) the Function is traced (one graph, no break, no recompile
    over steps that change the weights); aot_eager is the compile stack without inductor's codegen."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    lin = AutoRotLinear(4, 5, L=2.0, xQ=3.0)
    eager = AutoRotLinear(4, 5, L=2.0, xQ=3.0)
    eager.load_state_dict(lin.state_dict())
    compiled = torch.compile(lin, fullgraph=True, backend="aot_eager")
    x = torch.randn(3, 4)
    for module in (compiled, eager):
        opt = torch.optim.SGD(module.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            module(x).tanh().square().sum().backward()
            opt.step()
    torch.testing.assert_close(lin.weight, eager.weight)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"] and not counters["recompiles"]


@pytest.mark.parametrize("floor", [0.0, 0.5, 3.0])
@pytest.mark.parametrize("bias", [True, False])
def test_compiled_rotated_linear_takes_rho_gradient_from_the_weight_gradient(floor, bias):
    """Eager takes t = sum_b g * y from the saved output at this batch (3 rows, 4 inputs); under
    torch.compile the Function saves no output and takes t from dW and db instead (fused into
    the pass over dW). Both must give the reference's gradients, in float64."""
    torch._dynamo.reset()
    x, w, b = _tensors(bias)
    upstream = torch.linspace(-1, 2, 15, dtype=torch.float64).view(3, 5)

    def grads(fn):
        leaves = [t.detach().clone().requires_grad_() for t in (x, w) + ((b,) if bias else ())]
        (fn(leaves[0], leaves[1], leaves[2] if bias else None) * upstream).sum().backward()
        return [t.grad for t in leaves]

    opts = dict(q=-0.7, L=2.0, eps=1e-5, floor=floor)
    compiled = torch.compile(lambda x, w, b: rotated_linear(x, w, b, **opts), fullgraph=True, backend="aot_eager")
    expected = grads(lambda x, w, b: reference(x, w, b, **opts))
    for got in (grads(lambda x, w, b: rotated_linear(x, w, b, **opts)), grads(compiled)):
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_torch_func_transforms_use_the_composed_form():
    x, w, b = _tensors(True)
    lin = AutoRotLinear(4, 5, L=2.0, xQ=3.0, floor=0.5, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    jac = torch.func.jacrev(lin)(x[0])
    expected = torch.autograd.functional.jacobian(lambda t: reference(t, w, b, 3.0, 2.0, 1e-5, 0.5), x[0])
    torch.testing.assert_close(jac, expected)
    torch.testing.assert_close(torch.func.vmap(lin)(x), lin(x))


class _InPlaceMLP(torch.nn.Module):
    """Linear -> in-place ReLU, in each spelling; the rotated Linear must not save what ReLU overwrites."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling = spelling
        self.a, self.b = torch.nn.Linear(6, 6), torch.nn.Linear(6, 3)
        self.act = torch.nn.ReLU(inplace=spelling == "module")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.spelling == "module":
            h = self.act(h)
        elif self.spelling == "function":
            h = F.relu(h, inplace=True)
        elif self.spelling == "torch":
            h = torch.relu_(h)
        elif self.spelling == "method":
            h = h.relu_()
        else:
            h = torch.relu(h)
        return self.b(h)


@pytest.mark.parametrize("spelling", ["module", "function", "torch", "method"])
def test_in_place_activation_after_rotated_linear_trains(spelling):
    """An in-place ReLU overwrote the rotated Linear's saved output (backward raised)."""
    from vgpcompile import vgpcompile

    torch.manual_seed(0)
    x = torch.randn(4, 6, dtype=torch.float64)
    grads = []
    for s in (spelling, "plain"):
        torch.manual_seed(1)
        model = _InPlaceMLP(s).double()
        compiled = vgpcompile(model, passes=["arp"], example_inputs=(x,))
        rotated = [m for m in compiled.modules() if isinstance(m, AutoRotLinear)]
        assert len(rotated) == 1 and rotated[0].save_output is (s == "plain")
        compiled(x).square().sum().backward()
        grads.append([p.grad for p in compiled.parameters()])
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch", [(3,), (2, 3)], ids=["from-output", "from-weight-grad"])
def test_rotated_linear_zero_weight_row_has_finite_gradients(batch):
    """A unit whose weights are all zero has ||W_j|| = 0: the floor's coefficient 1/||W_j|| is
    inf there, and must not reach dW as 0 * inf = NaN (the unit sits on its pivot, |b_j| > 0)."""
    x, w, b = _tensors(True, seed=4, batch=batch)
    w[1] = 0.0
    inputs = [t.requires_grad_() for t in (x, w, b)]
    y = rotated_linear(*inputs, q=1.5, L=2.0, eps=1e-5, floor=0.5)
    g = torch.randn_like(y)
    ours = torch.autograd.grad(y, inputs, g)
    assert all(torch.isfinite(t).all() for t in ours)
    ref = torch.autograd.grad(reference(*inputs, 1.5, 2.0, 1e-5, 0.5), inputs, g)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
