"""Train/eval mode in traced graphs: one graph that follows ``.train()`` / ``.eval()``.

torch.fx records ``self.training`` as the constant it had while tracing, so a graph traced
in train mode keeps dropping out after ``.eval()``. Capture therefore traces every region
twice, once with every module in train mode and once in eval mode, and merges the two:

- identical graphs (most regions: dropout and batch-norm *modules* are leaves that read
  their own flag at run time): the graph is kept as is;
- graphs with the same nodes that differ only in constants (``F.dropout(x, p,
  self.training)``, ``F.batch_norm(..., self.training, ...)``, ``dropout=0.0 if not
  self.training else p``): each differing constant becomes a run-time read of the
  ``training`` flag of the module whose code made the call (a ``get_attr`` of
  ``<owner>.training``; ``not`` of it, or :func:`by_mode` for other values), so one graph
  serves both modes and every pass sees one set of nodes;
- graphs that differ in their nodes (``if self.training: x = drop_path(x)``): the innermost
  module whose forward made the first differing call cannot be one graph; it raises
  :class:`ModeDependent` naming that module, and capture keeps it eager (a leaf of the
  enclosing graph), where it follows its mode as the original does.

One graph per region keeps targets, passes, freeze and the state_dict exactly as for a
mode-free region.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import fx, nn


class ModeDependent(Exception):
    """The train and eval graphs differ in their nodes; ``owner`` is the module to keep eager."""

    def __init__(self, owner: str, what: str) -> None:
        super().__init__(what)
        self.owner = owner


def by_mode(training: bool, when_training: Any, when_eval: Any) -> Any:
    """The value a constant had when traced in train mode, or in eval mode."""
    return when_training if training else when_eval


@contextmanager
def in_mode(module: nn.Module, training: bool) -> Iterator[None]:
    """Every module of ``module`` in ``training`` mode; each module's own flag restored after."""
    modules = list(module.modules())
    flags = [m.training for m in modules]
    # Module.train recurses and sets each flag through Module.__setattr__ (a dozen dict lookups):
    # for a deep model, called about ten times per compile, that was a tenth of a passes-off
    # compile. Where no class overrides train or __setattr__, setting each flag is what it does.
    plain = isinstance(training, bool) and all(_plain_mode(type(m)) for m in modules)
    if plain:
        for m in modules:
            object.__setattr__(m, "training", training)
    else:
        module.train(training)
    restore = object.__setattr__ if plain else setattr
    try:
        yield
    finally:
        for m, flag in zip(modules, flags):
            restore(m, "training", flag)


def _plain_mode(cls: type) -> bool:
    """Whether ``cls`` sets its mode as nn.Module does (no train or __setattr__ of its own)."""
    return cls.train is nn.Module.train and cls.__setattr__ is nn.Module.__setattr__


def owner_of(node: fx.Node) -> str:
    """The module whose code made ``node``'s call (a leaf call: the module that called the leaf)."""
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    if node.op == "call_module" and stack:
        stack = stack[:-1]
    return stack[-1][0] if stack else ""


def merge(train: fx.Graph, eval_: fx.Graph, root: nn.Module) -> fx.Graph:
    """One graph computing ``train`` in train mode and ``eval_`` in eval mode (``train``,
    rewritten in place), or :class:`ModeDependent` when their nodes differ. ``root`` is the
    traced module, which holds the tensor constants each trace made."""
    try:
        return _merge(train, eval_, root)
    finally:
        _drop_constants(eval_, train, root)


def _drop_constants(eval_: fx.Graph, train: fx.Graph, root: nn.Module) -> None:
    """Tensor constants only the eval trace refers to are left on ``root`` by fx: remove them."""
    kept = {n.target for n in train.nodes if n.op == "get_attr"}
    for n in eval_.nodes:
        if n.op == "get_attr" and n.target.startswith("_tensor_constant") and n.target not in kept:
            root.__dict__.pop(n.target, None)


def _merge(train: fx.Graph, eval_: fx.Graph, root: nn.Module) -> fx.Graph:
    t_nodes, e_nodes = list(train.nodes), list(eval_.nodes)
    index = {n: i for i, n in enumerate(t_nodes)}
    e_index = {n: i for i, n in enumerate(e_nodes)}
    diffs: list[tuple[fx.Node, str, Any, Any]] = []
    for i in range(max(len(t_nodes), len(e_nodes))):
        t = t_nodes[i] if i < len(t_nodes) else None
        e = e_nodes[i] if i < len(e_nodes) else None
        if t is None or e is None or t.op != e.op or not _same_target(t, e, root):
            raise ModeDependent(_deeper_owner(t, e), _describe(t, e))
        for key, tv, ev in _arg_diffs(t, e, index, e_index):
            if key is None:
                raise ModeDependent(_deeper_owner(t, e), _describe(t, e))
            diffs.append((t, key, tv, ev))
    for node, key, tv, ev in diffs:
        _make_dynamic(train, node, key, tv, ev)
    return train


def _same_target(t: fx.Node, e: fx.Node, root: nn.Module) -> bool:
    a, b = t.target, e.target
    if a is b or (isinstance(a, str) and a == b):
        return True
    if t.op == "get_attr" and a.startswith("_tensor_constant") and b.startswith("_tensor_constant"):
        x, y = getattr(root, a, None), getattr(root, b, None)  # made at trace time, e.g. torch.zeros(4)
        return isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
    return False


def _deeper_owner(t: fx.Node | None, e: fx.Node | None) -> str:
    """The owner of the first differing call: the deeper of the two nodes' owners."""
    owners = [owner_of(n) for n in (t, e) if n is not None and n.op != "output"]
    return max(owners, key=lambda o: (o.count(".") + bool(o), o), default="")


def _describe(t: fx.Node | None, e: fx.Node | None) -> str:
    def show(n: fx.Node | None) -> str:
        if n is None:
            return "nothing"
        target = getattr(n.target, "__name__", n.target)
        return f"{n.op} {target}"

    return f"the forward computes different things in train and eval mode ({show(t)} vs {show(e)})"


def _arg_diffs(t: fx.Node, e: fx.Node, index: dict, e_index: dict):
    """(key, train value, eval value) per differing constant argument; key None when the
    nodes differ in a way a flag cannot express (another input node, another arity)."""
    for key in ("args", "kwargs"):
        ta, ea = getattr(t, key), getattr(e, key)
        if key == "kwargs" and set(ta) != set(ea):
            yield None, None, None
            return
        items = ta.items() if key == "kwargs" else enumerate(ta)
        if key == "args" and len(ta) != len(ea):
            yield None, None, None
            return
        for k, tv in items:
            ev = ea[k]
            if _same(tv, ev, index, e_index):
                continue
            if isinstance(tv, fx.Node) or isinstance(ev, fx.Node) or not _is_constant(tv) or not _is_constant(ev):
                yield None, None, None
                return
            yield (key, k), tv, ev


def _same(a: Any, b: Any, index: dict, e_index: dict) -> bool:
    if isinstance(a, fx.Node) or isinstance(b, fx.Node):
        return isinstance(a, fx.Node) and isinstance(b, fx.Node) and index.get(a) == e_index.get(b)
    if type(a) is not type(b):
        return False
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y, index, e_index) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], index, e_index) for k in a)
    if isinstance(a, torch.Tensor):
        return a is b
    try:
        return bool(a == b)
    except Exception:
        return a is b


def _is_constant(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str, type(None)))


def _make_dynamic(graph: fx.Graph, node: fx.Node, key: tuple, train_value: Any, eval_value: Any) -> None:
    """Replace one constant argument of ``node`` by its value for the owner's current mode."""
    owner = owner_of(node)
    with graph.inserting_before(node):
        flag = graph.get_attr(f"{owner}.training" if owner else "training")
        if train_value is True and eval_value is False:
            value = flag
        elif train_value is False and eval_value is True:
            value = graph.call_function(operator.not_, (flag,))
        else:
            value = graph.call_function(by_mode, (flag, train_value, eval_value))
    for new in {flag, value}:
        new.meta["nn_module_stack"] = dict(node.meta.get("nn_module_stack") or {})
    kind, k = key
    if kind == "args":
        args = list(node.args)
        args[k] = value
        node.args = tuple(args)
    else:
        node.kwargs = {**node.kwargs, k: value}
