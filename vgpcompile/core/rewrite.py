"""The ways passes (and freeze) change a graph: swap one node for a new call, or an
activation call for a module call."""

from __future__ import annotations

from torch import fx, nn

from .targets import META_APPLIED, META_SITE, Site


def unique_name(gm: nn.Module, base: str) -> str:
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    return name


def replace_node(
    node: fx.Node, op: str, target, args: tuple, kwargs: dict | None = None, meta_keys=("nn_module_stack",)
) -> fx.Node:
    """Put a new ``op`` node calling ``target`` where ``node`` was: it takes over every use,
    carries ``meta_keys`` of the old node's meta, and the old node is erased."""
    graph = node.graph
    with graph.inserting_after(node):
        new = graph.create_node(op, target, args, kwargs or {})
    new.meta.update({k: v for k, v in node.meta.items() if k in meta_keys})
    node.replace_all_uses_with(new)
    graph.erase_node(node)
    return new


def mark_applied(node: fx.Node, site: Site, pass_name: str) -> None:
    """Carry the site's name and applied passes to a (replacement) node."""
    node.meta[META_SITE] = site.name
    node.meta[META_APPLIED] = tuple(sorted(set(site.applied) | {pass_name}))


def replace_activation(site: Site, module: nn.Module, pass_name: str, tag: str) -> fx.Node | None:
    """Make ``site`` call ``module`` on the activation's input instead; return the new node.

    An activation module called from this one place is swapped under its own name, so the
    model's module tree keeps its shape. Otherwise (function or method spelling, or a
    module shared by several calls) the new module is added as ``<node>_<tag>`` on the
    region. A formula site is replaced whole: one call on its input, the formula's nodes
    erased. An in-place activation also mutated its input: every later use of that input
    is rewired to the result so the program still computes the same values. A site in
    eager code is rewritten by core.eager (returns None: there is no node).
    """
    if site.node is None:
        from .eager import replace_eager_activation

        replace_eager_activation(site, module, tag)
        return None
    node = site.node
    gm = node.graph.owning_module
    src = formula_input(site) if site.nodes else node.args[0]
    if site.spelling == "module" and site.module_calls == 1:
        gm.set_submodule(str(node.target), module)
        new = node
        new.args, new.kwargs = (src,), {}
    else:
        name = unique_name(gm, f"{node.name}_{tag}")
        gm.add_submodule(name, module)
        new = replace_node(node, "call_module", name, (src,))
        for dead in reversed(site.nodes[:-1]):  # the rest of a formula, now unused
            node.graph.erase_node(dead)
    if site.inplace:
        _rewire_later_uses(src, new)
    mark_applied(new, site, pass_name)
    return new


def _rewire_later_uses(src: fx.Node, new: fx.Node) -> None:
    for user in list(src.users):
        if user is not new and user > new:  # fx nodes compare by position in the graph
            user.replace_input_with(src, new)


def formula_input(site: Site) -> fx.Node:
    """The current input of a formula site (an earlier rewrite may have replaced the node)."""
    inside = set(site.nodes)
    return next(a for n in site.nodes for a in n.all_input_nodes if a not in inside)
