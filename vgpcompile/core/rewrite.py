"""The ways passes (and freeze) change a graph: swap one node for a new call, or an
activation call for a module call. Each goes through the active :class:`~.rewriter.Rewriter`
(the runner's, for the pass now running), which stamps, records and invalidates."""

from __future__ import annotations

from torch import fx, nn

from .lookup import attribute, submodule
from .rewriter import Rewriter, active, formula_input, unique_name
from .targets import Site

__all__ = ["formula_input", "mark_applied", "mutation_free", "replace_activation", "replace_node", "unique_name"]


def _for(pass_name: str) -> Rewriter:
    found = active()
    return found if found.pass_name == pass_name else Rewriter(pass_name)


def replace_node(
    node: fx.Node, op: str, target, args: tuple, kwargs: dict | None = None, meta_keys=("nn_module_stack",)
) -> fx.Node:
    """Put a new ``op`` node calling ``target`` where ``node`` was: it takes over every use,
    carries ``meta_keys`` of the old node's meta, and the old node is erased."""
    return active().replace_node(node, op, target, args, kwargs, meta_keys)


def mark_applied(node: fx.Node, site: Site, pass_name: str) -> None:
    """Carry the site's name and applied passes to a (replacement) node."""
    _for(pass_name).mark_applied(node, site)


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
    return _for(pass_name).replace_activation(site, module, tag)


def mutation_free(node: fx.Node, gm: fx.GraphModule) -> bool:
    """No user of ``node`` can change it in place: each is a torch.nn module or a module a pass
    inserted, without ``inplace=True``, or a call whose name does not end in ``_`` and that has no
    ``inplace=True``. A view, a model output or anything else (an eager module) may be mutated
    later, so a cut feeding it keeps its copy."""
    for user in node.users:
        if user.op == "call_module":
            module = submodule(gm, str(user.target))
            leaf = next(module.children(), None) is None  # a container's children could work in place
            trusted = leaf and (type(module).__module__.startswith("torch.nn.") or hasattr(module, "vgp_pass"))
            if not trusted or attribute(module, "inplace", False) or isinstance(module, nn.Identity):
                return False
        elif user.op in ("call_function", "call_method"):
            name = user.target if isinstance(user.target, str) else getattr(user.target, "__name__", "")
            if not name or name.endswith("_") or user.kwargs.get("inplace") or name in _VIEWS:
                return False
        else:
            return False
    return True


# calls that return a view of their input: the view may be mutated later, which mutates the cut's output
_VIEWS = frozenset({"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "transpose", "permute", "t",
                    "narrow", "select", "expand", "getitem", "split", "chunk", "unbind", "movedim", "view_as",
                    "as_strided", "diagonal", "unfold", "contiguous", "detach", "real", "imag", "T", "mT"})  # fmt: skip
