"""Freeze step for ``tat``: fold the transformed activation's constants into its neighbours.

    Linear/Conv(W, c) -> gamma * (phi(alpha x + beta) + delta) -> Linear/Conv(V, e)
      ==>  Linear/Conv(alpha W, alpha c + beta) -> phi -> Linear/Conv(gamma V, e + gamma delta V 1)

alpha and beta go into the producing layer when the activation is its only user (exact,
zero padding included: it scales the layer's output); gamma and gamma * delta go into the
consuming layer through reshapes and pools with gpn's lowering (``fold_into_consumer``: the
same exactness rules, one Add before a zero-padded conv). What cannot fold stays in one
TATActivation holding only the constants left, so the frozen model equals the training form.
"""

from __future__ import annotations

from torch import fx

from ...core.catalogue import DEFAULT, Catalogue
from ...core.rewriter import active
from ..gpn.lower import fold_into_consumer, scale_output, sole_producer
from .kernel import AFFINE
from .modules import TATActivation


def fold_tat(gm: fx.GraphModule, catalogue: Catalogue = DEFAULT) -> int:
    """Fold every TATActivation of ``gm`` as far as exact; return how many became plain calls."""
    rewriter = active()
    calls, plain_calls = rewriter.call_counts(gm), 0
    for node in rewriter.nodes(gm):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), TATActivation):
            continue
        if calls[node.target] != 1:
            continue
        act = gm.get_submodule(node.target)
        if _fold_into_producer(node, gm, calls, act):
            act = _with(act, alpha=1.0, beta=0.0)
            rewriter.swap_module(gm, node.target, act)
        plain = catalogue.plain_call(act.activation.name, act.params)
        replace = lambda n=node, m=act, p=plain: _remainder(n, gm, m, p)
        if fold_into_consumer(node, gm, calls, act.gamma, act.gamma * act.delta, replace):
            plain_calls += plain is not None and act.alpha == 1.0 and act.beta == 0.0
    rewriter.drop_unused_modules(gm)
    return plain_calls


def _with(act: TATActivation, **values: float) -> TATActivation:
    constants = {k: getattr(act, k) for k in ("alpha", "beta", "gamma", "delta")}
    return TATActivation(act.activation, act.params, **{**constants, **values})


def _remainder(node: fx.Node, gm: fx.GraphModule, act: TATActivation, plain) -> fx.Node:
    """The activation without its output constants: a plain call when its input ones are gone too."""
    if plain is not None and act.alpha == 1.0 and act.beta == 0.0:
        target, kwargs = plain
        return active().replace_node(node, "call_function", target, node.args, kwargs, meta_keys=tuple(node.meta))
    active().swap_module(gm, node.target, _with(act, gamma=1.0, delta=0.0))
    return node


def _fold_into_producer(node: fx.Node, gm: fx.GraphModule, calls: dict[str, int], act: TATActivation) -> bool:
    """alpha * (W x + c) + beta as one layer, when the layer feeds only this activation."""
    if act.alpha == 1.0 and act.beta == 0.0:
        return True
    src = sole_producer(node, calls)
    layer = gm.get_submodule(str(src.target)) if src is not None else None
    if type(layer) not in AFFINE:
        return False
    active().swap_module(gm, str(src.target), scale_output(layer, act.alpha, act.beta))
    return True
