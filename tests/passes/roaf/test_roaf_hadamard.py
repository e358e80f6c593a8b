"""``roaf{filter=hadamard}``: the structured orthogonal filter (a Kronecker product of
sign-randomized normalized Hadamard matrices) against its dense matrix in float64, gradients,
the pass with it (report, recipe, sharing), freeze, save/load, ONNX and the Jacobian bounds."""

from __future__ import annotations

import math

import pytest
import torch
from test_roaf import Convs, filters, mlp, reference_mlp
from torch import nn
from torch.func import jacrev

from vgpcompile import UsageError, export_onnx, freeze, load, save, vgpcompile
from vgpcompile.nn import ROAFFilter
from vgpcompile.passes.roaf import ROAFHadamard
from vgpcompile.passes.roaf.modules import DENSE_BELOW, hadamard_radices

SIZES = [1, 2, 16, 48, 64, 100, 256, 2048]


@pytest.mark.parametrize("n", SIZES)
def test_o_is_orthogonal_in_float64_and_factored(n):
    h = ROAFHadamard(n, seed=3, dtype=torch.float64)
    o = h.dense()
    assert torch.allclose(o.T @ o, torch.eye(n, dtype=torch.float64), atol=1e-13, rtol=0)
    assert math.prod(hadamard_radices(n)) == n and all(r <= 32 or r % 2 for r in hadamard_radices(n))
    assert all(
        torch.allclose(f.abs(), f.abs().max().expand_as(f)) for f in h.factors if f.shape[0] & (f.shape[0] - 1) == 0
    )
    assert torch.equal(o, ROAFHadamard(n, seed=3, dtype=torch.float64).dense())  # drawn from the seed
    if n >= 16:
        assert not torch.equal(o, ROAFHadamard(n, seed=4, dtype=torch.float64).dense())


@pytest.mark.parametrize("n", [2, 48, 64, 100, 256])
@pytest.mark.parametrize("shape", [(5,), (2, 3)])
def test_linear_filter_is_alpha_o_x_plus_beta_y(n, shape):
    filt = ROAFFilter(n, alpha=0.7, beta=0.3, seed=1, dtype=torch.float64, filter="hadamard")
    assert filt.structured
    x, y = torch.randn(*shape, n, dtype=torch.float64), torch.randn(*shape, n, dtype=torch.float64)
    expect = 0.7 * x @ filt.O.T + 0.3 * y
    assert torch.allclose(filt(y, x), expect, atol=1e-12, rtol=0)


@pytest.mark.parametrize("spatial, size", [(1, (7,)), (2, (4, 5)), (3, (2, 3, 2)), (2, (1, 1))])
def test_conv_filter_mixes_channels_at_every_position(spatial, size):
    c = 48  # 16 x 3: a power-of-two factor and an odd one
    filt = ROAFFilter(c, alpha=0.6, beta=0.4, spatial=spatial, seed=2, dtype=torch.float64, filter="hadamard")
    x, y = torch.randn(3, c, *size, dtype=torch.float64), torch.randn(3, c, *size, dtype=torch.float64)
    expect = 0.6 * torch.einsum("ij,bj...->bi...", filt.O, x) + 0.4 * y
    assert torch.allclose(filt(y, x), expect, atol=1e-12, rtol=0)


@pytest.mark.parametrize("n", [48, 64, 100, 255, 256, 512])
@pytest.mark.parametrize("trailing", [1, 6])
def test_narrow_filters_apply_the_factors_product_as_one_matrix(n, trailing):
    """Below DENSE_BELOW features the filter multiplies by the factors' product (cheaper there,
    measured); at and above it by the factors: the same O either way, in float64."""
    h = ROAFHadamard(n, seed=5, dtype=torch.float64)
    assert ("product" in dict(h.named_buffers())) is (n < DENSE_BELOW)
    x, y = torch.randn(3, n, trailing, dtype=torch.float64), torch.randn(3, n, trailing, dtype=torch.float64)
    x, y = (x[..., 0], y[..., 0]) if trailing == 1 else (x, y)
    shape = x.shape if trailing > 1 else (-1, n)
    factored = h._factored_mix(x, trailing, y, 0.3, 0.7, shape)
    torch.testing.assert_close(h.mix(x, trailing, y, beta=0.3, alpha=0.7), factored, rtol=0, atol=1e-12)
    expect = 0.7 * torch.einsum("ij,bj...->bi...", h.dense(), x) + 0.3 * y
    torch.testing.assert_close(factored, expect, rtol=0, atol=1e-12)


def test_gradients_match_the_dense_filter():
    filt = ROAFFilter(64, alpha=0.9, beta=0.1, seed=0, dtype=torch.float64, filter="hadamard")
    x = torch.randn(4, 64, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 64, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(filt, (y, x))
    dense = ROAFFilter(64, alpha=0.9, beta=0.1, O=filt.O, dtype=torch.float64)
    g = torch.randn(4, 64, dtype=torch.float64)
    got = torch.autograd.grad(filt(y, x), (y, x), g)
    want = torch.autograd.grad(dense(y, x), (y, x), g)
    assert all(torch.allclose(a, b, atol=1e-12, rtol=0) for a, b in zip(got, want))


def test_bad_filter_and_size_are_usage_errors():
    with pytest.raises(UsageError, match="filter must be one of"):
        ROAFFilter(8, alpha=0.5, beta=0.5, filter="dct")
    with pytest.raises(UsageError, match="must be 8x8"):
        ROAFFilter(8, alpha=0.5, beta=0.5, O=ROAFHadamard(16, 0))
    with pytest.raises(UsageError, match="filter"):
        vgpcompile(mlp(), passes=["roaf"], options={"roaf": {"filter": "dct"}})


# ---- the pass -------------------------------------------------------------------------------------


def test_pass_matches_the_reference_reports_and_records_the_filter():
    net = mlp(depth=4, width=64).double()
    model = vgpcompile(net, passes=["roaf"], options={"roaf": {"filter": "hadamard"}})
    found = filters(model)
    assert len(found) == 4 and all(f.structured for _, f in found)
    x = torch.randn(5, 6, dtype=torch.float64)
    expect = reference_mlp(net, [f.O for _, f in found], 0.75, 0.25, x)
    assert torch.allclose(model(x), expect, atol=1e-12, rtol=0)
    assert "hadamard: 8 x 8" in model.vgp_report.site("3").outcomes["roaf"]
    options = model.vgp_recipe["passes"][0]["options"]
    assert options["filter"] == "hadamard" and options["shared"] is False  # the resolved decision
    assert len({id(f.matrix) for _, f in found}) == 4
    assert model.vgp_report.stats["roaf"]["buffer_mb"] == round(4 * 2 * 64 * 8 / 2**20, 3)  # 2 factors of 8x8, float64


def test_shared_hadamard_is_one_module():
    model = vgpcompile(
        mlp(depth=3, width=32), passes=["roaf"], options={"roaf": {"filter": "hadamard", "shared": True}}
    )
    assert len({id(f.matrix) for _, f in filters(model)}) == 1


def test_freeze_save_load_are_bitwise(tmp_path):
    def factory():
        torch.manual_seed(3)
        return Convs()

    model = vgpcompile(factory(), passes=["roaf"], options={"roaf": {"filter": "hadamard"}})
    assert all(f.structured for _, f in filters(model))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    inputs = tuple(torch.randn(2, 4, *shape, generator=g) for shape in ((9,), (7, 7), (3, 3, 3)))
    model(*inputs).sum().backward()
    opt.step()
    frozen = freeze(model)
    assert torch.equal(frozen(*inputs), model(*inputs))
    for form, obj in (("training", model), ("frozen", frozen)):
        save(obj, tmp_path / form)
        back = load(factory, tmp_path / form)
        assert all(f.structured for _, f in filters(back))
        assert torch.equal(back(*inputs), obj(*inputs)), form


def test_exports_to_onnx_without_a_dense_o(tmp_path):
    pytest.importorskip("onnxruntime")
    net = mlp(depth=2, width=256)
    model = vgpcompile(net, passes=["roaf"], options={"roaf": {"filter": "hadamard"}})
    report = export_onnx(model, tmp_path / "m.onnx", (torch.randn(2, 6),), exporter="torchscript")
    print(report)
    assert report.max_abs <= 1e-5
    onnx = pytest.importorskip("onnx")
    sizes = [math.prod(t.dims) for t in onnx.load(tmp_path / "m.onnx").graph.initializer]
    assert 256 * 256 in sizes and sizes.count(256 * 256) == 2  # the two blocks' weights, no dense O


def test_jacobian_singular_values_stay_within_the_bounds():
    """As test_roaf.py's Haar check, depth 500, width 64, float64: every singular value of
    the input -> output Jacobian lies in [prod(alpha - beta s_k), prod(alpha + beta s_k)]."""
    torch.manual_seed(0)
    depth, width = 500, 64
    net = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(width, width), nn.Tanh())]).double()
    model = vgpcompile(net, passes=["roaf"], select=["re:.*"], options={"roaf": {"filter": "hadamard"}})
    beta = 1 / depth
    alpha = 1 - beta
    s = torch.stack([torch.linalg.matrix_norm(m.weight.detach(), 2) for m in net if isinstance(m, nn.Linear)])
    lower, upper = torch.prod(alpha - beta * s).item(), torch.prod(alpha + beta * s).item()
    sv = torch.linalg.svdvals(jacrev(model)(torch.randn(width, dtype=torch.float64)))
    print(f"hadamard: singular values in [{sv.min():.4f}, {sv.max():.4f}], bounds [{lower:.4f}, {upper:.4f}]")
    assert lower <= sv.min().item() and sv.max().item() <= upper
