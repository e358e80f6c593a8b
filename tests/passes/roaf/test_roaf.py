"""The ``roaf`` pass on blocks: every block kind and activation spelling against the reference
math, what is left plain and why, the beta rule, O (orthogonal, seeded, shared), memory
limits, state_dict compatibility, freeze, save/load, ONNX, and the Jacobian bounds."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import max_abs
from torch import fx, nn
from torch.func import jacrev

from vgpcompile import UsageError, export_onnx, freeze, load, plan, save, vgpcompile
from vgpcompile.core.report import VgpWarning
from vgpcompile.nn import ROAFFilter
from vgpcompile.passes.roaf import ROAF, haar_orthogonal


def filters(model: fx.GraphModule) -> list[tuple[fx.Node, ROAFFilter]]:
    """(node, filter) for every ROAF filter call, in graph order."""
    out = []
    for node in model.graph.nodes:
        if node.op == "call_module":
            mod = model.get_submodule(node.target)
            if isinstance(mod, ROAFFilter):
                out.append((node, mod))
    return out


def mlp(depth: int = 4, width: int = 16, d_in: int = 6, act=nn.Tanh) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(d_in, width), act()]
    for _ in range(depth):
        layers += [nn.Linear(width, width), act()]
    return nn.Sequential(*layers, nn.Linear(width, 3))


def reference_mlp(net: nn.Sequential, mats: list[torch.Tensor], alpha: float, beta: float, x: torch.Tensor):
    """h = alpha * h O^T + beta * phi(W h + b) for every square block, written out."""
    mods = list(net)
    h = mods[1](mods[0](x))
    for k, o in enumerate(mats):
        lin, act = mods[2 + 2 * k], mods[3 + 2 * k]
        h = alpha * h @ o.T + beta * act(lin(h))
    return mods[-1](h)


# ---- blocks and the reference math ----------------------------------------------------------------


def test_mlp_blocks_match_the_reference_and_projection_readout_stay_plain():
    net = mlp(depth=4)
    model = vgpcompile(net, passes=["roaf"])
    found = filters(model)
    assert len(found) == 4
    beta = 1 / 4  # c / L with c = 1, L = 4 blocks
    assert all(f.alpha == 1 - beta and f.beta == beta for _, f in found)
    x = torch.randn(5, 6)
    ref = reference_mlp(net, [f.O for _, f in found], 1 - beta, beta, x)
    assert max_abs(model(x), ref) <= 1e-6
    report = model.vgp_report
    assert report.site("1").outcomes["roaf"] == "not shape-preserving: Linear 6 -> 16 is not square"
    assert "alpha=0.75 beta=0.25, O 16x16 on features" in report.site("3").outcomes["roaf"]
    assert report.stats["roaf"] == {
        "blocks": 4, "rnn_layers": 0, "o_matrices": 4, "buffer_mb": round(4 * 16 * 16 * 4 / 2**20, 3),
        "shared": False, "beta": 0.25,
    }  # fmt: skip


def test_o_is_orthogonal_and_not_trained_and_not_in_the_state_dict():
    net = mlp(depth=3)
    model = vgpcompile(net, passes=["roaf"])
    for _, f in filters(model):
        eye = torch.eye(16)
        assert max_abs(f.O.double() @ f.O.double().T, eye.double()) <= 1e-6
        assert not f.O.requires_grad
    assert list(model.state_dict()) == list(net.state_dict())
    assert {n for n, _ in model.named_parameters()} == {n for n, _ in net.named_parameters()}
    model.load_state_dict(net.state_dict(), strict=True)  # an original checkpoint loads


class Spellings(nn.Module):
    """One square block per activation spelling, in-place ones included."""

    def __init__(self, n: int = 8) -> None:
        super().__init__()
        self.fc = nn.ModuleList(nn.Linear(n, n) for _ in range(6))
        self.act = nn.Tanh()
        self.relu = nn.ReLU(inplace=True)
        self.out = nn.Linear(n, 2)

    def forward(self, x):
        x = self.act(self.fc[0](x))  # module
        x = torch.tanh(self.fc[1](x))  # function
        x = self.fc[2](x).sigmoid()  # method
        x = F.gelu(self.fc[3](x), approximate="tanh")  # function with a parameter
        x = self.relu(self.fc[4](x))  # in-place module
        x = self.fc[5](x)
        x.relu_()  # in-place method whose result is not assigned: x itself changed
        return self.out(x)


def test_every_activation_spelling_in_place_included():
    net = Spellings()
    model = vgpcompile(net, passes=["roaf"])
    found = filters(model)
    assert len(found) == 6
    alpha, beta = 1 - 1 / 6, 1 / 6
    x = torch.randn(4, 8)
    acts = [torch.tanh, torch.tanh, torch.sigmoid, lambda z: F.gelu(z, approximate="tanh"), F.relu, F.relu]
    h = x
    for k, act in enumerate(acts):
        h = alpha * h @ found[k][1].O.T + beta * act(net.fc[k](h))
    assert max_abs(model(x), net.out(h)) <= 1e-6


class Convs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(4, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding="same", dilation=2)
        self.c2b = nn.Conv2d(4, 4, 4, padding="same", groups=2, padding_mode="circular")
        self.c3 = nn.Conv3d(4, 4, 3, padding=1, bias=False)
        self.wide = nn.Conv2d(4, 6, 3, padding=1)  # channels change
        self.strided = nn.Conv2d(6, 6, 3, stride=2, padding=1)
        self.valid = nn.Conv2d(6, 6, 3)
        self.up = nn.ConvTranspose2d(6, 6, 3, padding=1)
        self.rect = nn.Linear(6, 5)

    def forward(self, s, img, vol):
        a = torch.tanh(self.c1(s)).mean((1, 2))
        b = F.relu(self.c2b(F.elu(self.c2(img))))
        b = torch.tanh(self.up(torch.tanh(self.valid(torch.tanh(self.strided(torch.tanh(self.wide(b))))))))
        c = torch.tanh(self.c3(vol)).mean((1, 2, 3, 4))
        return a + torch.tanh(self.rect(b.mean((2, 3)))).sum(1) + c


def test_conv_blocks_mix_channels_and_the_others_say_why_not():
    net = Convs()
    model = vgpcompile(net, passes=["roaf"])
    rows = {r.name: r.outcomes["roaf"] for r in model.vgp_report.sites}
    by_producer = {r.producer.split()[-1]: rows[r.name] for r in model.vgp_report.sites}
    assert sum(1 for t in rows.values() if t.startswith("alpha=")) == 4
    for name in ("c1", "c2", "c2b", "c3"):
        assert "on channels (1x1)" in by_producer[name]
    assert by_producer["wide"] == "not shape-preserving: Conv2d maps 4 -> 6 channels"
    assert by_producer["strided"] == "not shape-preserving: stride (2, 2) changes the spatial shape"
    assert by_producer["valid"] == "not shape-preserving: padding (0, 0) is not 'same' for kernel (3, 3)"
    assert by_producer["up"] == "not shape-preserving: a transposed convolution changes the spatial shape"
    assert by_producer["rect"] == "not shape-preserving: Linear 6 -> 5 is not square"
    g = torch.Generator().manual_seed(0)
    s, img, vol = (torch.randn(2, 4, *shape, generator=g) for shape in ((9,), (7, 7), (3, 3, 3)))
    o = {node.args[0].args[0].target: f.O for node, f in filters(model)}  # by the block's conv
    alpha, beta = 0.75, 0.25

    def block(name, act, x):  # O mixes channels at every position
        return alpha * torch.einsum("oc,bc...->bo...", o[name], x) + beta * act(getattr(net, name)(x))

    b = block("c2b", F.relu, block("c2", F.elu, img))
    b = torch.tanh(net.up(torch.tanh(net.valid(torch.tanh(net.strided(torch.tanh(net.wide(b))))))))
    ref = (
        block("c1", torch.tanh, s).mean((1, 2))
        + torch.tanh(net.rect(b.mean((2, 3)))).sum(1)
        + block("c3", torch.tanh, vol).mean((1, 2, 3, 4))
    )
    assert max_abs(model(s, img, vol), ref) <= 1e-5


def test_linear_blocks_on_sequences_mix_the_last_dimension():
    net = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 2))
    model = vgpcompile(net, passes=["roaf"])
    (_, f1), (_, f2) = filters(model)
    x = torch.randn(3, 5, 8)
    h = 0.5 * x @ f1.O.T + 0.5 * F.gelu(net[0](x))
    h = 0.5 * h @ f2.O.T + 0.5 * F.gelu(net[2](h))
    assert max_abs(model(x), net[4](h)) <= 1e-6
    assert model(torch.randn(8)).shape == (2,)  # unbatched input


def test_output_activation_and_non_affine_producers_stay_plain():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.norm = nn.Linear(4, 4), nn.Linear(4, 4), nn.LayerNorm(4)

        def forward(self, x):
            return torch.sigmoid(self.b(torch.tanh(self.norm(self.a(x)))))

    model = vgpcompile(Net(), passes=["roaf"])
    assert filters(model) == []
    rows = {r.name: r.outcomes for r in model.vgp_report.sites}
    assert "model output activation" in rows["sigmoid()"]["roaf"]
    assert "roaf" not in rows["tanh()"]  # fed by a LayerNorm: not a block at all
    assert any("no block to filter" in w for w in model.vgp_report.warnings)


# ---- options: the beta rule, alpha, seeds, sharing, memory ------------------------------------------


def test_beta_is_c_over_the_number_of_blocks_unless_given():
    assert filters(vgpcompile(mlp(depth=10), passes=["roaf"]))[0][1].beta == pytest.approx(0.1)
    assert filters(vgpcompile(mlp(depth=10), passes=["roaf{c=3}"]))[0][1].beta == pytest.approx(0.3)
    f = filters(vgpcompile(mlp(depth=10), passes=["roaf"], options={"roaf": {"beta": 0.05}}))[0][1]
    assert (f.alpha, f.beta) == (pytest.approx(0.95), 0.05)
    one = filters(vgpcompile(mlp(depth=1), passes=["roaf"]))[0][1]
    assert (one.alpha, one.beta) == (0.0, 1.0)  # c / L capped at 1: one block is left its own value
    with pytest.warns(VgpWarning, match=r"alpha \+ beta = 1.3 > 1"):
        f = filters(vgpcompile(mlp(depth=3), passes=["roaf"], options={"roaf": {"beta": 0.3, "alpha": 1.0}}))[0][1]
    assert (f.alpha, f.beta) == (1.0, 0.3)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"beta": 0.0}, "option 'beta' of pass 'roaf' must be a positive number"),
        ({"alpha": -0.1}, "option 'alpha' of pass 'roaf' must be a number >= 0"),
        ({"c": float("nan")}, "option 'c' of pass 'roaf' must be a positive number"),
        ({"horizon": 0}, "option 'horizon' of pass 'roaf' must be a number of steps >= 1"),
        ({"max_buffer_mb": 0.0}, "option 'max_buffer_mb' of pass 'roaf' must be positive"),
        ({"shared": "maybe"}, "option 'shared' of pass 'roaf' must be true or false"),
    ],
)
def test_bad_options_are_usage_errors(options, message):
    with pytest.raises(UsageError, match=message):
        vgpcompile(mlp(), passes=["roaf"], options={"roaf": options})


def test_o_is_seeded_by_site_name_and_reproducible():
    a = filters(vgpcompile(mlp(depth=3), passes=["roaf"]))
    b = filters(vgpcompile(mlp(depth=3), passes=["roaf"]))
    c = filters(vgpcompile(mlp(depth=3), passes=["roaf{seed=1}"]))
    assert all(torch.equal(fa.O, fb.O) for (_, fa), (_, fb) in zip(a, b))
    assert not any(torch.equal(fa.O, fc.O) for (_, fa), (_, fc) in zip(a, c))
    assert not torch.equal(a[0][1].O, a[1][1].O)  # one O per block
    # the same site gets the same O whatever else is selected (seeded by name, not by draw order)
    only = filters(vgpcompile(mlp(depth=3), passes=["roaf"], ignore=["3"]))
    assert torch.equal(only[0][1].O, a[1][1].O)
    assert torch.equal(haar_orthogonal(16, 7), haar_orthogonal(16, 7))


def test_shared_uses_one_matrix_per_size():
    model = vgpcompile(mlp(depth=5), passes=["roaf{shared=true}"])
    mats = {f.O.data_ptr() for _, f in filters(model)}
    assert len(mats) == 1
    assert model.vgp_report.stats["roaf"]["o_matrices"] == 1
    assert "shared" in model.vgp_report.site("3").outcomes["roaf"]
    assert len({id(b) for b in model.buffers()}) == 1  # deduplicated by module.buffers()
    model.to(torch.float64)  # converted once, still shared (a buffer registered on each filter would be copied)
    assert len({f.O.data_ptr() for _, f in filters(model)}) == 1 and filters(model)[0][1].O.dtype == torch.float64
    assert model(torch.randn(2, 6, dtype=torch.float64)).dtype == torch.float64


def test_memory_limit_is_reported_before_allocating_and_enforced():
    net = mlp(depth=40, width=64)  # 40 O of 64x64 float32: 0.625 MB
    report = plan(net, passes=["roaf"])
    assert "buffer_mb=0.625" in str(report) and report.stats["roaf"]["buffer_mb"] == 0.625
    with pytest.raises(UsageError, match=r"need 1 MB \(40 matrices, shared=False\), over option max_buffer_mb=0.5; "
                                         r"set shared=True"):  # fmt: skip
        vgpcompile(net, passes=["roaf{shared=false, max_buffer_mb=0.5}"])
    with pytest.warns(VgpWarning, match="one O per block would take 1 MB for 40 matrices, over max_buffer_mb=0.5"):
        model = vgpcompile(net, passes=["roaf{max_buffer_mb=0.5}"])
    assert model.vgp_report.stats["roaf"]["shared"] is True
    assert model.vgp_report.stats["roaf"]["buffer_mb"] == round(64 * 64 * 4 / 2**20, 3)
    with pytest.raises(UsageError, match="raise max_buffer_mb"):
        vgpcompile(net, passes=["roaf{shared=true, max_buffer_mb=0.001}"])


def test_compiling_twice_filters_once():
    once = vgpcompile(mlp(depth=3), passes=["roaf"])
    twice = vgpcompile(once, passes=["roaf"])
    assert len(filters(twice)) == 3
    assert all("already rewritten by 'roaf'" in r.outcomes["roaf"] for r in twice.vgp_report.sites[1:4])
    x = torch.randn(2, 6)
    assert torch.equal(once(x), twice(x))


def test_selection_and_pass_instance():
    model = vgpcompile(mlp(depth=4), passes=[ROAF(beta=0.2)], ignore=["5"])
    assert len(filters(model)) == 3
    assert model.vgp_report.site("5").outcomes["roaf"] == "ignored by '5'"


# ---- freeze, save/load, ONNX ------------------------------------------------------------------------


def test_freeze_keeps_one_matmul_add_per_block_and_is_exact():
    net = mlp(depth=4)
    model = vgpcompile(net, passes=["roaf"])
    frozen = freeze(model)
    x = torch.randn(5, 6)
    assert torch.equal(frozen(x), model(x))
    assert len(filters(frozen)) == 4
    ops = [n for n in frozen.graph.nodes if n.op == "call_module"]
    assert len(ops) == len([n for n in fx.symbolic_trace(net).graph.nodes if n.op == "call_module"]) + 4


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_save_load_is_bitwise_for_training_and_frozen_forms(tmp_path, fmt):
    def factory():
        torch.manual_seed(3)
        return Convs()

    model = vgpcompile(factory(), passes=["roaf"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    inputs = tuple(torch.randn(2, 4, *shape, generator=g) for shape in ((9,), (7, 7), (3, 3, 3)))
    model(*inputs).sum().backward()
    opt.step()
    for form, obj in (("training", model), ("frozen", freeze(model))):
        save(obj, tmp_path / form, format=fmt)
        back = load(factory, tmp_path / form)
        assert torch.equal(back(*inputs), obj(*inputs)), form
        assert all(torch.equal(a.O, b.O) for (_, a), (_, b) in zip(filters(back), filters(obj)))


def test_frozen_model_exports_to_onnx(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.fc = nn.Linear(3, 3)
            self.fc2 = nn.Linear(3, 3)

        def forward(self, img):
            h = torch.tanh(self.conv(img)).mean((2, 3))
            return self.fc2(torch.tanh(self.fc(h)))

    model = vgpcompile(Net(), passes=["roaf"])
    assert len(filters(model)) == 2
    x = torch.randn(2, 3, 6, 6)
    for exporter in ("torchscript", "dynamo"):
        report = export_onnx(model, tmp_path / f"{exporter}.onnx", (x,), exporter=exporter)
        print(report)
        assert report.max_abs <= 1e-5
        assert report.op_types.get("Gemm", 0) + report.op_types.get("MatMul", 0) >= 3  # fc, fc2 and the filter
        assert report.op_types.get("Conv", 0) == 2  # the block's conv and the 1x1 channel mix
        onnx.checker.check_model(onnx.load(tmp_path / f"{exporter}.onnx"), full_check=True)


# ---- the Jacobian (research/roaf.md §5) -----------------------------------------------------------


def test_jacobian_singular_values_stay_within_the_bounds_and_collapse_without_roaf():
    """Depth 500, width 64, tanh, at initialisation, float64: every singular value of the
    input -> output Jacobian lies in [prod(alpha - beta s_k), prod(alpha + beta s_k)],
    s_k = ||W_k||_2; without roaf they collapse."""
    torch.manual_seed(0)
    depth, width = 500, 64
    net = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(width, width), nn.Tanh())]).double()
    model = vgpcompile(net, passes=["roaf"], select=["re:.*"])  # the last block's output is the model's: opt in
    assert len(filters(model)) == depth
    beta = 1 / depth
    alpha = 1 - beta
    s = torch.stack([torch.linalg.matrix_norm(m.weight.detach(), 2) for m in net if isinstance(m, nn.Linear)])
    lower, upper = torch.prod(alpha - beta * s).item(), torch.prod(alpha + beta * s).item()
    x = torch.randn(width, dtype=torch.float64)
    sv = torch.linalg.svdvals(jacrev(model)(x))
    sv_plain = torch.linalg.svdvals(jacrev(net)(x))
    print(f"bounds [{lower:.4f}, {upper:.4f}] (||W_k|| in [{s.min():.3f}, {s.max():.3f}])")
    print(f"roaf:  singular values in [{sv.min():.4f}, {sv.max():.4f}]")
    print(f"plain: singular values in [{sv_plain.min():.3e}, {sv_plain.max():.3e}]")
    assert lower <= sv.min().item() and sv.max().item() <= upper
    assert lower > math.exp(-2 * 1.25)  # about e^-2c: away from 0 whatever the depth
    assert sv_plain.max().item() < 1e-50
