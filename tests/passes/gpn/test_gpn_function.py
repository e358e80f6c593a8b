"""gpn's output-form backward (modules._AffineFromOutput, derivatives.py) against the reference
a * phi(z) + b and its autograd gradient, in float64; where it is taken (under torch.compile) and
where not (eager, export, learnable a/b, in-place consumers); compile, export."""

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters

from vgpcompile import vgpcompile
from vgpcompile.core.catalogue import DEFAULT, Catalogue, register_activation
from vgpcompile.nn import GPNActivation
from vgpcompile.passes.gpn.derivatives import backward_from_output
from vgpcompile.passes.gpn.modules import _AffineFromOutput

# (kind, params): every activation and parameter setting with an exact output form
FORMS = [
    ("tanh", {}),
    ("sigmoid", {}),
    ("softsign", {}),
    ("arctan", {}),
    ("elu", {}),
    ("celu", {}),
    ("celu", {"alpha": 0.5}),
    ("celu", {"alpha": 2.0}),
    ("softplus", {}),
    ("softplus", {"beta": 2.0, "threshold": 5.0}),
]
# no exact output form: the derivative jumps at a kink, phi is not monotone, or a parameter rules it out
PLAIN = [
    ("relu", {}),
    ("leaky_relu", {}),
    ("relu6", {}),
    ("hardtanh", {}),
    ("selu", {}),
    ("elu", {"alpha": 0.5}),
    ("gelu", {}),
    ("silu", {}),
    ("hardswish", {}),
    ("mish", {}),
]
ids = [f"{k}{p or ''}" for k, p in FORMS]


def inputs(*shape, scale=3.0, seed=0, kink=True):
    z = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    if kink:
        z.view(-1)[:3] = torch.tensor([0.0, 1e-9, -1e-9])  # at the kink and a hair either side
    return z.requires_grad_()


def module(kind, params, root="minus", negate=False, dtype=torch.float64):
    gpn = GPNActivation(kind, params, root=root).to(dtype)
    if negate:
        gpn.a.neg_()  # a < 0: the same formula, t = (y - b) / a
    return gpn


def reference(gpn, z):
    return gpn.a * gpn.activation.fn(z, **gpn.params) + gpn.b


def output_form(gpn, z):
    """The Function the module takes under torch.compile, called directly (eager keeps the addcmul)."""
    return _AffineFromOutput.apply(z, gpn.a, gpn.b, gpn.activation.fn, gpn.params, gpn.from_output)


def compiled_graphs(fn, *args):
    """The FX graphs dynamo hands its backend for fn(*args), run eagerly."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    out = torch.compile(fn, backend=backend, fullgraph=True)(*args)
    return out, graphs


def takes_the_function(graphs) -> bool:
    nodes = [n for g in graphs for n in g.graph.nodes]
    return any(n.op == "call_function" and "autograd_function_apply" in str(n.target) for n in nodes)


@pytest.mark.parametrize("kind,params", FORMS, ids=ids)
@pytest.mark.parametrize("root,negate", [("minus", False), ("plus", False), ("minus", True)])
def test_output_form_is_the_reference(kind, params, root, negate):
    gpn = module(kind, params, root, negate)
    z = inputs(7, 9)
    y = output_form(gpn, z)
    assert type(y.grad_fn).__name__ == "_AffineFromOutputBackward"
    y_ref = reference(gpn, z)
    torch.testing.assert_close(y, y_ref, rtol=1e-14, atol=1e-14)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (ours,), (ref,) = torch.autograd.grad(y, [z], g), torch.autograd.grad(y_ref, [z], g)
    # t = (y - b) / a carries y's rounding: phi' moves by a few ulps of max|a phi'|
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("kind,params", FORMS, ids=ids)
def test_output_form_gradcheck_and_double_backward(kind, params):
    gpn = module(kind, params)
    z = inputs(3, 4, scale=1.5, kink=False)  # finite differences across a kink of phi' (softsign, celu) fail
    assert torch.autograd.gradcheck(lambda z: output_form(gpn, z), (z,))
    assert torch.autograd.gradgradcheck(lambda z: output_form(gpn, z), (z,))


@pytest.mark.parametrize("kind,params", FORMS[:3], ids=ids[:3])
def test_eager_keeps_the_addcmul_and_compile_takes_the_function(kind, params):
    """Eager: autograd's own addcmul (the Function costs more there); torch.compile: the Function,
    whose gradients are the reference's."""
    gpn = module(kind, params)
    z = inputs(5, 6)
    assert type(gpn(z).grad_fn).__name__ == "AddcmulBackward0"
    y, graphs = compiled_graphs(gpn, z)
    assert takes_the_function(graphs)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (ours,), (ref,) = torch.autograd.grad(y, [z], g), torch.autograd.grad(reference(gpn, z), [z], g)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("kind,params", PLAIN, ids=[f"{k}{p or ''}" for k, p in PLAIN])
def test_no_output_form_keeps_the_plain_path(kind, params):
    gpn = module(kind, params)
    z = inputs(4, 5)
    assert gpn.from_output is None and type(gpn(z).grad_fn).__name__ == "AddcmulBackward0"
    assert not takes_the_function(compiled_graphs(gpn, z)[1])


def test_a_user_activation_under_a_builtin_name_is_not_taken_for_it():
    cat = Catalogue()
    act = register_activation("tanh", lambda x: torch.tanh(2 * x), catalogue=cat)
    assert backward_from_output(act, {}) is None
    assert backward_from_output(DEFAULT.get("tanh"), {}) is not None


@pytest.mark.parametrize("kind,params", [("tanh", {}), ("softplus", {}), ("relu", {})])
def test_learnable_a_b_keep_the_plain_path_and_their_gradients(kind, params):
    gpn = GPNActivation(kind, params, learnable=True).double()
    z = inputs(6, 5)
    y = gpn(z)
    assert type(y.grad_fn).__name__ == "AddcmulBackward0"
    assert not takes_the_function(compiled_graphs(gpn, z)[1])
    a, b = gpn.a.detach().clone().requires_grad_(), gpn.b.detach().clone().requires_grad_()
    y_ref = a * gpn.activation.fn(z, **gpn.params) + b
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(y, [z, gpn.a, gpn.b], g), torch.autograd.grad(y_ref, [z, a, b], g))


def test_a_zero_gives_a_zero_gradient_not_nan():
    gpn = module("tanh", {})
    gpn.a.zero_()
    z = inputs(3, 4)
    (grad,) = torch.autograd.grad(output_form(gpn, z).sum(), [z])
    assert torch.equal(grad, torch.zeros_like(grad))


def test_no_grad_and_inputs_without_grad_take_the_plain_formula():
    gpn = module("tanh", {})
    z = inputs(3, 4).detach()
    assert not takes_the_function(compiled_graphs(gpn, z)[1])
    with torch.no_grad():
        assert not takes_the_function(compiled_graphs(gpn, z.requires_grad_())[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind,params", [("tanh", {}), ("sigmoid", {}), ("softplus", {})])
def test_low_precision_is_as_accurate_as_the_plain_path(kind, params, dtype):
    """Against float64, the largest gradient error is within 4x the plain path's (measured: tanh 2.4x in
    float32, 2.7x in bfloat16; sigmoid 1.6x, 3.1x; softplus 1.0x, 2.3x): t read back from y carries y's
    rounding, which is coarser than t's own where |y| > |t|."""
    gpn = module(kind, params, dtype=dtype)
    z = inputs(64, 32).detach().to(dtype).requires_grad_()
    errors = []
    for path in (output_form, lambda gpn, z: gpn(z)):  # the Function, then eager's plain addcmul
        y = path(gpn, z)
        (grad,) = torch.autograd.grad(y, [z], torch.ones_like(y))
        z64 = z.detach().double().requires_grad_()
        y64 = gpn.a.double() * gpn.activation.fn(z64, **gpn.params) + gpn.b.double()
        (ref,) = torch.autograd.grad(y64, [z64], torch.ones_like(y64))
        assert grad.dtype == dtype
        errors.append((grad.double() - ref).abs().max().item())
    ours, plain = errors
    assert ours <= 4 * plain


def test_torch_func_transforms_take_the_plain_formula():
    gpn = module("tanh", {})
    z = inputs(3, 4)
    jac = torch.func.jacrev(gpn)(z[0])
    torch.testing.assert_close(jac, torch.autograd.functional.jacobian(lambda t: reference(gpn, t), z[0]))
    torch.testing.assert_close(torch.func.vmap(gpn)(z), gpn(z))


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 8), nn.CELU(),
                         nn.Linear(8, 3))  # fmt: skip


def test_compiles_whole_without_recompiles_and_trains_as_eager():
    torch._dynamo.reset()
    counters.clear()
    model = vgpcompile(mlp(), passes=["gpn"])
    twin = vgpcompile(mlp(), passes=["gpn"])
    assert sum(m.from_output is not None for m in model.modules() if isinstance(m, GPNActivation)) == 3
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(2))
    losses = []
    for net in (compiled, twin):
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        run = []
        for _ in range(4):
            opt.zero_grad()
            loss = F.mse_loss(net(x), torch.ones(5, 3))
            loss.backward()
            opt.step()
            run.append(loss.item())
        losses.append(run)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=1e-7)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"] and not counters["recompiles"]


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_training_form_exports_to_onnx(dynamo):
    """The training form (GPNActivation in the graph, parameters requiring grad) exports: the
    export traces the plain addcmul, a Python Function having no ONNX symbolic."""
    onnx = pytest.importorskip("onnx")
    model = vgpcompile(mlp(), passes=["gpn"])
    x = torch.randn(2, 6)
    buffer = io.BytesIO()
    if dynamo:
        torch.onnx.export(model, (x,), verbose=False, dynamo=True).save(buffer)
    else:
        torch.onnx.export(model, (x,), buffer, dynamo=False)
    ops = {node.op_type for node in onnx.load_from_string(buffer.getvalue()).graph.node}
    assert "Tanh" in ops and "Sigmoid" in ops
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x))


class _MutatesActivation(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x))
        h.mul_(2.0)  # an in-place consumer: a saved y would be overwritten
        return self.b(h)


def test_a_consumer_changing_the_output_in_place_keeps_the_plain_path():
    model = vgpcompile(_MutatesActivation(), passes=["gpn"])
    gpns = [m for m in model.modules() if isinstance(m, GPNActivation)]
    assert len(gpns) == 1 and gpns[0].from_output is None
    model(torch.randn(3, 4)).sum().backward()  # the Function's saved y would make autograd refuse this
    plain = vgpcompile(mlp(), passes=["gpn"])
    assert all(m.from_output is not None for m in plain.modules() if isinstance(m, GPNActivation))


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin, self.act, self.out = nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.lin(x))
        if h.sum() > 1e9:  # data-dependent: the root stays eager, its tanh is an eager site
            h = h * 2
        return self.out(h)


def test_a_site_in_eager_code_keeps_the_plain_path():
    """The pass cannot see what eager code does with y, so it does not make the backward read it."""
    model = vgpcompile(_Untraceable(), passes=["gpn"])
    gpns = [m for m in model.modules() if isinstance(m, GPNActivation)]
    assert len(gpns) == 1 and gpns[0].from_output is None
