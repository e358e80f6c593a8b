"""How well-conditioned the rotated layers are, for arp's warning.

A unit's rho = L / (max(|z_Q|, floor * |q| * ||w||) + eps) against its typical value
L / (|q| * ||w||): the ratio A = rho * |q| * ||w|| / L is the unit's *amplification*.
With the reference formula (floor = 0) a unit whose pivot pre-activation z_Q happens to be
near 0 gets A in the hundreds: its rotated weights reach 1e2-1e3 at a default init, the
unit acts as a step of w.x + b, and rounding near its zero crossing is amplified by rho.
Stacked over depth this makes the float32 model differ from the float64 one (a 50-layer
tanh MLP: by 0.06-0.97 on outputs up to 0.7-1.2). The floor bounds A by 1 / floor.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from ...core.rewriter import active
from ...core.targets import Layer, Site
from .modules import unit_norms, unit_rho
from .recurrent import _AutoRotRecurrent

WARN_AMPLIFICATION = 20.0  # a unit's rho at least this many times its typical value


def _linear_like(weight: torch.Tensor, bias, q: float, L: float, eps: float, floor: float, **kw) -> torch.Tensor:
    rho = unit_rho(weight, bias, q=q, L=L, eps=eps, floor=floor, **kw)
    return rho * abs(q) * unit_norms(weight, **kw) / L


def amplification(module: nn.Module) -> torch.Tensor | None:
    """A per unit of a rotated module (None for a module arp did not insert)."""
    if getattr(module, "vgp_pass", None) != "arp":
        return None
    with torch.no_grad():
        if isinstance(module, _AutoRotRecurrent):
            out = []
            for layer, names in module._groups():
                w_ih, w_hh = getattr(module, names[0]), getattr(module, names[1])
                q_in = module.q_x if layer == 0 else module.q_h
                typical = torch.hypot(unit_norms(w_ih) * abs(q_in), unit_norms(w_hh) * abs(module.q_h))
                out.append(module._rho(names, layer) * typical / module.arp_L_rows)
            return torch.cat(out)
        transposed, groups = module._transposed, getattr(module, "groups", 1)
        return _linear_like(
            module.weight, module.bias, module.q, module.L, module.eps, module.floor,
            transposed=transposed, groups=groups,
        )  # fmt: skip


def _call_amplification(node: fx.Node) -> torch.Tensor:
    from ...core.runner import get_attr
    from .modules import groups_of

    gm = active().module_of(node)
    kw = dict(node.kwargs)
    w_node = node.args[1] if len(node.args) > 1 else kw.get("weight")
    b_node = node.args[2] if len(node.args) > 2 else kw.get("bias")
    weight = get_attr(gm, str(w_node.target))
    bias = get_attr(gm, str(b_node.target)) if isinstance(b_node, fx.Node) else b_node
    transposed = node.target.vgp_transposed
    groups = groups_of(tuple(node.args[3:]), kw) if transposed else 1
    with torch.no_grad():
        return _linear_like(
            weight, bias, kw["q"], kw["L"], kw.get("eps", 1e-5), kw.get("floor", 0.0),
            transposed=transposed, groups=groups,
        )  # fmt: skip


def rotated_amplifications(targets: list) -> list[torch.Tensor]:
    """A of every unit of each target arp rotated."""
    found = []
    for t in targets:
        if isinstance(t, Layer):
            a = amplification(t.gm.get_submodule(t.name))
        elif isinstance(t, Site):
            x = active().input_of(t.node)
            a = None
            if isinstance(x, fx.Node) and x.op == "call_module":
                a = amplification(active().module_of(x).get_submodule(str(x.target)))
            elif isinstance(x, fx.Node) and getattr(x.target, "vgp_pass", None) == "arp":
                a = _call_amplification(x)
        else:
            a = None
        if a is not None:
            found.append(a.detach().float().flatten())
    return found


def conditioning_warning(targets: list, depth: int | None, floor: float) -> str | None:
    """The warning for rotated units whose rho is far above its typical value, or None."""
    if floor * WARN_AMPLIFICATION >= 2:
        # A <= 1 / floor for every unit (rho's denominator is at least floor * |q| * ||w||, module
        # docstring): at floor >= 2 / WARN_AMPLIFICATION (the default 0.25: A <= 4) none can reach
        # the warning's level, so the per-unit pass over every rotated layer (a tenth of arp's
        # compile at 1000 layers) is skipped; tests/passes/arp checks the bound
        return None
    amps = rotated_amplifications(targets)
    if not amps:
        return None
    a = torch.cat(amps)
    bad = int((a >= WARN_AMPLIFICATION).sum())
    if not bad:
        return None
    at = f" at nonlinear depth {depth}" if depth else ""
    return (
        f"arp: {bad} of {a.numel()} rotated units have a near-degenerate pivot (|z_Q| < |q|*||w||/"
        f"{WARN_AMPLIFICATION:g}; rho up to {float(a.max()):.0f}x its typical value): they act as steps, and{at} "
        "float32 rounding near their zero crossings is amplified (a 50-layer tanh MLP at floor 0: float32 and "
        "float64 outputs differ by up to 0.97). The option floor (default 0.25; here "
        f"{floor:g}) bounds rho by L / (floor*|q|*||w||)"
    )
