"""Activation sites and layers in eager code: the modules whose forward was not traced.

A module left eager keeps running its own Python, but what it calls can still be rewritten:

- **Activation modules** among its children (``self.act = nn.GELU()``) are sites; a pass
  swaps the module in place, as for a module site in a traced graph.
- **Activation functions** its own code calls (``torch.tanh(...)``, ``F.gelu(...)``,
  ``x.relu()``, ``self.activation(x)`` holding ``F.relu``) are found by reading the source
  of its class's methods (``ast``), one site per call, named ``<module>.<fn>@L<line>()``.
  A pass's replacement is registered as a submodule of that module and the call is
  intercepted at run time: a forward pre-hook enters a ``TorchFunctionMode`` and the
  forward hook leaves it; the mode redirects a catalogue call only when it comes straight
  from that module's own code at that line (other calls, and every call in children or
  traced regions, pass through). Calls whose parameters are not constants, in-place
  calls and calls that are part of a formula (``x * torch.sigmoid(x)``, ``tanh`` of a
  polynomial) are not rewritten, with the reason.
- **Layers** among its children (Linear, Conv, declared affine layers) are layer targets.

The interception costs about 6 us per torch call made while such a module's forward runs
(a Python ``__torch_function__``; measured on 2 CPU cores), only in modules with a call
rewritten. Sites in eager code have no graph node (``Site.node is None``); a pass declares that it can
rewrite them with ``rewrites_eager = True`` (the runner leaves them alone for the others).
Without example inputs, whether an eager activation computes the model's output is unknown
(noted); with them, the recorded run says.
"""

from __future__ import annotations

import ast
import functools
import inspect
import os
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from . import protocol
from .capture import CONTAINERS, TORCH_COMPOSITES
from .catalogue import Catalogue, Spelling
from .targets import Layer, Site

_TORCH_DIR = os.path.dirname(torch.__file__)
_NONLINEAR = {"pow", "exp", "erf", "sqrt", "rsqrt", "square", "log", "log1p", "expm1", "reciprocal", "clamp"}
HOOK_ATTR = "_vgp_eager_rewrites"
_MAX_FRAMES = 32  # how far up from a lambda's frame the method that made it is looked for


CodeKey = tuple[str, int, str]  # (co_filename, co_firstlineno, co_name): one code object, picklable


def code_key(code) -> CodeKey:
    return code.co_filename, code.co_firstlineno, code.co_name


@dataclass(frozen=True)
class CallSite:
    """A catalogue call in a method's source: where it is and what it calls.

    ``code`` is the code object the call runs in: the method's own, or a lambda, comprehension
    or nested function inside it; ``method`` is the method's, whose frame holds ``self``."""

    filename: str
    function: str  # the method's name (its code's co_name)
    line: int
    end_line: int
    callee: Any  # the function object, or the Tensor method name
    code: CodeKey = ("", 0, "")
    method: CodeKey = ("", 0, "")


@dataclass
class EagerCall:
    """Where an eager site is: its owner module and either its child attribute or its call."""

    owner: nn.Module
    owner_name: str
    attr: str | None = None  # module site: the child holding the activation
    container: nn.Module | None = None  # the module (the owner or a container) holding that child
    call: CallSite | None = None  # function site


def eager_owners(root: nn.Module, eager: list) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module left eager whose own code runs (not ``leaf=`` ones)."""
    out = []
    for e in eager:
        if getattr(e, "opaque", False):
            continue
        name = "" if e.name == "<root>" else e.name
        try:
            out.append((name, root.get_submodule(name) if name else root))
        except AttributeError:
            continue
    return out


def _children(owner: nn.Module, prefix: str):
    """(qualname, holder, attr, child) of the owner's children, looking into containers."""
    for attr, child in owner.named_children():
        qual = prefix + attr
        if isinstance(child, CONTAINERS):
            yield from _children(child, qual + ".")
        else:
            yield qual, owner, attr, child


def find_eager_sites(owners: list[tuple[str, nn.Module]], catalogue: Catalogue, outputs: set[str]) -> list[Site]:
    """Every activation module child and activation call of the owners' own code.
    ``outputs`` names modules whose output was the model's (from the example inputs)."""
    sites: list[Site] = []
    for name, owner in owners:
        prefix = f"{name}." if name else ""
        replacements = eager_replacements(owner)
        for qual, holder, attr, child in _children(owner, prefix):
            if holder is owner and attr in replacements:
                continue  # it replaces a call of the owner's code: that call is the site
            found = _module_activation(child, catalogue)
            if found is None:
                continue
            act, params, applied = found
            site = _site(qual, prefix, act, params, "module", EagerCall(owner, name, attr, holder), outputs)
            site.module_name, site.module, site.applied = qual, child, frozenset(applied)
            sites.append(site)
        sites += _function_sites(owner, name, prefix, catalogue)
    return sites


def find_eager_layers(owners: list[tuple[str, nn.Module]], types: tuple) -> list[Layer]:
    """Each child of the owners of ``types`` (a layer target without a node)."""
    layers: list[Layer] = []
    for name, owner in owners:
        for qual, _, _, child in _children(owner, f"{name}." if name else ""):
            if isinstance(child, types):
                layers.append(Layer(qual, "", None, child))
    return layers


def _module_activation(module: nn.Module, catalogue: Catalogue):
    match = catalogue.match_module(module)
    if match is not None:
        return match.activation, match.params, ()
    wrapped = protocol.wrapped_activation(module)
    if wrapped is not None:
        return wrapped[0], wrapped[1], protocol.applied(module)
    return None


def _site(name, region, act, params, spelling, where: EagerCall, outputs: set[str]) -> Site:
    site = Site(
        name=name,
        region=region,
        node=None,
        activation=act,
        params=dict(params),
        spelling=spelling,
        inplace=False,
        module_name=None,
        producer=None,
        producer_kind=None,
        producer_name=None,
        producer_module=None,
        producer_shared=False,
        is_output=name in outputs,
        eager=where,
    )
    site.notes.append("in eager code")
    return site


# ---- function calls in the owner's own code ------------------------------------------------


def function_sites(owner: nn.Module, catalogue: Catalogue) -> list[Site]:
    """The activation calls of ``owner``'s own code (its class's methods)."""
    return _function_sites(owner, "", "", catalogue)


def eager_replacements(owner: nn.Module) -> set[str]:
    """Names of the submodules that replace intercepted calls of ``owner``'s code."""
    rewrites = owner.__dict__.get(HOOK_ATTR)
    return {entry[3] for entries in rewrites.targets.values() for entry in entries} if rewrites else set()


def _function_sites(owner: nn.Module, name: str, prefix: str, catalogue: Catalogue) -> list[Site]:
    sites: dict[str, Site] = {}
    for fn in _own_methods(type(owner)):
        for call, spelling, params, unusable in _scan(fn, owner, catalogue):
            callee = call.callee if isinstance(call.callee, str) else getattr(call.callee, "__name__", "call")
            site_name = f"{prefix}{callee}@L{call.line}()"
            if site_name in sites:
                continue
            act = catalogue.kinds[spelling.kind]
            where = EagerCall(owner, name, call=call)
            site = _site(site_name, prefix, act, {**act.defaults, **params}, _kind(call), where, set())
            site.unusable = unusable
            site.notes.append(f"{call.filename}:{call.line}")
            replacement = _replacement(owner, call)
            if replacement is not None:  # rewritten by an earlier pass: the site carries what it applied
                site.module = replacement
                site.applied = frozenset(protocol.applied(replacement))
            sites[site_name] = site
    return list(sites.values())


def _replacement(owner: nn.Module, call: CallSite) -> nn.Module | None:
    """The module an earlier pass put in place of ``call``, or None."""
    rewrites = owner.__dict__.get(HOOK_ATTR)
    for line, _, callee, attr, _ in (rewrites.targets.get(call.code, ()) if rewrites else ()):
        if line == call.line and callee == call.callee:
            return getattr(owner, attr, None)
    return None


def _kind(call: CallSite) -> str:
    return "method" if isinstance(call.callee, str) else "function"


def _own_methods(cls: type) -> list:
    """The functions defined by ``cls`` and its bases below nn.Module, outside torch (except
    torch's composite layers, whose feed-forward code calls the activation)."""
    out = []
    for klass in cls.__mro__:
        if klass in (nn.Module, object) or not issubclass(klass, nn.Module):
            continue
        if klass.__module__.startswith("torch.") and klass not in TORCH_COMPOSITES:
            continue
        for value in vars(klass).values():
            fn = inspect.unwrap(value) if callable(value) else None
            if inspect.isfunction(fn) and fn.__code__.co_filename and not fn.__code__.co_filename.startswith("<"):
                out.append(fn)
    return out


def _scan(fn, owner: nn.Module, catalogue: Catalogue):
    """(call site, spelling, params, unusable reason) for each catalogue call in ``fn``'s source."""
    parsed = _parse(fn)
    if parsed is None:
        return
    calls, parents = parsed
    offset = fn.__code__.co_firstlineno - 1
    for node in calls:
        found = _resolve(node, fn, owner, catalogue)
        if found is None:
            continue
        callee, spelling = found
        if _in_formula(node, parents, fn, owner, catalogue):
            continue
        params, unusable = _params(node, spelling, owner)
        if spelling.inplace:
            unusable = "in-place call in eager code (rewriting it would not update its input)"
        code = _enclosing_code(node, parents, fn.__code__, offset)
        call = CallSite(fn.__code__.co_filename, fn.__code__.co_name, node.lineno + offset,
                        (node.end_lineno or node.lineno) + offset, callee, code_key(code), code_key(fn.__code__))
        yield call, spelling, params, unusable


_SCOPES = {
    ast.Lambda: "<lambda>",
    ast.ListComp: "<listcomp>",
    ast.SetComp: "<setcomp>",
    ast.DictComp: "<dictcomp>",
    ast.GeneratorExp: "<genexpr>",
}


def _enclosing_code(call: ast.Call, parents: dict, method, offset: int):
    """The code object ``call`` runs in: the innermost lambda, comprehension or nested function
    around it in the source, found among ``method``'s nested code objects (a comprehension
    inlined into its function, Python 3.12+, runs in the function's own code)."""
    scopes = []
    node = parents.get(call)
    while node is not None and parents.get(node) is not None:  # up to the method's own def
        name = node.name if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else _SCOPES.get(type(node))
        if name is not None:
            scopes.insert(0, (name, node.lineno + offset))
        node = parents.get(node)
    code = method
    for name, line in scopes:
        nested = (c for c in code.co_consts if inspect.iscode(c))
        inner = next((c for c in nested if c.co_name == name and c.co_firstlineno == line), None)
        if inner is not None:
            code = inner
    return code


@functools.lru_cache(maxsize=1024)
def _parse(fn) -> tuple[list[ast.Call], dict[ast.AST, ast.AST]] | None:
    """The calls in ``fn``'s source and each AST node's parent (parsed once per function)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return None
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)], parents


def _resolve(call: ast.Call, fn, owner: nn.Module, catalogue: Catalogue) -> tuple[Any, Spelling] | None:
    """The catalogue function (or Tensor method name) ``call`` calls, with its spelling."""
    func = call.func
    chain: list[str] = []
    while isinstance(func, ast.Attribute):
        chain.insert(0, func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        if chain and chain[-1] in catalogue.methods:  # (expression).relu()
            return chain[-1], catalogue.methods[chain[-1]]
        return None
    if func.id == "self":
        value = _lookup_chain(owner, chain)
        if value is not None and not isinstance(value, nn.Module):
            spelling = _function_spelling(value, catalogue)
            return (value, spelling) if spelling else None
        return None
    base = fn.__globals__.get(func.id)
    value = _lookup_chain(base, chain) if base is not None else None
    spelling = _function_spelling(value, catalogue) if value is not None else None
    if spelling is not None:
        return value, spelling
    if chain and chain[-1] in catalogue.methods and not _is_module_namespace(base):
        return chain[-1], catalogue.methods[chain[-1]]  # x.relu() on a local variable
    return None


def _lookup_chain(obj: Any, chain: list[str]) -> Any:
    for part in chain:
        try:
            obj = getattr(obj, part)
        except AttributeError:
            return None
    return obj


def _function_spelling(value: Any, catalogue: Catalogue) -> Spelling | None:
    try:
        return catalogue.functions.get(value)
    except TypeError:
        return None


def _is_module_namespace(obj: Any) -> bool:
    return inspect.ismodule(obj) or isinstance(obj, nn.Module)


def _in_formula(call: ast.Call, parents: dict, fn, owner: nn.Module, catalogue: Catalogue) -> bool:
    """Whether the call is a piece of a formula, by the two rules core/formulas.py applies to
    traced graphs (``Analysis.inside_formula``): its input is a nonlinear expression, or its
    result (through the elementwise expression around it) is multiplied or divided by a value
    computed from its own input (``x * sigmoid(1.702 * x)``, ``x * tanh(softplus(x))``)."""
    arg = call.args[0] if call.args else (call.func.value if isinstance(call.func, ast.Attribute) else None)
    if arg is None:
        return False
    if _nonlinear(arg, fn, owner, catalogue):
        return True
    child, parent = call, parents.get(call)
    while parent is not None:
        if isinstance(parent, ast.BinOp) and isinstance(parent.op, (ast.Mult, ast.Div)):
            other = parent.right if parent.left is child else parent.left
            if _locals(arg) & _locals(other):
                return True  # x * sigmoid(x): the call's result multiplies its own input
        elif not (isinstance(parent, (ast.BinOp, ast.UnaryOp)) or _elementwise_call(parent, fn, owner, catalogue)):
            return False
        child, parent = parent, parents.get(parent)
    return False


def _elementwise_call(node: ast.AST, fn, owner: nn.Module, catalogue: Catalogue) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    return _resolve(node, fn, owner, catalogue) is not None or (
        isinstance(func, ast.Attribute) and func.attr in _NONLINEAR
    )


def _nonlinear(expr: ast.AST, fn, owner: nn.Module, catalogue: Catalogue) -> bool:
    for node in ast.walk(expr):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            return True
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Div)):
            if not isinstance(node.left, ast.Constant) and not isinstance(node.right, ast.Constant):
                if _has_name(node.left) and _has_name(node.right):
                    return True
        if isinstance(node, ast.Call):
            if _resolve(node, fn, owner, catalogue) is not None:
                return True
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in _NONLINEAR:
                return True
    return False


def _has_name(expr: ast.AST) -> bool:
    """Whether ``expr`` reads a local value (not only constants and module attributes)."""
    return bool(_locals(expr))


def _locals(expr: ast.AST) -> set[str]:
    """The local variables ``expr`` reads (``self.scale``, ``math.pi`` and the like are not)."""
    return {n.id for n in ast.walk(expr) if isinstance(n, ast.Name) and n.id not in ("self", "math", "torch", "F")}


def _params(call: ast.Call, spelling: Spelling, owner: nn.Module) -> tuple[dict[str, Any], str]:
    params: dict[str, Any] = {}
    given = list(zip(spelling.argnames, call.args[1:])) + [(k.arg, k.value) for k in call.keywords if k.arg]
    for key, expr in given:
        value = _constant(expr, owner)
        if value is _UNKNOWN:
            return {}, f"argument {key!r} is computed at run time, not a constant"
        if key == "inplace":
            if value:
                return {}, "in-place call in eager code (rewriting it would not update its input)"
            continue
        params[key] = value
    return params, ""


_UNKNOWN = object()


def _constant(expr: ast.AST, owner: nn.Module) -> Any:
    try:
        return ast.literal_eval(expr)
    except (ValueError, TypeError, SyntaxError):
        pass
    if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id == "self":
        value = getattr(owner, expr.attr, _UNKNOWN)
        return value if isinstance(value, (bool, int, float, str)) else _UNKNOWN
    return _UNKNOWN


# ---- rewriting ------------------------------------------------------------------------------


def replace_eager_activation(site: Site, module: nn.Module, tag: str) -> Callable[[], None]:
    """Put ``module`` where eager site ``site`` is: swap the child, or intercept the call.
    Return what puts the original back (core/verify_run.py undoes a rewrite that never ran)."""
    where: EagerCall = site.eager
    if where.attr is not None:
        container, attr, original = where.container, where.attr, getattr(where.container, where.attr)
        setattr(container, attr, module)
        return lambda: setattr(container, attr, original)
    call = where.call
    callee = call.callee if isinstance(call.callee, str) else getattr(call.callee, "__name__", "call")
    attr = _unique(where.owner, f"{callee}_L{call.line}_{tag}")
    where.owner.add_module(attr, module)
    rewrites = where.owner.__dict__.get(HOOK_ATTR)
    if rewrites is None:
        rewrites = EagerRewrites(where.owner)
        where.owner.__dict__[HOOK_ATTR] = rewrites
        rewrites.handles = [
            where.owner.register_forward_pre_hook(rewrites.enter),
            where.owner.register_forward_hook(rewrites.leave, always_call=True),
        ]
    rewrites.add(call, attr)
    return lambda: rewrites.remove(call, attr)


def _unique(module: nn.Module, base: str) -> str:
    name, i = base, 1
    while hasattr(module, name):
        name, i = f"{base}_{i}", i + 1
    return name


class EagerRewrites:
    """The calls of one eager module redirected to replacement submodules, and the hooks
    that scope the interception to that module's forward."""

    def __init__(self, owner: nn.Module) -> None:
        self.owner = owner
        self.targets: dict[tuple[str, str], list[tuple[int, int, Any, str]]] = {}
        self.modes: list[_Intercept] = []
        self.handles: list = []  # the owner's two hooks (removed when no call is left)

    def add(self, call: CallSite, attr: str) -> None:
        self.targets.setdefault(call.code, []).append((call.line, call.end_line, call.callee, attr, call.method))

    def remove(self, call: CallSite, attr: str) -> None:
        """Stop redirecting ``call`` to submodule ``attr`` and drop it; with no call left, the
        hooks go too (the owner runs as it did before any rewrite)."""
        entries = [e for e in self.targets.get(call.code, []) if e[3] != attr]
        if entries:
            self.targets[call.code] = entries
        else:
            self.targets.pop(call.code, None)
        delattr(self.owner, attr)
        if not self.targets:
            for handle in getattr(self, "handles", []):
                handle.remove()
            self.owner.__dict__.pop(HOOK_ATTR, None)

    def callees(self) -> set:
        """What the intercepted calls call (functions, and Tensor method names)."""
        return {callee for entries in self.targets.values() for _, _, callee, _, _ in entries}

    def enter(self, module: nn.Module, args: tuple) -> None:
        mode = _Intercept(self)
        mode.__enter__()
        self.modes.append(mode)

    def leave(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self.modes:
            self.modes.pop().__exit__(None, None, None)

    def __getstate__(self) -> dict:
        return {"owner": self.owner, "targets": self.targets, "modes": []}  # hooks' handles are not kept

    def target(self, func: Any) -> nn.Module | None:
        """The replacement for a call of ``func`` made straight from the owner's code (its
        methods, or a lambda, comprehension or nested function in them), or None."""
        frame = sys._getframe(2)
        while frame is not None:
            entries = self.targets.get(code_key(frame.f_code))
            if entries or not frame.f_code.co_filename.startswith(_TORCH_DIR):
                break
            frame = frame.f_back  # torch's own Python between the call and the op (F.relu's wrapper)
        if frame is None or not entries:
            return None
        name = getattr(func, "__name__", None)
        for start, end, callee, attr, method in entries:
            if start <= frame.f_lineno <= end and (callee is func or callee == name) and self._owns(frame, method):
                return getattr(self.owner, attr)
        return None

    def _owns(self, frame, method: CodeKey) -> bool:
        """Whether the frame of ``method`` that ``frame`` runs in (itself, or a caller of a
        lambda or comprehension it made) belongs to the owner module."""
        for _ in range(_MAX_FRAMES):
            if frame is None:
                return False
            if code_key(frame.f_code) == method:
                code = frame.f_code  # the method's first argument is its module, whatever its name
                return code.co_argcount > 0 and frame.f_locals.get(code.co_varnames[0]) is self.owner
            frame = frame.f_back
        return False


class _Intercept(TorchFunctionMode):
    def __init__(self, rewrites: EagerRewrites) -> None:
        super().__init__()
        self.rewrites = rewrites
        self.callees = rewrites.callees()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        # cheap test first: most torch calls in the forward are not activations at all
        if func in self.callees or getattr(func, "__name__", None) in self.callees:
            replacement = self.rewrites.target(func)
            if replacement is not None:
                return replacement(args[0])
        return func(*args, **(kwargs or {}))
