"""Hierarchical torch.fx capture: the largest traceable subtrees become GraphModules.

A module whose ``forward`` cannot be traced (data-dependent control flow, a Proxy used as
an int, in an ``assert`` or a shape check) does not sink the model. The innermost module
that raised is made a leaf and the parent is traced again; a leaf kept for that reason
stays eager Python, and each of its children is captured in turn. When the root itself
fails, the root stays eager and its children are captured. Every module left eager is
reported with the first line of its trace error and the user's file:line that raised.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from ..errors import CaptureError
from . import protocol

_TORCH_DIR = os.path.dirname(torch.__file__)
CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)
_FAILED = "_vgp_failed_module"
_PLAIN_TRACER = fx.Tracer()


@dataclass
class EagerModule:
    """A module left as eager Python, and why."""

    name: str
    reason: str
    forced: bool = False  # the user asked for it with leaf=


@dataclass
class Capture:
    """The captured model: its root, the traced regions by prefix, and what stayed eager."""

    root: nn.Module
    regions: dict[str, fx.GraphModule] = field(default_factory=dict)
    eager: list[EagerModule] = field(default_factory=list)
    autowrap: tuple[Callable, ...] = ()
    leaf_types: tuple[type, ...] = ()


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


def describe_trace_error(err: BaseException) -> str:
    """First line of the error plus the deepest file:line outside torch itself."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not f.filename.startswith(_TORCH_DIR)]
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(err).__name__}: {first}{where}"


def is_torch_leaf(module: nn.Module) -> bool:
    """torch.nn's own modules (Linear, Tanh, LSTM, ...) are kept whole, as fx does by default,
    and so are the modules vgpcompile inserts, so a compiled model compiles again cleanly."""
    return protocol.inserted_by(module) is not None or _PLAIN_TRACER.is_leaf_module(module, "")


def capture(
    model: nn.Module,
    is_user_leaf: Callable[[str, nn.Module], bool] = lambda name, m: False,
    autowrap: tuple[Callable, ...] = (),
    leaf_types: tuple[type, ...] = (),
) -> Capture:
    """Trace ``model`` hierarchically. ``model`` is changed in place (pass a copy).

    ``autowrap`` functions are recorded as single calls and ``leaf_types`` modules as single
    module calls (user-registered activations), so sites see them whole.
    """
    result = Capture(root=model, autowrap=autowrap, leaf_types=leaf_types)
    result.root = _capture(model, "", result, is_user_leaf)
    if not result.regions:
        names = ", ".join(e.name for e in result.eager[:3]) or "<root>"
        raise CaptureError(
            f"no part of {type(model).__name__} could be traced with torch.fx (left eager: {names}); "
            "see the report's eager list, or make the failing forward traceable"
        )
    return result


def _capture(module: nn.Module, prefix: str, out: Capture, is_user_leaf) -> nn.Module:
    forced: dict[str, str] = {}
    while True:
        tracer = _Tracer(set(forced), lambda q, m: is_user_leaf(prefix + q, m), out)
        try:
            graph = tracer.trace(module)
            break
        except Exception as err:
            failed = getattr(err, _FAILED, None)
            if failed is None or failed in forced:
                return _leave_eager(module, prefix, describe_trace_error(err), out, is_user_leaf)
            forced[failed] = describe_trace_error(err)
    gm = fx.GraphModule(module, graph, class_name=type(module).__name__)
    _complete_state(gm, module)
    out.regions[prefix] = gm
    for qual, reason in forced.items():
        _leave_eager(gm.get_submodule(qual), f"{prefix}{qual}.", reason, out, is_user_leaf)
    _note_user_leaves(gm, graph, prefix, out, is_user_leaf)
    return gm


def _leave_eager(module: nn.Module, prefix: str, reason: str, out: Capture, is_user_leaf) -> nn.Module:
    """Keep ``module`` eager and capture each child that is neither torch's nor a user leaf."""
    if reason:
        out.eager.append(EagerModule(prefix.rstrip(".") or "<root>", reason))
    for name, child in list(module.named_children()):
        qual = prefix + name
        if is_user_leaf(qual, child):
            continue
        if isinstance(child, CONTAINERS):  # no forward of their own: look inside
            _leave_eager(child, qual + ".", "", out, is_user_leaf)
        elif not is_torch_leaf(child):
            setattr(module, name, _capture(child, qual + ".", out, is_user_leaf))
    return module


def _note_user_leaves(gm: fx.GraphModule, graph: fx.Graph, prefix: str, out: Capture, is_user_leaf) -> None:
    for node in graph.nodes:
        if node.op == "call_module":
            sub = gm.get_submodule(node.target)
            if not is_torch_leaf(sub) and is_user_leaf(prefix + node.target, sub):
                name = prefix + node.target
                if all(e.name != name for e in out.eager):
                    out.eager.append(EagerModule(name, "kept opaque by leaf=", forced=True))


def _complete_state(gm: fx.GraphModule, original: nn.Module) -> None:
    """Give ``gm`` every parameter and buffer of ``original`` under the same name.

    GraphModule copies only what the graph touches and registers every copied buffer as
    persistent; both would change the state_dict, so an original checkpoint would no longer
    load. Unused entries are added back and non-persistent buffers stay non-persistent.
    """
    for path, mod in original.named_modules():
        target = _ensure_path(gm, path)
        for name, p in mod._parameters.items():
            if name not in target._parameters and name not in target._modules:
                target.register_parameter(name, p)
        for name, b in mod._buffers.items():
            if name not in target._buffers:
                target.register_buffer(name, b, persistent=name not in mod._non_persistent_buffers_set)
            elif name in mod._non_persistent_buffers_set:
                target._non_persistent_buffers_set.add(name)


def _ensure_path(root: nn.Module, path: str) -> nn.Module:
    mod = root
    for part in filter(None, path.split(".")):
        child = mod._modules.get(part)
        if child is None:
            child = nn.Module()
            mod.add_module(part, child)
        mod = child
    return mod
