"""A traced region stays an instance of the user's class.

``fx.GraphModule(module, graph)`` is a module of another class: ``isinstance(compiled,
MyNet)`` is False and MyNet's own methods (``features``, ``generate``, ``reset_classifier``)
and plain attributes (``temperature``, ``config``) are gone. A region is therefore built
as an instance of a subclass of both::

    class MyNet(_UserRegion, MyNet, fx.GraphModule)      # one class per user class, cached

so that ``isinstance`` holds, every method of MyNet is found on the region and calls its
submodules (the same modules the graph calls), and only ``forward`` is the graph's code
(fx installs it on a per-instance subclass, as for every GraphModule). The user's class
comes before GraphModule in the MRO: its ``__call__`` (transformers' gradient checkpointing
layer), ``state_dict``, ``train`` and ``__getattr__`` stay in force; fx's machinery
(``graph``, ``recompile``) is found where the user defines nothing of that name. A module
with an attribute that shadows part of fx's machinery (an attribute named ``graph`` or
``code``) cannot be both: it stays eager (:func:`collides`).

The plain attributes of the original's ``__dict__`` are copied onto the region, and kept
by ``copy.deepcopy`` (fx's keeps only modules, parameters and buffers) and by pickling
(fx's unpickles a plain GraphModule; here the user's class is pickled by reference, as
pickling the original model would). State dict keys are unchanged: the class changes
nothing about which tensors the region holds.
"""

from __future__ import annotations

import ast
import copy
import functools
import inspect
import os
import weakref
from typing import Any, ClassVar

from torch import fx, nn
from torch.fx.graph_module import _deserialize_graph_module, _forward_from_src
from torch.utils.hooks import RemovableHandle

# names fx.GraphModule gives its instances or its class, beyond those of nn.Module
_FX_NAMES = frozenset(dir(fx.GraphModule)) - frozenset(dir(nn.Module)) | {
    "_graph", "_code", "meta", "_tracer_cls", "_tracer_extras", "_lineno_map", "_prologue_start", "shape_env",
    "_replace_hooks", "_create_node_hooks", "_erase_node_hooks", "_deepcopy_hooks", "_in_spec", "_out_spec",
}  # fmt: skip
# a module's hook tables (forward, backward, state dict): fx's deepcopy keeps only some of them
_HOOK_TABLES = tuple(k for k in vars(nn.Module()) if "hook" in k)
_CLASSES: weakref.WeakKeyDictionary[type, dict[str, type]] = weakref.WeakKeyDictionary()


class _UserRegion:
    """Construction, copy and pickling of a region of a user's class (see the module docstring)."""

    vgp_user_class: type = nn.Module

    def __init__(self, root: Any, graph: fx.Graph, class_name: str = "GraphModule") -> None:
        fx.GraphModule.__init__(self, root, graph, class_name)

    def __deepcopy__(self, memo: dict[int, Any]) -> fx.GraphModule:
        res = fx.GraphModule.__deepcopy__(self, memo)
        type(res).__name__ = type(self).__name__  # fx's copy names the class "GraphModule"
        # fx's copy keeps the state-dict hooks only; the forward ones are the region's too (core/capture.py
        # copies them from the module it replaces). Through memo they are the tables that the copied
        # RemovableHandles point to: else those point to dropped tables and the next copy fails.
        for key in _HOOK_TABLES:
            if key in self.__dict__:
                res.__dict__[key] = copy.deepcopy(self.__dict__[key], memo)
        for key, value in self.__dict__.items():
            if key not in res.__dict__:
                res.__dict__[key] = copy.deepcopy(value, memo)
        return res

    def __copy__(self) -> fx.GraphModule:
        res = type(self).__new__(type(self))
        fx.GraphModule.__init__(res, self, self.graph, self.__class__.__name__)
        res.__dict__.update({k: self.__dict__[k] for k in _HOOK_TABLES if k in self.__dict__})  # as nn.Module's
        res.__dict__.update({k: v for k, v in self.__dict__.items() if k not in res.__dict__})
        return res

    def __reduce__(self) -> tuple[Any, ...]:
        _, (body, import_block) = fx.GraphModule.__reduce__(self)
        body["_graphmodule_cls_name"] = self.__class__.__name__
        return (_rebuild, (self.vgp_user_class, body, import_block))


class _SavePretrained:
    """``save_pretrained`` of a compiled Hugging Face model writes what rebuilds it (io/hf.py):
    the stock save plus ``recipe.json``, and a training form is marked so that the stock
    ``from_pretrained`` refuses it instead of returning the original architecture."""

    # set by io/hf.py when vgpcompile is imported: core never imports io (it sits below it)
    writer: ClassVar[Any] = None

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        return _SavePretrained.writer(self, save_directory, super().save_pretrained, *args, **kwargs)


def use_save_pretrained(writer: Any) -> None:
    """Install what a compiled model's ``save_pretrained`` calls (io/hf.py does, on import)."""
    _SavePretrained.writer = writer


class _EagerRoot:
    """The class of a compiled model whose root stayed eager, where it needs one of its own
    (``save_pretrained``): the user's class underneath, which pickling names."""

    vgp_user_class: type = nn.Module

    def __reduce_ex__(self, protocol: Any) -> Any:
        _, _, *rest = super().__reduce_ex__(protocol)
        return (_new_root, (self.vgp_user_class,), *rest)


def _new_root(user_class: type) -> nn.Module:
    cls = root_class(user_class)
    return cls.__new__(cls)


def region_class(user_class: type[nn.Module]) -> type[fx.GraphModule]:
    """The GraphModule subclass whose instances are also ``user_class`` instances (cached)."""
    user_class = getattr(user_class, "vgp_user_class", user_class)  # a region compiled again
    if issubclass(user_class, fx.GraphModule):
        return fx.GraphModule  # a GraphModule the user traced: it stays one
    return _subclass(user_class, "region", (_UserRegion, *_extras(user_class), user_class, fx.GraphModule))


def root_class(user_class: type[nn.Module]) -> type[nn.Module]:
    """The class an eager compiled root takes: ``user_class`` with ``save_pretrained`` guarded."""
    user_class = getattr(user_class, "vgp_user_class", user_class)
    return _subclass(user_class, "root", (_EagerRoot, *_extras(user_class), user_class))


def keep_class(root: nn.Module) -> nn.Module:
    """The compiled model's root, given a class of its own where its class's methods need one."""
    if isinstance(root, (fx.GraphModule, _EagerRoot)) or not _extras(type(root)):
        return root
    root.__class__ = root_class(type(root))
    return root


def _extras(user_class: type) -> tuple[type, ...]:
    return (_SavePretrained,) if callable(getattr(user_class, "save_pretrained", None)) else ()


def _subclass(user_class: type, kind: str, bases: tuple[type, ...]) -> type:
    classes = _CLASSES.setdefault(user_class, {})
    cls = classes.get(kind)
    if cls is None:
        namespace = {"vgp_user_class": user_class, "__module__": user_class.__module__,
                     "__qualname__": user_class.__qualname__, "__doc__": user_class.__doc__}  # fmt: skip
        cls = classes[kind] = type(user_class)(user_class.__name__, bases, namespace)
    return cls


def collides(module: nn.Module) -> str | None:
    """Why ``module`` cannot also be a GraphModule (an attribute of its own shadows fx's), or None."""
    if isinstance(module, fx.GraphModule):
        return None
    own = {n for c in type(module).__mro__[:-1] if c not in (nn.Module, object) for n in vars(c)}
    clash = sorted((own | set(module.__dict__)) & _FX_NAMES)
    if not clash:
        return None
    return (
        f"its attribute(s) {clash} would be shadowed by torch.fx.GraphModule's, so the traced region could "
        f"not keep {type(module).__name__}'s behaviour; kept eager (its children are captured)"
    )


def make_region(module: nn.Module, graph: fx.Graph) -> fx.GraphModule:
    """A GraphModule running ``graph`` that is an instance of ``module``'s class, with its plain attributes."""
    cls = region_class(type(module))
    gm = cls(module, graph, class_name=type(module).__name__)
    if cls is not fx.GraphModule:
        copy_plain_attributes(module, gm)
    return gm


def copy_plain_attributes(source: nn.Module, region: nn.Module) -> None:
    """``source``'s instance attributes that ``region`` does not have (modules, parameters and
    buffers live in their own tables and are the graph's business)."""
    for key, value in source.__dict__.items():
        if key not in region.__dict__ and key not in _FX_NAMES:
            region.__dict__[key] = _repoint(value, source, region) if isinstance(value, RemovableHandle) else value


def _repoint(handle: RemovableHandle, source: nn.Module, region: nn.Module) -> RemovableHandle:
    """A handle to ``source``'s hooks (``self.h = self.register_forward_hook(...)``) as one to the
    region's hook tables, which hold the same hooks under the same ids: ``source`` is dropped once
    captured, and a handle to its tables would be dead (``remove()`` a no-op, deepcopy a TypeError)."""
    tables = {id(source.__dict__[k]): k for k in _HOOK_TABLES if k in source.__dict__}
    names = [tables.get(id(ref())) for ref in (handle.hooks_dict_ref, *handle.extra_dict_ref)]
    if None in names:
        return handle  # another module's hooks
    new = RemovableHandle.__new__(RemovableHandle)
    new.__setstate__((region.__dict__[names[0]], handle.id, tuple(region.__dict__[n] for n in names[1:])))
    return new


def _rebuild(user_class: type, body: dict[str, Any], import_block: str) -> fx.GraphModule:
    """Unpickle a region: fx's own deserialization, into the user's region class."""
    plain = {k: v for k, v in body.items()}
    forward = _forward_from_src(import_block + (body.get("_code") or body["code"]), {})
    gm = _deserialize_graph_module(forward, body, graph_module_cls=region_class(user_class))
    for key, value in plain.items():  # fx sets only what the class does not already define
        if key not in gm.__dict__ and key not in _FX_NAMES and not key.startswith("_graphmodule"):
            gm.__dict__[key] = value
    return gm


def referenced_children(module: nn.Module) -> set[str]:
    """Paths of ``module``'s submodules that its class's other methods name (``self.body`` in
    ``features``, ``self.head.fc`` in ``get_classifier``): torch.fx would inline them into the
    forward's graph and leave an empty stand-in, so capture keeps each one a module of its own
    (a region of its own class) that those methods can call. Containers stand for their items."""
    out: set[str] = set()
    for chain in _self_chains(type(module)):
        sub = module
        for part in chain.split("."):  # registered children only: not properties (base_model is self)
            sub = sub._modules.get(part) if isinstance(sub, nn.Module) else None
        if sub is not None:  # else a plain attribute, a method, a parameter
            out |= _callable_paths(chain, sub)
    return out


def _callable_paths(path: str, module: nn.Module) -> set[str]:
    from .capture import CONTAINERS, is_torch_leaf

    if isinstance(module, CONTAINERS):
        return {p for name, child in module.named_children() for p in _callable_paths(f"{path}.{name}", child)}
    return set() if is_torch_leaf(module) else {path}


@functools.cache
def _self_chains(cls: type) -> frozenset[str]:
    """``self.a.b`` attribute chains in the methods of ``cls`` and its user-written bases, other than
    forward and __init__ (torch's and vgpcompile's own classes are not read). Each source file is
    parsed once; a class is found by name in it (two classes of one name in a file: both read)."""
    chains: set[str] = set()
    for klass in cls.__mro__:
        if klass.__module__.startswith(("torch.", "vgpcompile.", "builtins")) or klass is object:
            continue
        try:
            file = inspect.getsourcefile(klass)
        except TypeError:
            file = None
        for node in _class_defs(file).get(klass.__name__, ()):
            for item in node.body:
                method = isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                if method and item.name not in ("forward", "__init__"):
                    chains |= _chains_in(item)
    return frozenset(chains)


@functools.cache
def _class_defs(file: str | None) -> dict[str, list[ast.ClassDef]]:
    try:
        with open(file, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, TypeError, SyntaxError, ValueError):
        return {}
    found: dict[str, list[ast.ClassDef]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            found.setdefault(node.name, []).append(node)
    return found


def _chains_in(tree: ast.AST) -> set[str]:
    chains = set()
    for node in ast.walk(tree):
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if parts and isinstance(node, ast.Name) and node.id == "self":
            chains.add(".".join(reversed(parts)))
    return chains


def helper_activation_calls(region: nn.Module, catalogue: Any) -> list[str]:
    """``Class.method calls fn (file:line)`` for each activation function the region's own methods
    call, in the methods its ``forward`` calls (``self.features(x)``): traced, they are part of the
    forward's graph and rewritten there, but a direct ``features(x)`` runs them as written."""
    from .eager import _scan

    cls = getattr(type(region), "vgp_user_class", None)
    if cls is None:
        return []
    forward = [m for node in _class_defs(_source_file(cls)).get(cls.__name__, ()) for m in node.body
               if isinstance(m, ast.FunctionDef) and m.name == "forward"]  # fmt: skip
    found: list[str] = []
    for name in sorted({c.split(".")[0] for f in forward for c in _chains_in(f)} - {"forward"}):
        fn = getattr(cls, name, None)
        fn = inspect.unwrap(fn) if callable(fn) else None
        if not inspect.isfunction(fn):
            continue  # a submodule, an attribute
        for call, *_ in _scan(fn, region, catalogue):
            callee = call.callee if isinstance(call.callee, str) else getattr(call.callee, "__name__", "?")
            found.append(f"{cls.__name__}.{name} calls {callee} ({os.path.basename(call.filename)}:{call.line})")
    return found


def _source_file(cls: type) -> str | None:
    try:
        return inspect.getsourcefile(cls)
    except TypeError:
        return None
