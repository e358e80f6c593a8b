"""Hierarchical torch.fx capture: the largest traceable subtrees become GraphModules.

A module whose ``forward`` cannot be traced (data-dependent control flow, a Proxy used as
an int, in an ``assert`` or a shape check) does not sink the model. The innermost module
that raised is made a leaf and the parent is traced again; a leaf kept for that reason
stays eager Python, and each of its children is captured in turn. When the root itself
fails, the root stays eager and its children are captured; when nothing at all can be
traced, the model is returned eager with the report (never refused). Every module left
eager is reported with the first line of its trace error and the user's file:line.

What capture guarantees, and how:

- **Train/eval mode** (core/modes.py): each region is traced in train and in eval mode and
  the two merged into one graph that reads ``training`` at run time; a module whose
  forward computes different things per mode stays eager.
- **Arguments with defaults**: a forward is traced with its ``None`` and ``bool`` defaults
  as those constants (``if mask is None:`` takes the branch the default takes) and
  ``**kwargs`` empty, each guarded: a call with another value raises, naming the module
  and the fix, instead of computing something else.
- **Decorated forwards**: a forward wrapped by a decorator in :data:`TRANSPARENT_WRAPPERS`
  (data: wrappers that do not change what forward computes) is traced unwrapped; any other
  wrapper keeps the module eager, with the decorator's location.
- **torch's composite layers** (:data:`TORCH_COMPOSITES`: nn.TransformerEncoderLayer,
  ...) are traced into, through their standard path (the fused inference fast path is off
  while tracing), so their feed-forward activations are sites.
- **Checked against the original** when example inputs are given (core/verify.py): every
  traced region must reproduce, bitwise, the original module's outputs on the calls the
  example inputs make, in train mode (same random state) and eval mode; a region that
  does not, or does not run, is left eager with that reason. Without example inputs
  nothing is run: the guarantees above are structural.
"""

from __future__ import annotations

import inspect
import os
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from . import arguments, modes, protocol
from .affine import declared
from .lookup import submodule
from .region import collides, make_region, referenced_children
from .targets import MODEL_OUTPUT, output_nodes

_TORCH_DIR = os.path.dirname(torch.__file__)
_OWN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)
_FAILED = "_vgp_failed_module"
_PLAIN_TRACER = fx.Tracer()

# torch.nn modules traced into rather than kept whole: their activations are sites.
TORCH_COMPOSITES: tuple[type[nn.Module], ...] = (
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
    nn.TransformerEncoder,
    nn.TransformerDecoder,
    nn.Transformer,
)
# Decorators on forward that do not change what it computes: (file suffix, wrapper name) -> why.
TRANSPARENT_WRAPPERS: dict[tuple[str, str], str] = {
    ("transformers/utils/deprecation.py", "wrapped_func"): "renames deprecated keyword arguments",
    ("transformers/modeling_layers.py", "forward_with_checkpointing"): "gradient checkpointing (same values)",
    ("transformers/integrations/accelerate.py", "wrapped"): "accelerate's offloading hooks",
}
Verifier = Callable[[str, nn.Module, fx.GraphModule], "str | None"]


@dataclass
class EagerModule:
    """A module left as eager Python, and why."""

    name: str
    reason: str
    forced: bool = False  # the user asked for it with leaf= or eager=
    checked: bool = False  # left eager by the check against the original (example inputs)
    opaque: bool = False  # leaf=: nothing inside is captured or rewritten


@dataclass
class Capture:
    """The captured model: its root, the traced regions by prefix, and what stayed eager."""

    root: nn.Module
    regions: dict[str, fx.GraphModule] = field(default_factory=dict)
    eager: list[EagerModule] = field(default_factory=list)
    autowrap: tuple[Callable, ...] = ()
    leaf_types: tuple[type, ...] = ()
    is_user_leaf: Callable[[str, nn.Module], bool] = lambda name, m: False
    is_user_eager: Callable[[str, nn.Module], bool] = lambda name, m: False
    verify: Verifier | None = None
    observed: Mapping[str, list] = field(default_factory=dict)  # recorded calls per module (core/verify.py)
    plan: Mapping[str, Any] = field(default_factory=dict)  # an earlier compile's decisions (a recipe's "capture")
    decided: dict[str, dict] = field(default_factory=dict)  # each traced region's argument decision
    heights: dict[int, int] = field(default_factory=dict)  # id(module) -> levels of modules below it
    one_graph: bool = False  # a pass cuts through the whole forward: nothing is split off (rai)

    def decisions(self) -> dict[str, Any]:
        """What ``load`` needs to capture the same way without example inputs (JSON): every
        module left eager, and how each region's arguments were traced."""
        eager = {e.name: e.reason for e in self.eager if not e.forced}
        return {"eager": eager, "args": dict(self.decided)}


class _Tracer(fx.Tracer):
    """A tracer that keeps chosen modules opaque and tags errors with the module that raised."""

    def __init__(
        self,
        leaves: set[str] | None = None,
        is_user_leaf: Callable[[str, nn.Module], bool] | None = None,
        out: Capture | None = None,
    ) -> None:
        # defaults: unpickling a GraphModule re-creates its tracer class with no arguments
        super().__init__(autowrap_functions=out.autowrap if out else ())
        self._leaves = leaves or set()
        self._is_user_leaf = is_user_leaf or (lambda name, m: False)
        self._leaf_types = out.leaf_types if out else ()

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self._leaves or type(m) in self._leaf_types or self._is_user_leaf(qualname, m):
            return True
        return is_torch_leaf(m)

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as err:
            if not hasattr(err, _FAILED):  # the innermost failing module wins
                setattr(err, _FAILED, self.path_of_module(m))
            raise


def describe_trace_error(err: BaseException, module: nn.Module | None = None) -> str:
    """First line of the error plus the deepest file:line of the user's code (neither torch's
    nor vgpcompile's); the module's forward when the error was raised outside user code."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    frames = [f for f in traceback.extract_tb(err.__traceback__) if _is_user_file(f.filename)]
    if frames:
        where = f" ({frames[-1].filename}:{frames[-1].lineno})"
    else:
        where = f" (in {forward_location(module)})" if module is not None else ""
    return f"{type(err).__name__}: {first}{where}"


def _is_user_file(filename: str) -> bool:
    path = os.path.abspath(filename)
    return not path.startswith(_TORCH_DIR) and not path.startswith(_OWN_DIR) and not filename.startswith("<")


def forward_location(module: nn.Module) -> str:
    """``Class.forward (file:line)`` of ``module``'s forward, for messages."""
    fn = inspect.unwrap(type(module).forward)
    code = getattr(fn, "__code__", None)
    where = f"{code.co_filename}:{code.co_firstlineno}" if code else "?"
    return f"{type(module).__name__}.forward at {where}"


def is_torch_leaf(module: nn.Module) -> bool:
    """torch.nn's own modules (Linear, Tanh, LSTM, ...) are kept whole, as fx does by default,
    except its composite layers (TORCH_COMPOSITES); so are declared affine layers of other
    libraries (core/affine.py) and the modules vgpcompile inserts, so a compiled model
    compiles again cleanly."""
    if protocol.inserted_by(module) is not None or declared(module) is not None:
        return True  # declared affine layers of other libraries too: sites see them as producers
    if type(module) in TORCH_COMPOSITES:
        return False
    return _PLAIN_TRACER.is_leaf_module(module, "")


def capture(
    model: nn.Module,
    is_user_leaf: Callable[[str, nn.Module], bool] = lambda name, m: False,
    autowrap: tuple[Callable, ...] = (),
    leaf_types: tuple[type, ...] = (),
    is_user_eager: Callable[[str, nn.Module], bool] = lambda name, m: False,
    verify: Verifier | None = None,
    observed: Mapping[str, list] | None = None,
    plan: Mapping[str, Any] | None = None,
    one_graph: bool = False,
) -> Capture:
    """Trace ``model`` hierarchically. ``model`` is changed in place (pass a copy).

    ``autowrap`` functions are recorded as single calls and ``leaf_types`` modules as single
    module calls (user-registered activations), so sites see them whole. ``is_user_leaf``
    modules stay opaque; ``is_user_eager`` modules stay eager with their children captured.
    ``verify(prefix, original, gm)`` returns why a traced region may not replace the
    original (core/verify.py), or None; ``observed`` holds the modules' recorded calls
    (core/arguments.py decides from them); ``plan`` an earlier compile's
    :meth:`Capture.decisions`, to capture the same way. ``one_graph``: the modules that the
    class's other methods name are traced into the forward's graph, not split off (a pass such
    as rai cuts through the whole forward); those methods run them eagerly, with the same layers.
    """
    result = Capture(
        model, {}, [], autowrap, leaf_types, is_user_leaf, is_user_eager, verify, observed or {}, plan or {}
    )
    result.heights, result.one_graph = tree_heights(model), one_graph
    with _no_mha_fastpath():
        result.root = _capture(model, "", result)
    return result


# fx's generated code reaches a module k levels down through k nested getattr calls, and
# Python's parser takes at most 200 nested parentheses: a region whose module tree is deeper
# cannot be one graph. Such a module is left eager (its children captured) before any trace,
# so a chain of nested wrappers costs no trace per level.
FX_MAX_NESTING = 190


def tree_heights(model: nn.Module) -> dict[int, int]:
    """id(module) -> the number of module levels below it, without recursion (for trees
    deeper than Python's recursion limit)."""
    heights: dict[int, int] = {}
    stack: list[tuple[nn.Module, bool]] = [(model, False)]
    while stack:
        module, done = stack.pop()
        children = [c for c in module._modules.values() if c is not None]
        if done:
            heights[id(module)] = 1 + max((heights.get(id(c), 0) for c in children), default=-1)
        elif id(module) not in heights:
            stack.append((module, True))
            stack += [(c, False) for c in children if id(c) not in heights]
    return heights


@contextmanager
def _no_mha_fastpath() -> Iterator[None]:
    """Trace torch's transformer layers through their standard path, not the fused one."""
    backend = getattr(torch.backends, "mha", None)
    if backend is None:
        yield
        return
    before = backend.get_fastpath_enabled()
    backend.set_fastpath_enabled(False)
    try:
        yield
    finally:
        backend.set_fastpath_enabled(before)


def _capture(
    module: nn.Module, prefix: str, out: Capture, model_output: bool = False, split_off: bool = False
) -> nn.Module:
    """``module`` as a region, or eager with its children captured. ``split_off``: a module split off
    by region.referenced_children, which the class's other methods call too; ``model_output``: the
    root graph returns what it returns, so its final activation is the model's."""
    name = prefix.rstrip(".")
    if out.is_user_eager(name, module):
        return _leave_eager(module, prefix, "kept eager by eager=", out, forced=True)
    planned_eager = (out.plan.get("eager") or {}).get(name or "<root>")
    if planned_eager:
        return _leave_eager(module, prefix, planned_eager, out)
    forward, reason = traceable_forward(module)
    reason = reason or collides(module)
    height = out.heights.get(id(module), 0)
    if not reason and height > FX_MAX_NESTING:
        reason = (
            f"its modules nest {height} levels deep, more than the {FX_MAX_NESTING} torch.fx's generated code can "
            f"address (Python's parser limit) (in {forward_location(module)})"
        )
    if reason:
        return _leave_eager(module, prefix, reason, out)
    forced: dict[str, str] = {}
    own = referenced_children(module)  # called by the class's other methods: kept callable (core/region.py)
    inlined, own = (own, set()) if out.one_graph else (set(), own)
    while True:
        tracer = _Tracer(set(forced) | own, lambda q, m: out.is_user_leaf(prefix + q, m), out)
        try:
            decision = arguments.decide(
                forward or type(module).forward,
                name,
                (out.plan.get("args") or {}).get(name or "<root>"),
                out.observed.get(name),
                lambda concrete, tracer=tracer: _trace(tracer, module, forward, concrete, True),
                other_callers=split_off,
            )
            if decision.reason:
                return _leave_eager(module, prefix, f"{decision.reason} (in {forward_location(module)})", out)
            graph = _trace_both_modes(tracer, module, forward, decision)
            break
        except modes.ModeDependent as err:
            if not err.owner or err.owner in forced:
                return _leave_eager(module, prefix, f"{err} (in {forward_location(module)})", out)
            forced[err.owner] = f"{err} (in {forward_location(module.get_submodule(err.owner))})"
        except Exception as err:
            failed = getattr(err, _FAILED, None)
            if failed is None or failed in forced:
                return _leave_eager(module, prefix, describe_trace_error(err, module), out)
            forced[failed] = describe_trace_error(err, module.get_submodule(failed))
    try:
        gm = make_region(module, graph)
    except (SyntaxError, RecursionError) as err:  # fx's code for ~200 nested modules passes Python's parser limits
        why = f"torch.fx cannot generate its code ({type(err).__name__}: {getattr(err, 'msg', err)}; modules nested"
        return _leave_eager(module, prefix, f"{why} too deeply?) (in {forward_location(module)})", out)
    if model_output:
        gm.meta[MODEL_OUTPUT] = True
    _complete_state(gm, module)
    _copy_hooks(module, gm)
    _explain_guards(gm, name or "<root>", type(module).__name__)
    reason = out.verify(prefix, module, gm) if out.verify else None
    if reason:
        return _leave_eager(module, prefix, reason, out, checked=True)
    out.regions[prefix] = gm
    if decision.record is not None:
        out.decided[name or "<root>"] = decision.record
    for qual, why in forced.items():
        _leave_eager(gm.get_submodule(qual), f"{prefix}{qual}.", why, out)
    for qual in sorted(inlined):
        _restore(gm, module, qual)  # the same layers as the graph's: the other methods run them eagerly
    returned = {n.target for n in output_nodes(graph) if n.op == "call_module"} if _is_model_output(gm, prefix) else ()
    for qual in sorted(own - set(forced)):
        _restore(gm, module, qual)
        if not out.is_user_leaf(prefix + qual, gm.get_submodule(qual)):
            gm.set_submodule(qual, _capture(gm.get_submodule(qual), f"{prefix}{qual}.", out, qual in returned, True))
    _note_user_leaves(gm, graph, prefix, out)
    return gm


def _restore(gm: fx.GraphModule, original: nn.Module, qual: str) -> None:
    """Put ``original``'s own module at ``qual`` and at each container above it (``blocks`` of
    ``blocks.0``) into the region: where forward did not call it, GraphModule left an empty
    stand-in (no forward, not iterable). It holds the same parameters and leaves as the stand-in."""
    parts = qual.split(".")
    for i in range(1, len(parts) + 1):
        path = ".".join(parts[:i])
        mine = original.get_submodule(path)
        if (i == len(parts) or isinstance(mine, CONTAINERS)) and gm.get_submodule(path) is not mine:
            gm.set_submodule(path, mine)


def _is_model_output(gm: fx.GraphModule, prefix: str) -> bool:
    return prefix == "" or gm.meta.get(MODEL_OUTPUT, False)


def _trace(tracer: _Tracer, module: nn.Module, forward: Callable | None, concrete: dict, training: bool) -> fx.Graph:
    with modes.in_mode(module, training), _unwrapped(type(module), forward):
        return _plain_signature(tracer.trace(module, concrete_args=concrete), concrete)


def _trace_both_modes(tracer: _Tracer, module: nn.Module, forward: Callable | None, decision) -> fx.Graph:
    """One graph that follows ``.train()``/``.eval()`` (core/modes.py). A region made only
    of torch's containers around leaves (an nn.Sequential of layers) reads no training flag
    while tracing, and is traced once."""
    modes_ = (True,) if _mode_free(tracer, module, "") else (True, False)
    graphs = [_trace(tracer, module, forward, decision.concrete, training) for training in modes_]
    for graph in graphs:
        arguments.drop_guards(graph, decision.unguarded)
    return modes.merge(*graphs, module) if len(graphs) == 2 else graphs[0]


def _mode_free(tracer: _Tracer, module: nn.Module, qual: str) -> bool:
    if qual and tracer.is_leaf_module(module, qual):
        return True
    if type(module) not in (nn.Sequential, nn.ModuleList, nn.ModuleDict):
        return False
    return all(_mode_free(tracer, child, f"{qual}.{name}" if qual else name) for name, child in module.named_children())


def _plain_signature(graph: fx.Graph, concrete: dict[str, Any]) -> fx.Graph:
    """The traced forward takes the original's parameter names (fx renames a constant
    argument ``mask`` to ``mask_1``, which breaks keyword calls) and returns its structure
    directly (an empty ``**kwargs`` makes fx generate pytree flattening code)."""
    for node in graph.nodes:
        if isinstance(node.type, str):  # a postponed annotation fx cannot resolve: it breaks pickling the region
            node.type = None
        if node.op == "placeholder":
            base = str(node.target).rsplit("_", 1)[0]
            if base in concrete and str(node.target) == f"{base}_1":
                node.target = base
    codegen = graph._codegen
    info = getattr(codegen, "pytree_info", None)
    if info is not None:
        out = next(n for n in reversed(graph.nodes) if n.op == "output")
        structure = torch.utils._pytree.tree_unflatten(list(out.args[0]), info.out_spec)
        if not _plain_structure(structure):
            raise TypeError("the forward returns a custom container, which a traced graph cannot rebuild")
        out.args = (structure,)
        graph._codegen = fx.graph.CodeGen()
    if type(graph._codegen) is fx.graph.CodeGen:
        graph._codegen = ModuleCallCodeGen()
    return graph


class ModuleCallCodeGen(fx.graph.CodeGen):
    """fx's generated forward, with each submodule call reading the module from ``_modules``.

    fx writes ``getattr(self, "0")(x)`` or ``self.layer1(x)``: a submodule is not in the
    instance's ``__dict__``, so each of those runs nn.Module.__getattr__ after a failed lookup,
    ~1 us a call, which made a traced 20-layer MLP's training step 1.03x the Sequential's at
    width 64, batch 32 (this: 0.98x; gpn 1.24 -> 1.18). ``self._modules['0']`` is the module a
    call_module node names (fx resolved the target through the module tree, which is
    ``_modules``), read without the miss. A graph copied into another GraphModule keeps its
    code generator; one that pickles is rebuilt by fx with its own, which is the same code."""

    def _gen_python_code(self, nodes, root_module: str, namespace, **kwargs):  # noqa: ANN001
        code = super()._gen_python_code(nodes, root_module, namespace, **kwargs)
        paths = {str(n.target) for n in nodes if n.op == "call_module"}
        fast = {fx.graph._format_target(root_module, p): root_module + _from_modules(p) for p in paths}
        if fast:
            code.src = "\n".join(_fast_call(line, fast) for line in code.src.split("\n"))
        return code


def _from_modules(path: str) -> str:
    return "".join(f"._modules[{part!r}]" for part in path.split("."))


def _fast_call(line: str, fast: dict[str, str]) -> str:
    """``name = <target>(args)`` with the target in its fast spelling: a line at a time (one
    str.replace per node over the whole source would be quadratic in depth)."""
    head, sep, rhs = line.partition(" = ")
    paren = rhs.find("(") if sep else -1
    while paren != -1:
        if rhs[:paren] in fast:
            return head + sep + fast[rhs[:paren]] + rhs[paren:]
        paren = rhs.find("(", paren + 1)
    return line


def _plain_structure(value: Any) -> bool:
    if isinstance(value, (tuple, list)) and type(value) in (tuple, list):
        return all(_plain_structure(v) for v in value)
    if type(value) is dict:
        return all(_plain_structure(v) for v in value.values())
    return not isinstance(value, (tuple, list, dict))


def traceable_forward(module: nn.Module) -> tuple[Callable | None, str]:
    """(the forward to trace when it must be unwrapped, else None; why it cannot be traced, else "")."""
    fn = type(module).forward
    unwrapped = False
    while hasattr(fn, "__wrapped__"):
        code = getattr(fn, "__code__", None)
        key = next(
            (k for k in TRANSPARENT_WRAPPERS if code and code.co_filename.endswith(k[0]) and code.co_name == k[1]),
            None,
        )
        if key is None:
            where = f"{code.co_filename}:{code.co_firstlineno}" if code else "?"
            return None, (
                f"{forward_location(module)} is wrapped by {getattr(code, 'co_name', fn)!r} ({where}), which "
                "torch.fx cannot trace through; kept eager (its children are captured)"
            )
        fn, unwrapped = fn.__wrapped__, True
    return (fn if unwrapped else None), ""


@contextmanager
def _unwrapped(cls: type, forward: Callable | None) -> Iterator[None]:
    """``cls.forward`` is ``forward`` while tracing (a transparent decorator taken off)."""
    if forward is None:
        yield
        return
    own = "forward" in cls.__dict__
    before = cls.__dict__.get("forward")
    cls.forward = forward
    try:
        yield
    finally:
        if own:
            cls.forward = before
        else:
            del cls.forward


def _explain_guards(gm: fx.GraphModule, name: str, cls: str) -> None:
    """Make fx's "specialized" guard messages name the module and the fix."""
    changed = False
    for node in gm.graph.nodes:
        arg = arguments.is_guard(node)
        if arg is not None:
            value = node.args[1].split(" has been specialized to have value ")[1].rsplit(" but got", 1)[0]
            node.args = (
                node.args[0],
                f"vgpcompile traced {cls} {name!r} for {arg}={value} and it was called with another value: give "
                f"vgpcompile example_inputs= that make this call (it is then traced as called, or kept eager), "
                f"or keep the module eager with eager=[{name!r}]",
            )
            changed = True
    if changed:
        gm.recompile()


def _leave_eager(
    module: nn.Module, prefix: str, reason: str, out: Capture, forced: bool = False, checked: bool = False
) -> nn.Module:
    """Keep ``module`` eager and capture each child that is neither torch's nor a user leaf."""
    if reason:
        out.eager.append(EagerModule(prefix.rstrip(".") or "<root>", reason, forced, checked))
    for name, child in list(module.named_children()):
        qual = prefix + name
        if out.is_user_leaf(qual, child):
            continue
        if isinstance(child, CONTAINERS):  # no forward of their own: look inside
            _leave_eager(child, qual + ".", "", out)
        elif not is_torch_leaf(child):
            setattr(module, name, _capture(child, qual + ".", out))
    return module


def _note_user_leaves(gm: fx.GraphModule, graph: fx.Graph, prefix: str, out: Capture) -> None:
    for node in graph.nodes:
        if node.op == "call_module":
            sub = submodule(gm, node.target)
            if not is_torch_leaf(sub) and out.is_user_leaf(prefix + node.target, sub):
                name = prefix + node.target
                if all(e.name != name for e in out.eager):
                    out.eager.append(EagerModule(name, "kept opaque by leaf=", forced=True, opaque=True))


def _complete_state(gm: fx.GraphModule, original: nn.Module) -> None:
    """Give ``gm`` every parameter and buffer of ``original`` under the same name.

    GraphModule copies only what its graph touches and registers every copied buffer as
    persistent; both would change the state_dict, so an original checkpoint would no longer
    load. Unused entries are added back and non-persistent buffers stay non-persistent.
    Every module path of ``original`` exists in ``gm`` (an empty module where the graph
    inlined it), so ``<path>.training`` follows ``.train()``/``.eval()`` as the original's.
    """
    for path, mod in original.named_modules():
        target = _ensure_path(gm, path)
        target.training = mod.training
        for name, p in mod._parameters.items():
            if name not in target._parameters and name not in target._modules:
                target.register_parameter(name, p)
        for name, b in mod._buffers.items():
            if name not in target._buffers:
                target.register_buffer(name, b, persistent=name not in mod._non_persistent_buffers_set)
            elif name in mod._non_persistent_buffers_set:
                target._non_persistent_buffers_set.add(name)


_HOOKS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_pre_hooks",
    "_backward_hooks",
)


def _copy_hooks(original: nn.Module, gm: fx.GraphModule) -> None:
    """The region keeps the hooks registered on the module it replaces: a traced forward does
    not contain them (fx traces ``forward``, not ``__call__``), the call into the region must."""
    for attr in _HOOKS:
        table = getattr(original, attr, None)
        if table:
            getattr(gm, attr).update(table)


def _ensure_path(root: nn.Module, path: str) -> nn.Module:
    mod = root
    for part in filter(None, path.split(".")):
        child = mod._modules.get(part)
        if child is None:
            child = nn.Module()
            mod.add_module(part, child)
        mod = child
    return mod
