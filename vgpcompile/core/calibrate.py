"""Calibration: the value range of every node, seen when the example inputs run once.

What quantization observers do, pass-agnostic: the example inputs run through the captured
model as it is at that moment, every traced region executed node by node by an
:class:`torch.fx.Interpreter` that records the min and max of each floating-point tensor a
node produces. A region called several times (a shared block) records the union. Keys are
``"<region prefix>|<node name>"`` (:func:`key`); the mapping lists them in the order the
run first reached them, which :func:`position` exposes (the runner visits a pass's targets
in that order when the pass asks for it: ``Pass.dataflow_order``).

The run leaves no trace: it runs under ``torch.no_grad`` in the model's current mode
(the mode it will train in, so BatchNorm normalizes by batch statistics and dropout
drops; if that run fails, e.g. BatchNorm in training mode on a batch of one, once more in
eval mode), every buffer (BatchNorm's running statistics) is restored afterwards, and
the random number generators are forked, so the caller's RNG stream is unchanged.

:class:`Observed` is the lazy form ``Env.observed`` holds: the run happens at the first
read, and again after :func:`refresh` (a pass that changed the model and wants fresh
ranges downstream calls it). It also records which ranges were read, so a recipe can keep
them and ``load`` rebuilds without example inputs.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import fx, nn

from ..errors import UsageError
from .lookup import submodule

Range = tuple[float, float]


def key(region: str, node_name: str) -> str:
    """The key of node ``node_name`` of the region with prefix ``region``."""
    return f"{region}|{node_name}"


Seen = dict[str, list[torch.Tensor]]  # key -> [min, max] of each call, as 0-d tensors (no device sync per node)


class _Recorder(fx.Interpreter):
    """Runs one region's graph and records the min and max of every floating tensor a node produces."""

    def __init__(self, gm: fx.GraphModule, region: str, out: Seen) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.region, self.out = region, out

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        if n.op != "output" and isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel():
            self.out.setdefault(key(self.region, n.name), []).extend(torch.aminmax(value.detach()))
        return value


def _reduce(out: Seen) -> dict[str, Range]:
    """(min, max) per key over every call, read back in one transfer per device."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for values in out.values():
        by_device.setdefault(values[0].device, []).extend(v.float() for v in values)
    host = {d: iter(torch.stack(vs).tolist()) for d, vs in by_device.items()}
    ranges: dict[str, Range] = {}
    for k, values in out.items():
        read = [next(host[values[0].device]) for _ in values]
        ranges[k] = (min(read[0::2]), max(read[1::2]))
    return ranges


def _interpreted(gm: fx.GraphModule, region: str, out: Seen) -> Callable[..., Any]:
    """A ``forward`` for ``gm`` that runs its graph through a recorder, with fx's own
    argument binding (keywords, defaults)."""
    signature = inspect.signature(type(gm).forward)

    def forward(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(gm, *args, **kwargs)
        bound.apply_defaults()
        flat: list[Any] = []
        for name, value in list(bound.arguments.items())[1:]:
            kind = signature.parameters[name].kind
            flat.extend(value if kind is inspect.Parameter.VAR_POSITIONAL else [value])
        return _Recorder(gm, region, out).run(*flat)

    return forward


def _runnable(gm: fx.GraphModule) -> bool:
    """Whether the interpreter can bind this region's inputs (no ``**kwargs`` placeholder)."""
    params = inspect.signature(type(gm).forward).parameters.values()
    return all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in params)


def observe(root: nn.Module, regions: Mapping[str, fx.GraphModule], example_inputs: tuple) -> dict[str, Range]:
    """The range of every floating-point node output of ``regions`` when ``root(*example_inputs)``
    runs once, by :func:`key`, in the order first reached. ``root`` is left as it was."""
    out: Seen = {}
    patched = [(gm, "forward" in gm.__dict__) for gm in regions.values() if _runnable(gm)]
    buffers = [(b, b.detach().clone()) for b in root.buffers()]
    devices = sorted({t.device.index for t in example_inputs if isinstance(t, torch.Tensor) and t.is_cuda})
    try:
        for prefix, gm in regions.items():
            if _runnable(gm):
                gm.forward = _interpreted(gm, prefix, out)
        try:
            _run(root, example_inputs, devices)
        except Exception:
            if not root.training:
                raise
            # e.g. BatchNorm in training mode on a batch of one: the eval-mode ranges, then
            out.clear()
            _restore(buffers)
            modes = [(m, m.training) for m in root.modules()]
            root.eval()
            try:
                _run(root, example_inputs, devices)
            finally:
                for m, mode in modes:
                    m.training = mode
    except Exception as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise UsageError(
            f"calibration: the captured model raised {type(err).__name__} when running example_inputs ({first}); "
            "example inputs must be the positional inputs the model accepts"
        ) from err
    finally:
        for gm, had_own in patched:
            if not had_own:
                gm.__dict__.pop("forward", None)
        _restore(buffers)
    return _reduce(out)


def _restore(buffers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for b, saved in buffers:
            b.copy_(saved)


def _run(root: nn.Module, example_inputs: tuple, devices: list[int]) -> None:
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        root(*example_inputs)


class Incremental:
    """Runs a fully traced model's graph node by node, keeps every node's value, and after a
    change at one node runs again only from that node to the node whose range is read next.

    A pass that rewrites one layer at a time and reads the range just downstream (arp's
    dataflow order) then costs one forward in all, not one per layer. Used only for a model
    that is one GraphModule taking its example inputs positionally, while the values kept fit
    in ``limit_bytes``; :class:`Observed` falls back to whole runs otherwise.
    """

    def __init__(self, gm: fx.GraphModule, example_inputs: tuple, limit_bytes: int = 256 * 2**20) -> None:
        self.gm, self.example, self.limit = gm, example_inputs, limit_bytes
        self.nodes: list[fx.Node] = []
        self.pos: dict[fx.Node, int] = {}
        self.by_key: dict[str, fx.Node] = {}
        self.stale = math.inf  # the first node whose value is out of date
        self.interp: fx.Interpreter | None = None

    @staticmethod
    def usable(gm: fx.GraphModule, example_inputs: tuple) -> bool:
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        return len(placeholders) == len(example_inputs) and not any(str(p.target).startswith("*") for p in placeholders)

    def full(self) -> dict[str, Range]:
        """Every node's range, from a run of the whole graph (values kept)."""
        self.nodes = list(self.gm.graph.nodes)
        self.pos = {n: i for i, n in enumerate(self.nodes)}
        self.by_key = {key("", n.name): n for n in self.nodes}
        self.interp = fx.Interpreter(self.gm, garbage_collect_values=False)
        self.interp.args_iter = iter(self.example)
        self.stale = 0
        return self._upto(len(self.nodes) - 1)

    def invalidate_from(self, node: fx.Node) -> bool:
        """Mark ``node`` and everything after it out of date; False when the graph changed
        (``node`` is not one of the nodes kept: run everything again)."""
        if node not in self.pos or len(self.gm.graph.nodes) != len(self.nodes):
            return False
        self.stale = min(self.stale, self.pos[node])
        return True

    def is_stale(self, k: str) -> bool:
        node = self.by_key.get(k)
        return node is not None and self.pos[node] >= self.stale

    def upto(self, k: str) -> dict[str, Range]:
        return self._upto(self.pos[self.by_key[k]])

    def _upto(self, last: int) -> dict[str, Range]:
        out: dict[str, Range] = {}
        chunk = [n for n in self.nodes[int(self.stale) : last + 1] if n.op != "output"]
        # the modules run here may update buffers (BatchNorm's running statistics): put them back
        modules = {id(m): m for n in chunk if n.op == "call_module" for m in [submodule(self.gm, str(n.target))]}
        buffers = [(b, b.detach().clone()) for m in modules.values() for b in m.buffers()]
        devices = sorted({t.device.index for t in self.example if isinstance(t, torch.Tensor) and t.is_cuda})
        kept = 0
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                for node in chunk:
                    value = self.interp.run_node(node)
                    self.interp.env[node] = value
                    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel():
                        lo, hi = torch.aminmax(value.detach())
                        out[key("", node.name)] = (float(lo), float(hi))
                        kept += value.numel() * value.element_size()
        finally:
            _restore(buffers)
        if kept > self.limit:
            raise MemoryError("calibration values too large to keep")
        self.stale = max(self.stale, last + 1)
        return out


class Observed(Mapping[str, Range]):
    """Ranges seen on the example inputs, computed at the first read and after :meth:`refresh`.

    ``used`` holds every range read since the last :meth:`take_used`, as it was read. With an
    :class:`Incremental` stepper, a refresh after a change at one node re-runs only from there.
    """

    def __init__(self, run: Callable[[], dict[str, Range]], stepper: Incremental | None = None) -> None:
        self._run = run
        self._stepper = stepper
        self._ranges: dict[str, Range] | None = None
        self._positions: dict[str, int] = {}
        self.runs = 0
        self.used: dict[str, Range] = {}

    def _current(self) -> dict[str, Range]:
        if self._ranges is None:
            self._ranges = self._whole()
            self._positions = {k: i for i, k in enumerate(self._ranges)}
            self.runs += 1
        return self._ranges

    def _whole(self) -> dict[str, Range]:
        if self._stepper is not None:
            try:
                return self._stepper.full()
            except Exception:  # e.g. BatchNorm in training mode on a batch of one: whole runs, as before
                self._stepper = None
        return self._run()

    def __getitem__(self, k: str) -> Range:
        ranges = self._current()
        if self._stepper is not None and self._stepper.is_stale(k):
            try:
                ranges.update(self._stepper.upto(k))
            except Exception:
                self._stepper, self._ranges = None, None
                ranges = self._current()
        value = ranges[k]
        self.used[k] = value
        return value

    def __iter__(self) -> Iterator[str]:
        self._fresh()
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())

    def _fresh(self) -> None:
        if self._stepper is not None and self._ranges is not None and self._stepper.stale < len(self._stepper.nodes):
            self._ranges = None

    def refresh(self, after: fx.Node | None = None) -> None:
        """Forget the ranges: the model changed (at node ``after`` and downstream, when
        given), the next read runs the example inputs again (from ``after``, when it can)."""
        if after is not None and self._stepper is not None and self._ranges is not None:
            if self._stepper.invalidate_from(after):
                return
        self._ranges = None

    def position(self, k: str) -> float:
        """How early the run reached ``k`` (0 first; inf for a node it never reached)."""
        self._current()
        return self._positions.get(k, math.inf)

    def take_used(self) -> dict[str, Range]:
        used, self.used = self.used, {}
        return used


class Calibration:
    """The ranges of one compile, pass by pass: live ones when there are example inputs
    (``run`` observes the model as it is), else those an earlier compile recorded (a recipe's
    ``observed``), else none. ``recorded`` collects, per pass, the finite ranges it read."""

    def __init__(
        self,
        run: Callable[[], dict[str, Range]] | None,
        recorded: Mapping[str, Mapping[str, Any]] | None = None,
        stepper: Incremental | None = None,
    ) -> None:
        self.live = None if run is None else Observed(run, stepper)
        self._given = recorded or {}
        self.recorded: dict[str, dict[str, list[float]]] = {}
        if self.live is None:
            self.recorded = {p: {k: [float(v) for v in r] for k, r in m.items()} for p, m in self._given.items()}

    def env_for(self, env: Any, pass_name: str) -> Any:
        """``env`` (a contract.Env) with the ranges ``pass_name`` sees."""
        if self.live is not None:
            return dataclasses.replace(env, observed=self.live)
        if pass_name in self._given:
            fixed = {k: (float(v[0]), float(v[1])) for k, v in self._given[pass_name].items()}
            return dataclasses.replace(env, observed=fixed)
        return env

    def done(self, pass_name: str) -> None:
        """Keep what ``pass_name`` read; the next pass sees the model it left (fresh ranges)."""
        if self.live is None:
            return
        used = {k: [lo, hi] for k, (lo, hi) in self.live.take_used().items() if finite((lo, hi))}
        if used:
            self.recorded[pass_name] = used
        self.live.refresh()


def refresh(observed: Mapping[str, Range], after: fx.Node | None = None) -> None:
    """:meth:`Observed.refresh` when ``observed`` is live; a fixed mapping (ranges recorded by an
    earlier compile, or none) stays as it is."""
    if isinstance(observed, Observed):
        observed.refresh(after)


def position(observed: Mapping[str, Range], k: str) -> float:
    """:meth:`Observed.position`; 0 for a fixed mapping (its ranges do not depend on order)."""
    return observed.position(k) if isinstance(observed, Observed) else 0


def finite(value: Range) -> bool:
    return all(math.isfinite(v) for v in value)
