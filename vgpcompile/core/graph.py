"""The nonlinear depth of a model.

The nonlinear depth is the largest number of activations on any input -> output path. A
call into a traced sub-region counts with that region's own depth. An eager module's
children are summed, as if called in sequence: an upper bound, flagged as such.
"""

from __future__ import annotations

from torch import fx, nn

from . import protocol
from .capture import CONTAINERS, is_torch_leaf
from .catalogue import Catalogue
from .eager import eager_replacements, function_sites
from .lookup import submodule


def nonlinear_depth(module: nn.Module, catalogue: Catalogue) -> tuple[int, bool]:
    """(depth, exact) of ``module``."""
    if isinstance(module, fx.GraphModule):
        return _graph_depth(module, catalogue)
    if catalogue.match_module(module) is not None:
        return 1, True
    declared = protocol.depth_of(module)
    if declared is not None:
        return declared, True
    if is_torch_leaf(module) and not isinstance(module, CONTAINERS):
        return 0, True
    # an eager module: its children and the activation calls of its own code, summed;
    # the replacements of those calls (core/eager.py) are counted as the calls they replace
    replaced = eager_replacements(module)
    total = len(function_sites(module, catalogue)) if not isinstance(module, CONTAINERS) else 0
    for name, child in module.named_children():
        if name not in replaced:
            total += nonlinear_depth(child, catalogue)[0]
    return total, False


def _graph_depth(gm: fx.GraphModule, catalogue: Catalogue) -> tuple[int, bool]:
    # an fx graph's node list is a topological order (lint checks each input comes earlier):
    # the longest path is one sweep over it, no networkx graph to build and sort (half the time)
    exact = True
    best: dict[fx.Node, int] = {}
    for node in gm.graph.nodes:
        weight = 0
        if node.op == "call_module":
            weight, sub_exact = nonlinear_depth(submodule(gm, str(node.target)), catalogue)
            exact &= sub_exact
        elif catalogue.match_node(node, gm) is not None:
            weight = 1
        best[node] = weight + max((best[p] for p in node.all_input_nodes), default=0)
    return max(best.values(), default=0), exact
