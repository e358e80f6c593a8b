"""rai's lowering: remove every cut (with its table) and the ``idx`` input.

Each ``cut(h, idx)`` call is replaced by h (what it returns in eval mode), so the frozen
graph computes exactly the chained network with the trained weights, under the original
parameter names; its forward takes the original inputs again.
"""

from __future__ import annotations

from torch import fx, nn

from ...core.rewriter import active
from .guard import RAIGuard
from .modules import RAICut


def lower(model: nn.Module) -> None:
    for gm in [m for m in model.modules() if isinstance(m, fx.GraphModule)]:
        found = {name: m for name, m in gm.named_modules() if isinstance(m, RAICut)}
        if not found:
            continue
        rewriter = active()
        for node in rewriter.nodes(gm):
            if node.op == "call_module" and str(node.target) in found:
                rewriter.replace_uses(node, node.args[0])
                rewriter.erase(node)
        guards = {name for name, m in gm.named_modules() if isinstance(m, RAIGuard)}
        for node in rewriter.nodes(gm):  # the idx guard at the forward's start
            if node.op == "call_module" and str(node.target) in guards:
                rewriter.replace_uses(node, node.args[0])
                rewriter.erase(node)
        idx_names = {cut.settings.idx_name for cut in found.values()}
        found.update({name: gm.get_submodule(name) for name in guards})
        for node in rewriter.nodes(gm):
            if node.op == "placeholder" and node.target in idx_names and not node.users:
                rewriter.erase(node)
        for name in sorted(found, key=len, reverse=True):
            rewriter.remove_module(gm, name)
        rewriter.lint(gm)
        gm.recompile()
