"""The check against the original: every traced region computes what the module it replaces
computed, on the calls the example inputs make.

Before capture, the original model runs the example inputs once in eval mode and once in
train mode, with forward hooks recording, per module, the first calls' inputs, outputs and
random-number state (:func:`record`). Each traced region is then replayed on the recorded
inputs of its module (:meth:`Reference.check`), in the recorded mode and from the recorded
random state, and must give the recorded outputs bitwise; a region that raises, or
differs, is left eager by capture with that reason. A difference that the original module
itself shows when run again (a nondeterministic kernel) is allowed up to that size.

Buffers the runs change (batch-norm statistics) are restored after each run, so the model
leaves the check as it came in. Without example inputs nothing is run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

from . import modes
from .capture import describe_trace_error, is_torch_leaf

CALLS_PER_MODE = 2  # recorded calls per module and mode (a block called in a loop: the first two)


@dataclass
class Call:
    training: bool
    args: tuple
    kwargs: dict
    rng: Any
    output: Any = None


@dataclass
class Reference:
    """Recorded calls of the original model's modules, by qualified name ("" for the root)."""

    calls: dict[str, list[Call]] = field(default_factory=dict)
    checked: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    outputs: set[str] = field(default_factory=set)  # modules whose output is the model's output

    def check(self, prefix: str, original: nn.Module, gm: fx.GraphModule) -> str | None:
        """Why ``gm`` may not replace ``original`` (module ``prefix``), or None."""
        name = prefix.rstrip(".")
        calls = self.calls.get(name)
        if not calls:
            return None
        for call in calls:
            mode = "train" if call.training else "eval"
            try:
                got = _replay(gm, call)
            except Exception as err:
                reason = f"the traced graph fails on the example inputs in {mode} mode: {describe_trace_error(err)}"
                self.failed[name] = reason
                return reason
            diff = _max_diff(got, call.output)
            if diff:
                noise = _max_diff(_replay(original, call), call.output)
                if diff > noise:
                    reason = (
                        f"the traced graph differs from the original on the example inputs in {mode} mode "
                        f"(max |diff| {diff:.3g}); kept eager"
                    )
                    self.failed[name] = reason
                    return reason
        self.checked.append(name or "<root>")
        return None


def record(model: nn.Module, example_inputs: tuple) -> tuple[Reference, Any, Any]:
    """Run ``model`` on ``example_inputs`` in eval then train mode; return the recorded calls
    and the model's outputs in each mode (eval, train). Buffers are restored after."""
    ref = Reference()
    handles, leaf_handles = [], []
    leaf_outputs: dict[str, Any] = {}
    for name, module in model.named_modules():
        if name and is_torch_leaf(module):
            leaf_handles.append(module.register_forward_hook(_Keep(leaf_outputs, name)))
            continue
        handles.append(module.register_forward_pre_hook(_Pre(ref, name), with_kwargs=True))
        handles.append(module.register_forward_hook(_Post(ref, name), with_kwargs=True, always_call=True))
    outputs = []
    try:
        for training in (False, True):
            with kept_state(model), modes.in_mode(model, training), torch.enable_grad():
                out = model(*example_inputs)
                if not training:
                    final = {id(t) for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)}
                    ref.outputs = {n for n, o in leaf_outputs.items() if id(o) in final}
                    leaf_outputs.clear()
                    _remove(leaf_handles)  # they keep eval outputs only: the train run goes without them
                outputs.append(_clone(out))
    finally:
        _remove(leaf_handles + handles)
    return ref, outputs[0], outputs[1]


def _remove(handles: list) -> None:
    for h in handles:
        h.remove()
    handles.clear()


class _Keep:
    """Keeps a torch module's first eval output alive, to see whether it is the model's output."""

    def __init__(self, store: dict, name: str) -> None:
        self.store, self.name = store, name

    def __call__(self, module, args, output):
        if not module.training and isinstance(output, torch.Tensor):
            self.store.setdefault(self.name, output)


class _Pre:
    def __init__(self, ref: Reference, name: str) -> None:
        self.ref, self.name = ref, name

    def __call__(self, module, args, kwargs):
        calls = self.ref.calls.setdefault(self.name, [])
        if sum(c.training == module.training for c in calls) < CALLS_PER_MODE:
            calls.append(Call(module.training, _clone(args), _clone(kwargs), rng_state()))
            module._vgp_recording = calls[-1]


class _Post:
    def __init__(self, ref: Reference, name: str) -> None:
        self.ref, self.name = ref, name

    def __call__(self, module, args, kwargs, output):
        call = module.__dict__.pop("_vgp_recording", None)
        if call is not None:
            call.output = _clone(output)


def rng_state() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def set_rng_state(state: tuple) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def _replay(module: nn.Module, call: Call) -> Any:
    with kept_state(module), modes.in_mode(module, call.training), torch.enable_grad():
        set_rng_state(call.rng)
        return _clone(module(*_clone(call.args), **_clone(call.kwargs)))


@contextmanager
def kept_state(module: nn.Module) -> Iterator[None]:
    """Restore ``module``'s buffers and the random state after the block (a run changes both)."""
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    rng = rng_state()
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)
        set_rng_state(rng)


def _clone(tree: Any) -> Any:
    def one(x: Any) -> Any:
        return x.detach().clone() if isinstance(x, torch.Tensor) else x

    return pytree.tree_map(one, tree)


def _max_diff(a: Any, b: Any) -> float:
    """0 when ``a`` and ``b`` are bitwise equal (NaN equals NaN); the largest absolute
    difference of their tensors otherwise; inf when their structure differs."""
    la, sa = _flatten(a)
    lb, sb = _flatten(b)
    if sa != sb or len(la) != len(lb):
        return math.inf
    worst = 0.0
    for x, y in zip(la, lb):
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)) or x.shape != y.shape:
                return math.inf
            if x.dtype != y.dtype:
                return math.inf
            if torch.equal(x, y) or (x.is_floating_point() and torch.equal(x.isnan(), y.isnan())
                                     and torch.equal(x.nan_to_num(), y.nan_to_num())):
                continue
            worst = max(worst, float((x.double() - y.double()).abs().nan_to_num(math.inf).max()))
        elif not _equal(x, y):
            return math.inf
    return worst


def _flatten(tree: Any) -> tuple[list, Any]:
    """Leaves and structure; mappings (a transformers ModelOutput) and dataclasses by their items."""
    if isinstance(tree, dict) and type(tree) is not dict:
        tree = dict(tree)
    leaves, spec = pytree.tree_flatten(tree)
    return leaves, str(spec)


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return a is b
