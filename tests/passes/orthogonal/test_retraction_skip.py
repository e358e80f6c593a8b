"""keep="retraction"'s certified skip: an optimizer step skips the Gram matrix only when
‖W − W_r‖_F bounds the error within tol. The bound is checked against float64 measurements;
the error after every optimizer step is measured, skipped or not."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from vgpcompile import vgpcompile as compile_
from vgpcompile.orthogonal import Layout, gram_error, layers, newton_schulz, orthogonality_error, polar, retract
from vgpcompile.passes.orthogonal.modules import STATE, certified_bound, haar, keep_orthogonal, retract_layer

TOL = 1e-4
LAYERS = {
    "square": lambda: nn.Linear(8, 8),
    "wide": lambda: nn.Linear(12, 5),
    "tall": lambda: nn.Linear(5, 12),
    "grouped-conv": lambda: nn.Conv2d(4, 6, 3, groups=2),
    "conv-transpose": lambda: nn.ConvTranspose2d(6, 4, 2, groups=2),
    "one-row": lambda: nn.Linear(16, 1),
}


def anchored(kind: str, gain: float, seed: int) -> nn.Module:
    """A layer holding gain x a Haar weight, retracted twice (a fresh layer keeps no anchor
    at its first retraction; no growth since then): its anchor is that weight."""
    layer = LAYERS[kind]()
    layout = Layout.of(layer)
    with torch.no_grad():
        layer.weight.copy_(haar(layout, torch.Generator().manual_seed(seed)) * gain)
    keep_orthogonal(layer, gain=gain, tol=TOL)
    retract_layer(layer)
    retract_layer(layer)
    assert getattr(layer, STATE).anchor is not None
    return layer


def measured(layer: nn.Module) -> float:
    state = getattr(layer, STATE)
    return gram_error(state.layout.to_matrix(layer.weight.detach().double()) / state.gain)


def states(model: nn.Module) -> list:
    return [getattr(m, STATE) for m in layers(model)]


def counts(model: nn.Module) -> tuple[int, int]:
    return sum(s.skips for s in states(model)), sum(s.retractions for s in states(model))


# ---- the bound -----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(sorted(LAYERS)),
    gain=st.sampled_from([1.0, 0.5, 3.0]),
    scale=st.floats(-8, -1),
    rank=st.integers(1, 6),
    radial=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_the_bound_holds_for_any_perturbation(kind, gain, scale, rank, radial, seed):
    """‖XᵀX − I‖₂ (float64, thin side) <= certified_bound for W = W_r + D, D of any size and
    rank, or radial (D = εW_r, the direction that grows the error fastest)."""
    layer = anchored(kind, gain, seed)
    state = getattr(layer, STATE)
    w = layer.weight.detach()
    g = torch.Generator().manual_seed(seed + 1)
    if radial:
        d = w * 10**scale
    else:
        u, v = torch.randn(w.shape[0], rank, generator=g), torch.randn(rank, w[0].numel(), generator=g)
        d = (u @ v).reshape(w.shape)
        d = d * (10**scale * gain / d.norm())
    with torch.no_grad():
        layer.weight.add_(d)
    bound = certified_bound(state, layer.weight)
    assert measured(layer) <= bound
    assert bound <= state.anchor_error + 3 * (d.norm().item() / gain) + 1e-5  # and not absurdly loose


def test_the_bound_is_tight_for_a_radial_step_of_a_single_row():
    """One row x: ‖x + εx‖² − 1 = 2ε + ε², and the bound is e_r + 2 sqrt(1 + e_r) δ + δ²
    with δ = ε: within the anchor's error of exact, and never below the truth."""
    layer = anchored("one-row", 1.0, 0)
    state = getattr(layer, STATE)
    with torch.no_grad():
        layer.weight.mul_(1 + 2e-5)
    bound, truth = certified_bound(state, layer.weight), measured(layer)
    assert truth <= bound <= truth + 2 * state.anchor_error + 1e-9


@pytest.mark.parametrize("scale", [1e-7, 1e-5])
def test_the_bound_holds_on_a_weight_summed_in_chunks(scale):
    """401 x 401: more than CHUNK entries, summed as two chunks and a tail."""
    layer = nn.Linear(401, 401, bias=False)
    with torch.no_grad():
        layer.weight.copy_(haar(Layout.of(layer), torch.Generator().manual_seed(0)))
    keep_orthogonal(layer, tol=TOL)
    retract_layer(layer)
    retract_layer(layer)
    with torch.no_grad():
        layer.weight.add_(scale * torch.randn(401, 401, generator=torch.Generator().manual_seed(1)))
    assert measured(layer) <= certified_bound(getattr(layer, STATE), layer.weight)


def test_no_anchor_no_bound_and_a_moved_weight_drops_it():
    layer = anchored("square", 1.0, 0)
    state = getattr(layer, STATE)
    assert certified_bound(state, layer.weight.detach().double()) is not None  # wider dtypes are fine
    state.anchor = state.anchor.reshape(-1)  # not this weight's shape (or device): no certificate
    assert certified_bound(state, layer.weight) is None


# ---- in training ---------------------------------------------------------------------------------


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.square, self.wide, self.tall = nn.Linear(16, 16), nn.Linear(16, 8), nn.Linear(8, 24)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, v, img):
        h = torch.tanh(self.tall(torch.tanh(self.wide(torch.tanh(self.square(v))))))
        return h.sum(1) + torch.tanh(self.conv(img)).mean((1, 2, 3))


def net(**options) -> nn.Module:
    torch.manual_seed(0)  # the biases
    return compile_(Net(), passes=["orthogonal"], options={"orthogonal": options} if options else None)


def data() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 16, generator=g), torch.randn(8, 3, 6, 6, generator=g)


def run(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> list[float]:
    """The float64 error of the worst layer after each optimizer step."""
    inputs, errors = data(), []
    for _ in range(steps):
        loss = (model(*inputs) - 1.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        errors.append(max(measured(m) for m in layers(model)))
    return errors


@pytest.mark.parametrize(
    "make_opt, lr",
    [
        (lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9), 3e-6),
        (lambda p, lr: torch.optim.Adam(p, lr=lr), 2e-6),
    ],
    ids=["sgd", "adam"],
)
def test_every_step_within_tol_with_skips_and_retractions_mixed(make_opt, lr):
    """The learning rates are picked so that both happen: some steps are certified, some
    retract (the boundary is where a wrong bound would show)."""
    model = net()
    errors = run(model, make_opt(model.parameters(), lr), 50)
    skips, retractions = counts(model)
    print(f"\n  50 steps: {skips} skipped, {retractions} Gram matrices, worst error {max(errors):.1e}")
    assert max(errors) <= TOL
    assert skips > 0 and retractions > len(states(model))  # some of each, beyond the first step's


@pytest.mark.parametrize("opt_cls, lr", [(torch.optim.SGD, 1e-2), (torch.optim.Adam, 1e-3)], ids=["sgd", "adam"])
def test_at_a_realistic_rate_it_retracts_every_step_and_matches_always_retracting(opt_cls, lr, monkeypatch):
    model, reference = net(), net()
    errors = run(model, opt_cls(model.parameters(), lr=lr), 20)
    assert max(errors) <= TOL and counts(model) == (0, 20 * len(states(model)))
    assert all(s.anchor is None for s in states(model))  # nothing could pass: no copy kept
    monkeypatch.setattr("vgpcompile.passes.orthogonal.modules.certified_bound", lambda state, weight: None)
    run(reference, opt_cls(reference.parameters(), lr=lr), 20)
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)


def test_a_tiny_rate_skips_most_gram_matrices():
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=1e-7)
    run(model, opt, 1)
    assert all(s.anchor is None for s in states(model))  # no copy of every weight at step 1 (peak memory)
    errors = run(model, opt, 19)
    skips, retractions = counts(model)
    assert max(errors) <= TOL and skips >= 15 * len(states(model))


def test_a_weight_edited_by_hand_is_caught_by_the_next_step_and_by_retract():
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=1e-7)
    run(model, opt, 3)
    with torch.no_grad():
        model.square.weight.add_(1e-3 * torch.randn(16, 16))  # no optimizer step: no hook ran
    assert measured(model.square) > TOL
    errors = run(model, opt, 1)  # the bound sees the edit (δ is measured, not assumed)
    assert errors[0] <= TOL
    with torch.no_grad():
        model.wide.weight.add_(1e-3 * torch.randn(8, 16))
    before = getattr(model.wide, STATE).retractions
    assert retract(model) == 4 and measured(model.wide) <= TOL
    assert getattr(model.wide, STATE).retractions == before + 1  # retract() always measures


def test_every_k_certifies_on_the_kth_step():
    model = net(every=4)
    opt = torch.optim.SGD(model.parameters(), lr=1e-7)
    errors = run(model, opt, 12)
    skips, retractions = counts(model)
    assert retractions + skips == 3 * len(states(model)) and skips > 0
    assert max(errors[3::4]) <= TOL
    assert max(s.drift for s in states(model)) <= TOL


def test_a_load_refreshes_the_anchor_and_a_copy_starts_without_one():
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=1e-7)
    run(model, opt, 2)
    other = net(seed=3)
    model.load_state_dict(other.state_dict())
    state = getattr(model.square, STATE)
    assert torch.equal(state.anchor, model.square.weight) and state.anchor_error < TOL
    assert sorted(model.state_dict()) == sorted(Net().state_dict())  # the anchor is no buffer
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert all(s.anchor is None and math.isinf(s.anchor_error) for s in states(twin))
        errors = run(twin, torch.optim.SGD(twin.parameters(), lr=1e-7), 3)
        assert max(errors) <= TOL and counts(twin)[0] > 0
    assert state.anchor is not None  # the original kept its own
    errors = run(model, opt, 2)
    assert max(errors) <= TOL and orthogonality_error(model.square) <= TOL


# ---- far from the manifold -----------------------------------------------------------------------


def spread_out(n: int = 64) -> torch.Tensor:
    """Q diag(s): half the singular values sqrt(1.3), so ‖E‖_F = 0.3 sqrt(n / 2) = 1.7 > 1/2
    while ‖E‖₂ = 0.3, what an Adam step leaves (every entry moved a little)."""
    q = haar(Layout((n, n)), torch.Generator().manual_seed(0))
    s = torch.ones(n)
    s[: n // 2] = 1.3**0.5
    return q * s


def test_a_large_frobenius_error_of_small_spectral_norm_takes_newton_schulz(monkeypatch):
    x = spread_out()
    polar_factor = polar(x)
    calls = []
    monkeypatch.setattr("vgpcompile.passes.orthogonal.modules.polar", lambda m: calls.append(m) or polar_factor)
    y, err, changed = newton_schulz(x, TOL)
    assert not calls and changed and err <= TOL
    assert gram_error(y) <= err and (y - polar_factor).abs().max() < 1e-4  # it converges to the polar factor


def test_out_of_iterations_it_takes_the_polar_factor():
    y, err, _ = newton_schulz(spread_out(), TOL, max_iter=1)
    assert gram_error(y) <= err <= TOL
