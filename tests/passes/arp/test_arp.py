"""The arp pass and the auto-rotated affine layers: golden values, invariants, spellings, freeze."""

import pytest
import torch
import torch.nn.functional as F
from helpers import max_abs
from torch import fx, nn

from vgpcompile import UsageError, freeze
from vgpcompile import vgpcompile as compile_
from vgpcompile.nn import (
    AutoRotConv1d,
    AutoRotConv2d,
    AutoRotConv3d,
    AutoRotConvTranspose1d,
    AutoRotConvTranspose2d,
    AutoRotConvTranspose3d,
    AutoRotLinear,
)
from vgpcompile.passes.arp import DEFAULT_FLOOR, arp_linear

# research/arp.md §7 (arpkeras 1.0.0, TF 2.15.1, float32)
W_KERAS = [[0.5, -0.3], [0.2, 0.4], [-0.1, 0.25]]
B = [0.1, -0.2]
X = [[0.0, 0.5, 1.0], [1.0, 1.0, 0.0]]
KERNEL = [[-0.35, -0.25, -0.15], [-0.05, 0.05, 0.15], [0.25, 0.35, 0.45]]
CONV_REF = [
    [0.295934, 0.356461, 0.421767, 0.506663],
    [0.895993, 1.515773, 1.578930, 15.196890],
    [1.151991, 1.768402, 1.831559, 15.196893],
    [-0.019047, -0.423185, -0.492749, -0.631879],
]


def ref_rho(zq: torch.Tensor, norms: torch.Tensor, q: float, L: float, floor: float = DEFAULT_FLOOR) -> torch.Tensor:
    """rho = L / (max(|z_Q|, floor * |q| * ||w_unit||) + eps), written out (floor 0: the reference)."""
    return L / (torch.maximum(zq.abs(), floor * abs(q) * norms) + 1e-5)


def golden_linear(cls=nn.Linear, **kw) -> nn.Module:
    layer = cls(3, 2, **kw)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(W_KERAS).T)
        layer.bias.copy_(torch.tensor(B))
    return layer


def golden_conv(cls=nn.Conv2d, padding=1, **kw) -> nn.Module:
    conv = cls(1, 1, 3, padding=padding, **kw)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(KERNEL).view(1, 1, 3, 3))
        conv.bias.fill_(0.05)
    return conv


# ---------- golden values ----------


def test_golden_dense_outputs_and_gradients():
    layer = golden_linear(AutoRotLinear, L=4.0, xmin=0.0, xmax=1.0)
    assert layer.q == 2.0
    out = layer(torch.tensor(X))
    assert max_abs(out, torch.tensor([[0.307690, 1.999960], [2.461520, -0.799984]])) < 1e-5
    assert max_abs(layer.rho(), torch.tensor([3.0768995, 7.9998400])) < 1e-5
    out.sum().backward()
    grad_w = torch.tensor([[-1.183391, 3.200033], [0.355059, 7.199953], [-1.183391, 3.200033]])
    assert max_abs(layer.weight.grad.T, grad_w) < 1e-5
    assert max_abs(layer.bias.grad, torch.tensor([4.023654, 13.599776])) < 1e-5


@pytest.mark.parametrize(
    "act,input_range,expected",
    [
        (nn.Sigmoid, (0.0, 1.0), [[0.576321, 0.880793], [0.921400, 0.310029]]),
        (nn.Tanh, (-1.0, 1.0), [[0.104876, 0.528620], [0.686920, -0.231043]]),  # q = 3, L = 2 from the catalogue
    ],
)
def test_golden_dense_through_the_pass(act, input_range, expected):
    model = nn.Sequential(golden_linear(), act())
    # the output activation is left alone by default: select it by name to rotate it
    out = compile_(model, ["arp"], select=["1"], input_range=input_range)
    assert isinstance(out.get_submodule("0"), AutoRotLinear)
    assert max_abs(out(torch.tensor(X)), torch.tensor(expected)) < 1e-5


def test_golden_conv2d_valid_interior():
    interior = torch.tensor(CONV_REF)[1:3, 1:3]
    x = (torch.arange(16.0) / 15).view(1, 1, 4, 4)
    valid = golden_conv(AutoRotConv2d, padding=0, L=2.0)
    assert max_abs(valid(x)[0, 0], interior) < 1e-5
    same = golden_conv(AutoRotConv2d, padding=1, L=2.0)  # per channel: the interior is the same
    assert max_abs(same(x)[0, 0, 1:3, 1:3], interior) < 1e-5


def test_reference_per_position_pivot_reproduces_the_border_blow_up():
    x = (torch.arange(16.0) / 15).view(1, 1, 4, 4)
    ref = golden_conv(AutoRotConv2d, padding=1, L=2.0, pivot="position", floor=0.0)
    torch.testing.assert_close(ref(x)[0, 0], torch.tensor(CONV_REF), rtol=1e-5, atol=1e-5)
    ours = golden_conv(AutoRotConv2d, padding=1, L=2.0)
    assert ours(x).abs().max() < 2.0  # no 15.2 at the border: rho is per channel
    with pytest.raises(UsageError, match="pivot='position'"):
        ref.fold()


# ---------- invariants (research/arp.md §4) ----------

LAYERS = [  # the reference formula (floor 0); the floored form has its own tests below
    lambda: AutoRotLinear(7, 5, L=4.0, floor=0.0),
    lambda: AutoRotConv2d(3, 4, 3, padding=1, L=2.0, xmin=-1.0, xmax=1.0, floor=0.0),
    lambda: AutoRotConvTranspose2d(4, 6, 3, stride=2, groups=2, L=4.0, floor=0.0),
]
INPUTS = [(7,), (3, 6, 6), (4, 5, 5)]


def _unrotated(layer):
    """The plain torch layer with the same weights (fold() with the rotation off)."""
    layer.rotate = False
    try:
        return layer.fold()
    finally:
        layer.rotate = True


def unit_weights(layer, weight=None) -> list[torch.Tensor]:
    """Each output unit's weights (of ``weight``, default the layer's), gathered independently
    of the layer's own code."""
    w = (layer.weight if weight is None else weight).detach()
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        ipg, cpg = w.shape[0] // layer.groups, w.shape[1]
        return [w[(c // cpg) * ipg : (c // cpg + 1) * ipg, c % cpg] for c in range(layer.out_channels)]
    return list(w.reshape(w.shape[0], -1))


def pivot_values(layer) -> torch.Tensor:
    """z_Q per unit, computed independently of the layer's own code."""
    sums = torch.stack([u.sum() for u in unit_weights(layer)])
    return layer.q * sums + (layer.bias.detach() if layer.bias is not None else 0.0)


def unit_norm(layer) -> torch.Tensor:
    return torch.stack([u.norm() for u in unit_weights(layer)])


@pytest.mark.parametrize("make,shape", list(zip(LAYERS, INPUTS)))
def test_i1_sign_and_zero_set_kept_i4_rho_independent_of_data(make, shape):
    layer = make()
    x = torch.rand(8, *shape) * 2 - 0.5
    z, z_ar = _unrotated(layer)(x), layer(x)
    assert torch.equal(torch.sign(z_ar), torch.sign(z))
    rho = layer.rho().detach()
    assert torch.allclose(rho, layer.L / (pivot_values(layer).abs() + layer.eps), rtol=1e-6)
    expect = z * rho.view(1, -1, *([1] * (z.dim() - 2)))
    assert torch.allclose(z_ar, expect, rtol=1e-5, atol=1e-5)  # one rho for every row: I4
    assert torch.allclose(layer(x[3:4]), z_ar[3:4], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make,shape", list(zip(LAYERS[:2], INPUTS[:2])))
def test_i2_pivot_is_pinned_to_L(make, shape):
    layer = make()
    if isinstance(layer, nn.Conv2d):
        layer.padding = (0, 0)  # the pivot image sees every tap
    out = layer(torch.full((1, *shape), layer.q)).detach().reshape(layer.weight.shape[0], -1)
    zq = pivot_values(layer).abs()
    expected = layer.L * zq / (zq + layer.eps)
    assert torch.allclose(out.abs(), expected[:, None].expand_as(out), rtol=1e-5)


@pytest.mark.parametrize("make,shape", list(zip(LAYERS, INPUTS)))
def test_i3_rotate_false_is_the_plain_layer_and_i8_parameters_unchanged(make, shape):
    layer = make()
    x = torch.randn(4, *shape)
    plain = _unrotated(layer)
    assert type(plain).__name__ == type(layer).__name__.replace("AutoRot", "")
    layer.rotate = False
    assert torch.equal(layer(x), plain(x))
    assert sum(p.numel() for p in layer.parameters()) == sum(p.numel() for p in plain.parameters())
    assert list(layer.state_dict()) == list(plain.state_dict())


@pytest.mark.parametrize("make,shape", list(zip(LAYERS, INPUTS)))
def test_i5_positive_scale_invariance_up_to_eps(make, shape):
    layer = make()
    x = torch.rand(4, *shape)
    before = layer(x).detach()
    with torch.no_grad():
        layer.weight.mul_(10.0)
        layer.bias.mul_(10.0)
    after = layer(x).detach()
    # rho*z changes only through eps: relative change <= eps / |z_Q| per unit
    rel = (layer.eps / pivot_values(layer).abs() * 10).view(1, -1, *([1] * (before.dim() - 2)))
    assert ((after - before).abs() <= rel * before.abs() + 1e-6).all()


def test_i6_box_bound_holds_in_the_proven_cases_and_fails_otherwise():
    grid = torch.linspace(0, 1, 201)
    # (a) n = 1 with the zero crossing x0 = -b/w <= xmax
    for x0 in (-3.0, 0.5, 1.0):
        unit = AutoRotLinear(1, 1, L=4.0)
        with torch.no_grad():
            unit.weight.fill_(1.0)
            unit.bias.fill_(-x0)
        assert unit(grid[:, None]).abs().max() <= 4.0 + 1e-5
    # ... and it fails past xmax (research/arp.md §4: max 20 at x0 = 2.5)
    with torch.no_grad():
        unit.bias.fill_(-2.5)
    assert unit(grid[:, None]).abs().max().item() == pytest.approx(20.0, rel=1e-4)
    # (b) weights of one sign with -b/sum(w) <= xmax, checked on the box corners and random points
    layer = AutoRotLinear(5, 16, L=4.0)
    with torch.no_grad():
        layer.weight.uniform_(0.0, 1.0)
        layer.bias.copy_(-layer.weight.sum(1) * torch.rand(16))
    corners = torch.cartesian_prod(*[torch.tensor([0.0, 1.0])] * 5)
    assert layer(torch.cat([corners, torch.rand(500, 5)])).abs().max() <= 4.0 + 1e-5
    # mixed signs: w = (1, -1), b = 0 has z_Q = 0, so rho = L/eps and the bound fails by far
    mixed = AutoRotLinear(2, 1, L=4.0, floor=0.0)
    with torch.no_grad():
        mixed.weight.copy_(torch.tensor([[1.0, -1.0]]))
        mixed.bias.zero_()
    assert mixed(torch.tensor([[1.0, 0.0]])).item() == pytest.approx(4e5, rel=1e-6)
    # the floor bounds it: rho <= L / (floor * q * ||w||) = 4 / (0.25 * 2 * sqrt(2))
    mixed.floor = 0.25
    assert mixed(torch.tensor([[1.0, 0.0]])).item() == pytest.approx(4 / (0.5 * 2**0.5), rel=1e-4)


# ---------- the floor (the default bounded form) ----------

FLOORED = [
    lambda: AutoRotLinear(64, 32, L=4.0),
    lambda: AutoRotConv2d(8, 16, 3, padding=1, L=2.0, xmin=-1.0, xmax=1.0),
    lambda: AutoRotConvTranspose2d(16, 32, 3, stride=2, groups=2, L=4.0),
]


@pytest.mark.parametrize("make", FLOORED)
def test_floor_bounds_rho_and_leaves_well_posed_units_as_the_reference(make):
    layer = make()
    assert layer.floor == DEFAULT_FLOOR == 0.25
    zq, norms = pivot_values(layer), unit_norm(layer)
    rho = layer.rho().detach()
    torch.testing.assert_close(rho, ref_rho(zq, norms, layer.q, layer.L), rtol=1e-5, atol=0)
    floored = zq.abs() < layer.floor * abs(layer.q) * norms
    assert floored.any() and not floored.all()  # default init: some units have a near-zero pivot
    reference = layer.L / (zq.abs() + layer.eps)
    torch.testing.assert_close(rho[~floored], reference[~floored], rtol=1e-6, atol=0)  # the others: the reference
    assert (rho[floored] < reference[floored]).all()
    assert ((rho * zq).abs() <= layer.L * (1 + 1e-6)).all()  # the pivot: at most L (L where not floored)
    # every rotated weight row has norm <= L / (floor * |q|), whatever the init
    w, _ = layer.rotated_parameters()
    rows = torch.stack([u.norm() for u in unit_weights(layer, w)])
    assert (rows <= layer.L / (layer.floor * abs(layer.q)) * (1 + 1e-5)).all()


@pytest.mark.parametrize("make", FLOORED)
def test_floor_keeps_sign_scale_invariance_and_gradients(make):
    layer = make().double()
    shape = {AutoRotLinear: (64,), AutoRotConv2d: (8, 5, 5), AutoRotConvTranspose2d: (16, 3, 3)}[type(layer)]
    x = torch.rand(3, *shape, dtype=torch.float64) * 2 - 0.5
    before = layer(x).detach()
    assert torch.equal(torch.sign(before), torch.sign(_unrotated(layer)(x)))
    with torch.no_grad():
        layer.weight.mul_(10.0)
        layer.bias.mul_(10.0)
    assert max_abs(layer(x), before) < 1e-4 * before.abs().max()
    small = make().double()
    params = tuple(p.detach().clone().requires_grad_() for p in (small.weight, small.bias))
    xs = torch.rand(1, *shape, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda w, b: _with(small, w, b)(xs), params)


@pytest.mark.parametrize("make,shape", list(zip(LAYERS, INPUTS)))
def test_i7_gradients_flow_through_rho(make, shape):
    layer = make().double()
    x = torch.rand(2, *shape, dtype=torch.float64)
    params = tuple(p.detach().clone().requires_grad_() for p in (layer.weight, layer.bias))
    assert torch.autograd.gradcheck(lambda w, b: _with(layer, w, b)(x), params)
    # the rho-detached gradient is a different one
    full = torch.autograd.grad(layer(x).sum(), layer.weight)[0]
    rho = layer.rho().detach().view(1, -1, *([1] * (x.dim() - 2)))
    layer.rotate = False
    detached = torch.autograd.grad((layer(x) * rho).sum(), layer.weight)[0]
    assert max_abs(full, detached) > 1e-3


def _with(layer, w, b):
    return lambda x: torch.func.functional_call(layer, {"weight": w, "bias": b}, (x,))


# ---------- every producer and spelling, through the pass; freeze parity ----------


def _mlp(act_call):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 2)
            if isinstance(act_call, nn.Module):
                self.act = act_call

        def forward(self, x):
            return self.fc2(getattr(self, "act", act_call)(self.fc1(x)))

    return Net()


SPELLINGS = {
    "module": nn.Sigmoid(),
    "function": torch.sigmoid,
    "method": lambda t: t.sigmoid(),
    "F.tanh": F.tanh,
    "inplace": lambda t: t.sigmoid_(),
    "relu_inplace": lambda t: F.relu(t, inplace=True),
}


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_every_activation_spelling(spelling):
    model = _mlp(SPELLINGS[spelling])
    out = compile_(model, ["arp"], input_range=(0.0, 1.0))
    assert isinstance(out.fc1, AutoRotLinear)
    assert out.vgp_report.changed_count("arp") == 1
    x = torch.rand(16, 4)
    expected = _expected_mlp(model, SPELLINGS[spelling], out.fc1.L, x)
    assert max_abs(out(x), expected) < 1e-5
    assert max_abs(freeze(out)(x), out(x)) < 1e-5


def _expected_mlp(model, act, L, x):
    w, b = model.fc1.weight, model.fc1.bias
    rho = ref_rho(2.0 * w.sum(1) + b, w.norm(dim=1), 2.0, L)
    return model.fc2(act(F.linear(x, w, b) * rho))


def _conv_cases():
    return [
        ("conv1d", lambda: nn.Conv1d(3, 4, 3), (3, 9)),
        ("conv1d_reflect_stride", lambda: nn.Conv1d(3, 4, 3, stride=2, padding=2, padding_mode="reflect"), (3, 9)),
        ("conv2d_same_dilated", lambda: nn.Conv2d(3, 6, 3, padding="same", dilation=2), (3, 8, 8)),
        ("conv2d_groups_circular", lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2, padding_mode="circular"), (4, 6, 6)),
        ("conv2d_depthwise", lambda: nn.Conv2d(4, 8, 3, padding=1, groups=4, bias=False), (4, 6, 6)),
        ("conv3d", lambda: nn.Conv3d(2, 3, 2, stride=(1, 2, 1)), (2, 4, 5, 4)),
        ("convT1d", lambda: nn.ConvTranspose1d(3, 4, 3, stride=2, output_padding=1), (3, 5)),
        ("convT2d_groups", lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=2, dilation=2), (4, 4, 4)),
        ("convT2d_depthwise", lambda: nn.ConvTranspose2d(4, 4, 2, groups=4, bias=False), (4, 3, 3)),
        ("convT3d", lambda: nn.ConvTranspose3d(2, 3, 2, stride=2), (2, 2, 3, 2)),
    ]


def expected_rho(conv: nn.Module, L: float, q: float) -> torch.Tensor:
    """rho from q * (sum of each output channel's kernel) + bias and the kernel's norm, channel by channel."""
    w = conv.weight.detach()
    units = []
    for c in range(conv.out_channels):
        if isinstance(conv, nn.modules.conv._ConvTransposeNd):
            cpg = conv.out_channels // conv.groups
            ipg = conv.in_channels // conv.groups
            g, j = divmod(c, cpg)
            units.append(w[g * ipg : (g + 1) * ipg, j])
        else:
            units.append(w[c])
    zq = q * torch.stack([u.sum() for u in units]) + (conv.bias.detach() if conv.bias is not None else 0.0)
    return ref_rho(zq, torch.stack([u.norm() for u in units]), q, L)


@pytest.mark.parametrize("name,make,shape", _conv_cases(), ids=[c[0] for c in _conv_cases()])
def test_every_conv_layer_type(name, make, shape):
    conv = make()
    model = nn.Sequential(conv, nn.Tanh(), nn.Flatten(), nn.LazyLinear(3))
    x = torch.rand(2, *shape) * 2 - 1
    model(x)  # materialise the lazy head
    out = compile_(model, ["arp"], input_range=(-1.0, 1.0))
    rotated = out.get_submodule("0")
    assert type(rotated).__name__ == "AutoRot" + type(conv).__name__
    assert rotated.L == 2.0 and rotated.q == 3.0
    rho = expected_rho(conv, 2.0, 3.0).view(1, -1, *([1] * (x.dim() - 2)))
    expected = model[3](torch.tanh(conv(x) * rho).flatten(1))
    assert max_abs(out(x), expected) < 1e-5
    frozen = freeze(out)
    assert type(frozen.get_submodule("0")) is type(conv)
    assert max_abs(frozen(x), out(x)) < 1e-5
    assert list(out.state_dict()) == list(model.state_dict())


def test_functional_producers_are_rotated_and_frozen_exactly():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1, self.b1 = nn.Parameter(torch.randn(6, 3)), nn.Parameter(torch.randn(6))
            self.k = nn.Parameter(torch.randn(4, 2, 3, 3) * 0.3)
            self.kt = nn.Parameter(torch.randn(4, 2, 2, 2) * 0.3)
            self.head = nn.Linear(6, 1)

        def forward(self, x, img):
            h = torch.tanh(F.linear(x, self.w1, self.b1))
            c = torch.sigmoid(F.conv2d(img, self.k, None, 1, 1, 1, 2))
            t = torch.sigmoid(F.conv_transpose2d(c, self.kt, stride=2, groups=2))
            return self.head(h) + t.mean((1, 2, 3))[:, None]

    model = Net()
    x, img = torch.rand(5, 3), torch.rand(5, 4, 6, 6)
    out = compile_(model, ["arp"], example_inputs=(x, img))
    assert out.vgp_report.changed_count("arp") == 3
    names = [n.target.__name__ for n in out.graph.nodes if n.op == "call_function" and "arp" in str(n.target)]
    assert names == ["arp_linear", "arp_conv2d", "arp_conv_transpose2d"]
    # the same network written out with rho per unit: q from each input's range, L from the activation
    w1, b1, k, kt = (t.detach() for t in (model.w1, model.b1, model.k, model.kt))
    q_x, q_img = 2 * x.max() - x.min(), 2 * img.max() - img.min()
    h = torch.tanh(F.linear(x, w1, b1) * ref_rho(q_x * w1.sum(1) + b1, w1.norm(dim=1), q_x, 2.0))
    rho_c = ref_rho(q_img * k.sum((1, 2, 3)), k.flatten(1).norm(dim=1), q_img, 4.0)
    c = torch.sigmoid(F.conv2d(img, k, None, 1, 1, 1, 2) * rho_c[:, None, None])
    kt_units = [kt[(j // 2) * 2 : (j // 2) * 2 + 2, j % 2] for j in range(4)]
    kt_sums, kt_norms = torch.stack([u.sum() for u in kt_units]), torch.stack([u.norm() for u in kt_units])
    rho_t = ref_rho(2 * kt_sums, kt_norms, 2.0, 4.0)
    t = torch.sigmoid(F.conv_transpose2d(c, kt, stride=2, groups=2) * rho_t[:, None, None])
    assert max_abs(out(x, img), model.head(h) + t.mean((1, 2, 3))[:, None]) < 1e-5
    frozen = freeze(out)
    assert not any("arp" in str(n.target) for n in frozen.graph.nodes)
    assert _ops(frozen) == _ops(compile_(model, []))
    assert max_abs(frozen(x, img), out(x, img)) < 1e-5
    assert max_abs(out(x, img), model(x, img)) > 1e-3


def test_functional_producer_with_a_shared_weight_is_skipped():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 4))

        def forward(self, x):
            return F.linear(torch.tanh(F.linear(x, self.w)), self.w)

    report = compile_(Tied(), ["arp"], input_range=(0, 1)).vgp_report
    assert report.changed_count("arp") == 0
    assert "also used elsewhere" in report.sites[0].outcomes["arp"]


def _ops(gm: fx.GraphModule) -> list:
    return [
        (n.op, type(gm.get_submodule(n.target)).__name__ if n.op == "call_module" else str(n.target))
        for n in gm.graph.nodes
    ]


def test_frozen_model_has_the_plain_models_ops_and_parity():
    model = nn.Sequential(
        nn.Linear(4, 16), nn.Sigmoid(), nn.Dropout(0.1), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)
    )
    out = compile_(model, ["arp"], input_range=(0.0, 1.0))
    frozen = freeze(out).eval()
    plain = compile_(model, [])
    assert _ops(frozen) == _ops(plain)
    x = torch.rand(64, 4)
    assert max_abs(frozen(x), out.eval()(x)) < 1e-5
    assert isinstance(out.get_submodule("0"), AutoRotLinear)  # freeze did not touch the training form


# ---------- input ranges, L, options ----------


def test_ranges_follow_bounded_activations_through_passthrough_ops():
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.Sigmoid(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(),
        nn.Linear(8, 4),
        nn.Tanh(),
        nn.Linear(4, 4),
        nn.ReLU(),
        nn.Linear(4, 4),
        nn.Sigmoid(),
        nn.Linear(4, 1),
    )
    x = torch.rand(3, 1, 6, 6) * 4 - 1  # data in [-1, 3]
    with pytest.raises(UsageError) as err:
        compile_(model, ["arp"], input_range=(-1, 3))
    # without example inputs the relu output feeding layer 9 has no known range: the error names
    # the site, the input and the options
    assert "site '10' (fed by 9)" in str(err.value) and "relu" in str(err.value)
    for option in ("example_inputs", "xQ", "input_range", "ignore"):
        assert option in str(err.value)
    out = compile_(model, ["arp"], input_range=(-1, 3), ignore=["10"])
    text = {r.name: r.outcomes["arp"] for r in out.vgp_report.sites}
    assert text["1"] == "L=4 q=7 (x in [-1, 3] from input_range)"
    assert text["6"] == "L=2 q=2 (x in [0, 1] from sigmoid)"
    assert text["8"] == "L=4 q=3 (x in [-1, 1] from tanh)"
    assert text["10"] == "ignored by '10'"
    # with example inputs the static ranges are kept and the relu-fed site is calibrated
    out = compile_(model, ["arp"], example_inputs=(x,))
    text = {r.name: r.outcomes["arp"] for r in out.vgp_report.sites}
    lo, hi = float(x.min()), float(x.max())
    assert text["1"] == f"L=4 q={2 * hi - lo:g} (x in [{lo:g}, {hi:g}] from example_inputs)"
    assert text["8"] == "L=4 q=3 (x in [-1, 1] from tanh)"
    assert text["10"].startswith("L=4 q=") and text["10"].endswith("seen on example_inputs)")


def test_options_L_and_xQ_and_validation():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    out = compile_(model, ["arp"], options={"arp": {"L": 6, "xQ": "1.5"}})
    assert [out.get_submodule(n).L for n in ("0", "2")] == [6.0, 6.0]
    assert [out.get_submodule(n).q for n in ("0", "2")] == [1.5, 1.5]
    assert out.vgp_report.sites[0].outcomes["arp"] == "L=6 q=1.5 (xQ given)"
    with pytest.raises(UsageError, match="L must be a positive"):
        compile_(model, ["arp"], options={"arp": {"L": -1.0}})
    with pytest.raises(UsageError, match="must be float"):
        compile_(model, ["arp"], options={"arp": {"eps": "tiny"}})
    with pytest.raises(UsageError, match="neither input_range= nor example_inputs="):
        compile_(model, ["arp"])


def test_sites_without_an_affine_producer_are_skipped_with_the_reason():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)
            self.a, self.b, self.shared, self.twice = nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x):
            h = torch.tanh(self.bn(self.conv(x))).mean((2, 3))
            h = torch.sigmoid(self.a(h) + self.b(h))
            s = self.shared(h)
            h = torch.tanh(s) + s
            return torch.tanh(self.twice(torch.tanh(self.twice(h))))

    report = compile_(Net(), ["arp"], input_range=(0, 1)).vgp_report
    reasons = [r.outcomes["arp"] for r in report.sites if r.kind in ("tanh", "sigmoid")]
    assert reasons[0].startswith("pre-activation normalized by BatchNorm2d 'bn' after Conv2d 'conv'")
    assert reasons[1] == "not fed by an affine layer: its input is add (add)"
    assert "has 2 users" in reasons[2]
    assert "called at 2 places" in reasons[3]
    assert reasons[4].startswith("model output activation")
    assert report.changed_count("arp") == 0


def test_compiling_twice_does_not_rotate_twice_and_gpn_ranges_are_used():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 1))
    once = compile_(model, ["gpn", "arp"], input_range=(0, 1))
    text = once.vgp_report.sites[1].outcomes["arp"]
    assert "from GPNActivation" in text  # the second layer's input is a*tanh+b
    twice = compile_(once, ["arp"], input_range=(0, 1))
    assert twice.vgp_report.changed_count("arp") == 0
    assert "already auto-rotated" in twice.vgp_report.sites[0].outcomes["arp"]
    x = torch.rand(5, 3)
    assert max_abs(twice(x), once(x)) == 0
    assert list(once.state_dict()) == list(model.state_dict())


def test_numerical_safety_zero_pivot_is_finite():
    conv = AutoRotConv1d(2, 3, 3, L=4.0)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
    out = conv(torch.rand(2, 2, 7))
    assert torch.isfinite(out).all() and (out == 0).all()  # the reference's Conv1D gives NaN here
    lin = AutoRotLinear(2, 1, L=4.0, floor=0.0)  # the reference formula: rho = L/eps
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -1.0]]))
        lin.bias.zero_()
    y = lin(torch.rand(4, 2))
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(lin.weight.grad).all()
    assert lin.rho().item() == pytest.approx(4e5)
    bf = AutoRotLinear(2, 1, L=4.0, dtype=torch.bfloat16)
    assert bf.rho().dtype == torch.float32 and bf(torch.rand(3, 2, dtype=torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize(
    "cls,args",
    [
        (AutoRotLinear, (3, 4)),
        (AutoRotConv1d, (2, 3, 3)),
        (AutoRotConv2d, (2, 3, 3)),
        (AutoRotConv3d, (2, 3, 3)),
        (AutoRotConvTranspose1d, (2, 3, 3)),
        (AutoRotConvTranspose2d, (2, 3, 3)),
        (AutoRotConvTranspose3d, (2, 3, 3)),
    ],
)
def test_hand_built_layers_are_torch_layers_with_the_torch_state_dict(cls, args):
    layer = cls(*args, L=2.0, xmin=-1.0, xmax=1.0)
    torch_cls = getattr(nn, cls.__name__.replace("AutoRot", ""))
    assert isinstance(layer, torch_cls) and layer.vgp_applied == ("arp",) and layer.q == 3.0
    plain = torch_cls(*args)
    assert {k: v.shape for k, v in layer.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    plain.load_state_dict(layer.state_dict())
    assert "L=2, q=3, eps=1e-05, floor=0.25" in repr(layer)


def test_arp_linear_functional_matches_the_module():
    layer = golden_linear(AutoRotLinear, L=4.0)
    x = torch.tensor(X)
    assert max_abs(arp_linear(x, layer.weight, layer.bias, L=4.0, q=2.0, floor=DEFAULT_FLOOR), layer(x)) == 0


# ---------- pass order ----------


@pytest.mark.parametrize("inputs", ["input_range", "example_inputs"])
def test_arp_runs_after_gpn_in_either_user_order(inputs):
    """arp reads value ranges (``reads={"ranges"}``) that gpn changes (``writes={"ranges"}``): the
    runner runs gpn first whatever order the user wrote, so both orders compile the same model."""
    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(),
                             nn.Linear(8, 1))  # fmt: skip

    x = torch.rand(16, 3)
    kw = {"input_range": (0.0, 1.0)} if inputs == "input_range" else {"example_inputs": (x,)}
    if inputs == "input_range":
        kw["ignore"] = ["4"]  # the relu-fed layer has no static range without example inputs
    a = compile_(mlp(), ["arp", "gpn"], **kw)
    b = compile_(mlp(), ["gpn", "arp"], **kw)
    assert a.vgp_report.passes == b.vgp_report.passes == ["gpn", "arp"]
    def without_given_order(report):  # the report says which order was given, and that it ran another
        return [line for line in str(report).splitlines() if not line.startswith("  run order:")]

    assert without_given_order(a.vgp_report) == without_given_order(b.vgp_report)
    assert a.vgp_recipe == b.vgp_recipe
    assert max_abs(a(x), b(x)) == 0
    # the second rotated layer's pivot comes from gpn's a*tanh+b range, not tanh's [-1, 1] (q = 3)
    second = a.vgp_report.site("3").outcomes["arp"]
    rotated = a.get_submodule("2")
    assert "from GPNActivation" in second and rotated.q != 3.0
    gpn = a.get_submodule("1")
    lo, hi = sorted((float(gpn.a) * -1 + float(gpn.b), float(gpn.a) + float(gpn.b)))
    assert rotated.q == pytest.approx(2 * hi - lo)
