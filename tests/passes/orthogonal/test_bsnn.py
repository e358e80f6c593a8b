"""BSNN signal propagation (research/bsnn.md §1.2, §4): depth 200, width 256, ``passes=["bsnn"]``.

Forward (Theorem 1): with orthogonal weights, a GPN activation and the input on the thin
shell, ‖x^l‖²/n stays near 1 at every layer. Backward: with an independent N(0, 1) error
at the top (the authors' synthetic protocol, research/bsnn.md §4.1), the per-layer
weight-gradient norms stay within a factor 10 of each other. The contrasts show what each
half of the recipe does: without GPN the signal dies; without orthogonal weights (PyTorch's
default init) GPN's gradients explode.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vgpcompile import vgpcompile
from vgpcompile.tools.probes import measure

DEPTH, WIDTH, BATCH = 200, 256, 256
ACTS = {"tanh": nn.Tanh, "selu": nn.SELU, "elu": nn.ELU, "gelu": nn.GELU, "relu": nn.ReLU}


def deep(act: str) -> nn.Sequential:
    torch.manual_seed(0)
    blocks = [m for _ in range(DEPTH) for m in (nn.Linear(WIDTH, WIDTH, bias=False), ACTS[act]())]
    return nn.Sequential(*blocks, nn.Linear(WIDTH, WIDTH, bias=False))


def propagate(model: nn.Module) -> tuple[list[float], list[float]]:
    """(‖x^l‖²/n averaged over the batch at the input of each hidden layer, ‖∂E/∂W^l‖_F per hidden layer)."""
    g = torch.Generator().manual_seed(1)
    x = 3.0 * torch.randn(BATCH, WIDTH, generator=g)  # off the shell on purpose: thin_shell puts it back
    error = torch.randn(BATCH, WIDTH, generator=g)  # the authors' independent top error (§4.1)
    m = measure(model, x, error, lambda out, e: (out * e).sum().div(BATCH))
    hidden = m.layers[:DEPTH]
    return [r.signal for r in hidden], [r.grad_norm for r in hidden]


def show(label: str, shells: list[float], grads: list[float]) -> None:
    picks = [0, 1, 49, 99, 149, 199]
    print(f"\n  {label}: ||x^l||^2/n at layers {[p + 1 for p in picks]}: {[f'{shells[p]:.3g}' for p in picks]}")
    print(f"    ||x^l||^2/n over all {len(shells)} layers: min {min(shells):.3g}, max {max(shells):.3g}")
    print(f"    ||dE/dW^l||_F: min {min(grads):.3g}, max {max(grads):.3g}, max/min {ratio(grads):.3g}")


def ratio(values: list[float]) -> float:
    return max(values) / min(values) if min(values) > 0 else float("inf")


@pytest.mark.parametrize("act", ["tanh", "selu", "elu", "gelu"])
def test_bsnn_preserves_forward_and_backward_norms_at_depth_200(act):
    # the paper's roots: b- for GELU (with b+ its fixed point q = 1 is unstable, see below)
    options = {"gpn": {"root": "paper"}, "orthogonal": {"thin_shell": True}}
    model = vgpcompile(deep(act), passes=["bsnn"], options=options)
    shells, grads = propagate(model)
    show(f"{act}-GPN, orthogonal, thin-shell input", shells, grads)
    assert len(shells) == DEPTH
    assert all(0.5 <= s <= 2.0 for s in shells)
    assert ratio(grads) <= 10.0


def test_relu_gpn_has_no_restoring_force_but_its_gradients_stay_balanced():
    # relu-GPN is positively homogeneous: E phi(sqrt(q) z)^2 = q, so finite-width fluctuations
    # of ||x||^2/n random-walk over depth (research/bsnn.md §4.2, 0.34 .. 3.7 at width 500).
    # Forward and backward shrink or grow together, so gradient norms still stay balanced.
    model = vgpcompile(deep("relu"), passes=["bsnn"], options={"orthogonal": {"thin_shell": True}})
    shells, grads = propagate(model)
    show("relu-GPN, orthogonal, thin-shell input", shells, grads)
    assert 0.1 <= min(shells) and max(shells) <= 10.0
    assert ratio(grads) <= 10.0


def test_gelu_gpn_with_the_plus_root_is_unstable_in_depth():
    # Both roots give E phi^2 = E phi'^2 = 1, but with b+ (E phi > 0) GELU-GPN's variance map
    # has an unstable fixed point at q = 1; the authors' b- is stable (research/bsnn.md §1.3).
    model = vgpcompile(
        deep("gelu"), passes=["bsnn"], options={"gpn": {"root": "plus"}, "orthogonal": {"thin_shell": True}}
    )
    shells, grads = propagate(model)
    show("gelu-GPN with root plus", shells, grads)
    assert max(shells) > 100.0


def test_without_gpn_the_signal_dies_and_without_orthogonal_gpn_explodes():
    plain = vgpcompile(deep("tanh"), passes=["orthogonal"], options={"orthogonal": {"thin_shell": True}})
    shells, grads = propagate(plain)
    show("plain tanh, orthogonal weights", shells, grads)
    assert shells[-1] < 0.01  # E tanh(z)^2 = 0.39 < 1: the forward signal decays layer after layer
    gpn_default_init = vgpcompile(deep("tanh"), passes=["gpn"])
    shells, grads = propagate(gpn_default_init)
    show("tanh-GPN, PyTorch default init", shells, grads)
    assert ratio(grads) > 1e3  # the bottom layers' gradients underflow
    assert any("gpn without orthogonal" in w for w in gpn_default_init.vgp_report.warnings)
