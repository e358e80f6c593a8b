"""Signal-propagation probes: what ``diagnose``, the demo and the tests measure, in one place.

One forward and backward pass of a model, watched with module hooks, so it works the same on
traced GraphModules, on eager modules capture left untraced and on models never compiled at
all. The activation sites are compile's: the model is compiled with no pass on a copy (the
same capture and site index, core/index.py: modules, functions, methods and written-out
formulas, in traced and eager code alike), and the rewriter puts an identity tap on the
input of every site (:class:`SiteTap`; in eager code a tap that stands for the call), so
the probes measure exactly the sites ``vgpcompile``/``plan`` report, under the same names.
Where that compile fails the model itself is measured and only activation modules are seen.
Per weight layer (a module owning a parameter of two or more dimensions, in forward call
order):

- ``signal``: ‖x^l‖²/n of the layer's input, the mean of x² over all elements (for a batch
  of vectors the batch mean of ‖x_k‖²/n); averaged over the layer's calls;
- ``grad_norm``: the Frobenius norm of ∂E/∂W over the layer's weight parameters (ndim >= 2;
  biases and norm scales are left out, as in the BSNN figure of merit);
- ``out_grad``: ‖∂E/∂h^l‖²/n of the layer's output h (mean of the squared gradient), the
  backward signal;
- ``activation`` / ``saturation``: the first activation applied after this layer (before
  the next layer, in execution order) and its saturated fraction.

Per activation call site: the fraction of pre-activations outside the activation's
dynamic region, and a histogram of |φ'(h)| / max|φ'| (the BSNN slides' φ' histogram).
The dynamic region of φ is [lo, hi], the smallest interval holding every x where
|φ'(x)| >= THRESHOLD * max|φ'| (THRESHOLD = 0.1), found once per activation on a float64
grid over [-30, 30]; an end that reaches the grid edge is infinite. For the symmetric
saturating activations it is ±L: tanh ±1.82, sigmoid ±3.64, arctan ±3, softsign ±2.16,
hardtanh ±1. One-sided for the rest: relu [0, ∞) (a negative pre-activation is a dead
unit), elu and selu [-2.3, ∞), leaky_relu(0.01) [0, ∞), leaky_relu(0.2) everywhere. Pass
``regions={"tanh": (-2, 2)}`` to override.

Per recurrent layer (``nn.RNN``/``LSTM``/``GRU`` and their cells): the norm of ∂E/∂x_t,
the gradient of the loss with respect to the layer's input at each time step t (for a
cell, each call is one step) — the RNN figure of merit of the ARNN and ROAF seeds.

Activations inside fused kernels (the gates of ``nn.LSTM``) and inside torch.nn's own layers
are not seen, as they are not sites. A user module that owns a weight directly and is not
a torch.nn layer is kept eager in the copy (so its hooks, the layer row, still fire).
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import fx, nn
from torch.nn.utils import parametrize

from ..core import protocol
from ..core.catalogue import DEFAULT, Activation, Catalogue
from ..core.contract import MODEL, Env, Pass
from ..core.eager import eager_owners
from ..core.index import SiteIndex
from ..core.runner import run_pass
from ..errors import UsageError, VgpError

THRESHOLD = 0.1  # |φ'| below this fraction of its maximum counts as saturated
HIST_BINS = 20  # histogram of |φ'(h)| / max|φ'| over [0, 1]
_GRID = 30.0
_STEP = 1e-3

Loss = Callable[[Any, Any], torch.Tensor]


@dataclass
class LayerRow:
    """One weight layer, in forward call order."""

    name: str
    type: str
    weights: int  # elements of its weight parameters (ndim >= 2)
    calls: int = 0
    signal: float | None = None  # ‖x‖²/n of its input, mean over calls
    grad_norm: float | None = None  # ‖∂E/∂W‖_F; None when no weight got a gradient
    out_grad: float | None = None  # ‖∂E/∂h‖²/n of its output, mean over calls
    activation: str | None = None  # the activation applied next, if any
    saturation: float | None = None  # that activation's saturated fraction
    _signal_sum: float = field(default=0.0, repr=False)
    _signal_n: int = field(default=0, repr=False)
    _grad_sum: float = field(default=0.0, repr=False)
    _grad_n: int = field(default=0, repr=False)


@dataclass
class ActivationRow:
    """One activation call site (a module, or a function called inside a module)."""

    name: str
    kind: str
    region: tuple[float, float]  # the dynamic region [lo, hi]
    two_sided: bool  # saturates at both ends (tanh-like); one-sided ones (relu family, elu, ...) die on one side
    calls: int = 0
    count: int = 0  # pre-activation elements seen
    saturated: int = 0  # of which outside the region
    hist: list[int] = field(default_factory=lambda: [0] * HIST_BINS)

    @property
    def saturation(self) -> float:
        return self.saturated / self.count if self.count else 0.0


@dataclass
class RecurrentRow:
    """One recurrent layer: ‖∂E/∂x_t‖ per time step (per call for a cell)."""

    name: str
    type: str
    steps: list[float] = field(default_factory=list)
    note: str = ""
    _series: list[list[float] | None] = field(default_factory=list, repr=False)
    _cell: bool = field(default=False, repr=False)  # each call is one step: calls concatenate


@dataclass
class Measurement:
    """What one or several forward/backward passes showed."""

    layers: list[LayerRow]
    activations: list[ActivationRow]
    recurrent: list[RecurrentRow]
    loss: float
    runs: int = 1

    def grad_norms(self) -> list[float]:
        """Weight-gradient norms of the layers that got one, input to output."""
        return [r.grad_norm for r in self.layers if r.grad_norm is not None]

    def signals(self) -> list[float]:
        return [r.signal for r in self.layers if r.signal is not None]


# ---------------------------------------------------------------------------------------
# dynamic regions


@functools.lru_cache(maxsize=256)
def _region(fn: Callable, params: tuple, threshold: float) -> tuple[float, float, float]:
    n = int(round(2 * _GRID / _STEP)) + 1
    x = torch.linspace(-_GRID, _GRID, n, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        (d,) = torch.autograd.grad(fn(x, **dict(params)).sum(), x)
    d = d.detach().abs()
    top = float(d.max())
    if not math.isfinite(top) or top <= 0:
        raise UsageError(f"cannot find the dynamic region of {fn}: its derivative is {top} everywhere")
    keep = (d >= threshold * top).nonzero().flatten()
    first, last = int(keep[0]), int(keep[-1])
    xs = x.detach()
    lo = -math.inf if first == 0 else round(float(xs[first - 1] + xs[first]) / 2, 2)
    hi = math.inf if last == n - 1 else round(float(xs[last] + xs[last + 1]) / 2, 2)
    return lo, hi, top


def dynamic_region(activation: Activation, params: Mapping[str, Any] | None = None, threshold: float = THRESHOLD):
    """(lo, hi, max|φ'|) of ``activation``: see the module docstring."""
    merged = {**activation.defaults, **(params or {})}
    return _region(activation.fn, tuple(sorted(merged.items())), float(threshold))


# ---------------------------------------------------------------------------------------
# the probe


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _weights(module: nn.Module) -> list[nn.Parameter]:
    """A module's own weight parameters (ndim >= 2), the originals of parametrized ones included."""
    found = [p for p in module.parameters(recurse=False) if p.dim() >= 2]
    if parametrize.is_parametrized(module):
        for plist in module.parametrizations.values():
            found += [p for p in plist.parameters(recurse=False) if p.dim() >= 2]
    return found


def _time_dim(module: nn.Module, x: torch.Tensor) -> int:
    if isinstance(module, nn.RNNBase) and x.dim() == 3 and module.batch_first:
        return 1
    return 0


class SiteTap(nn.Module):
    """Identity on an activation site's input, named for the site: the probe's hook reads it.
    In eager code it stands for what the site calls: the module there (``inner``, an
    activation module or an earlier pass's replacement), else the activation function."""

    def __init__(self, site: str, activation: Activation, params: dict, inner: nn.Module | None = None,
                 computes: bool = False) -> None:
        super().__init__()
        self.site, self.activation, self.params, self.computes = site, activation, dict(params), computes
        self.inner = inner

    def forward(self, x):
        if self.inner is not None:
            return self.inner(x)
        return self.activation.fn(x, **self.params) if self.computes else x


@dataclass(frozen=True)
class _Tap(Pass):
    """Every site of the site index gets a :class:`SiteTap`, through the rewriter (no pass
    of the registry: the probes' own, on their copy)."""

    name: ClassVar[str] = "probe-taps"
    matches: ClassVar[tuple[str, ...]] = (MODEL,)

    def apply(self, target, env: Env) -> str:
        rewriter = env.rewriter
        sites = list(rewriter.index.all())  # before any edit: each tap invalidates its region
        for site in sites:
            if site.node is None:
                _tap_eager(rewriter, site)
                continue
            src = rewriter.input_of(site)
            if not isinstance(src, fx.Node):
                continue
            readers = [n for n in (site.nodes or (site.node,)) if src in n.all_input_nodes]
            gm = rewriter.module_of(site.node)
            name = rewriter.add_module(gm, f"{site.node.name}_probe", SiteTap(site.name, site.activation, site.params))
            tap = rewriter.insert_before(min(readers), "call_module", name, (src,))  # nodes order by position
            for reader in readers:
                rewriter.replace_input(reader, src, tap)
        return f"{len(sites)} taps"


def _tap_eager(rewriter, site) -> None:
    """A tap standing for an eager site's call: around the module it calls (an activation
    module, or the replacement an earlier pass intercepts the call with), else computing it."""
    where = site.eager
    if where.attr is not None:
        inner = getattr(where.container, where.attr)
    else:
        inner = site.module  # an intercepted call's replacement, or None
    tap = SiteTap(site.name, site.activation, site.params, inner, computes=inner is None)
    if where.attr is None and inner is not None:
        attr = next(n for n, m in where.owner.named_children() if m is inner)
        rewriter.swap_module(where.owner, attr, tap)
    else:
        rewriter.replace_activation(site, tap, "probe")


def sited_copy(model: nn.Module, args: tuple, catalogue: Catalogue) -> nn.Module | None:
    """A passes-off compile of ``model`` (a copy) with a :class:`SiteTap` at every site, or
    None when that compile fails. Modules owning a weight that capture would trace through
    stay eager, so each weight layer is still a module call."""
    from ..api import vgpcompile
    from ..core.capture import is_torch_leaf

    owners = [
        "<root>" if not name else "re:" + re.escape(name)
        for name, m in model.named_modules()
        if _weights(m) and not is_torch_leaf(m) and not parametrize.is_parametrized(m)
    ]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = vgpcompile(model, [], example_inputs=args, catalogue=catalogue, eager=owners or None)
    except (VgpError, RuntimeError, TypeError, ValueError):
        return None
    report = compiled.vgp_report
    regions = {p: compiled.get_submodule(p.rstrip(".")) if p else compiled for p in report.regions}
    eager = eager_owners(compiled, report.eager)
    run_pass(_Tap(), regions, Env(catalogue), compiled, eager, index=SiteIndex(regions, catalogue, eager))
    return compiled


class _Probe:
    """Hooks on every module of one model; a :class:`SiteTap` is an activation site."""

    def __init__(self, model: nn.Module, catalogue: Catalogue, regions: Mapping, threshold: float) -> None:
        self.catalogue, self.regions, self.threshold = catalogue, dict(regions), threshold
        self.layers: dict[str, LayerRow] = {}
        self.activations: dict[str, ActivationRow] = {}
        self.recurrent: dict[str, RecurrentRow] = {}
        self._weights: dict[str, list[nn.Parameter]] = {}
        self.tapped = any(isinstance(m, SiteTap) for m in model.modules())
        self._inside_activation = 0
        self._busy = False  # our own tensor work: not the model's
        self._last_layer: LayerRow | None = None
        self._handles: list[Any] = []
        # a parametrization's modules are the weight's, counted with their layer (_weights)
        skip = [f"{n}.parametrizations".lstrip(".") for n, m in model.named_modules() if parametrize.is_parametrized(m)]
        for name, module in model.named_modules():
            if any(name == s or name.startswith(s + ".") for s in skip):
                continue
            weights = _weights(module)
            if weights:
                self._weights[name] = weights
            self._handles.append(module.register_forward_pre_hook(functools.partial(self._pre, name)))
            self._handles.append(module.register_forward_hook(functools.partial(self._post, name), always_call=True))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # module hooks ------------------------------------------------------------------------
    def _pre(self, name: str, module: nn.Module, args: tuple) -> tuple | None:
        found = self._activation_of(module)
        if found is not None:
            self._inside_activation += 1  # what it calls inside is that activation, not another site
        if self._busy:
            return None
        self._busy = True
        try:
            if found is not None:
                x = _first_tensor(args)
                if x is not None:
                    site = module.site if isinstance(module, SiteTap) else name or "<root>"
                    self._record_activation(site, found[0], found[1], x)
                return None
            if name in self._weights:
                self._record_layer(name, module, args)
            if isinstance(module, (nn.RNNBase, nn.RNNCellBase)):
                return self._watch_time(name, module, args)
            return None
        finally:
            self._busy = False

    def _post(self, name: str, module: nn.Module, args: tuple, output: Any) -> None:
        if self._activation_of(module) is not None:
            self._inside_activation -= 1
            return
        row = self.layers.get(name)
        out = _first_tensor(output)
        if row is None or self._busy or out is None or not out.requires_grad:
            return
        out.register_hook(functools.partial(self._out_grad, row))

    def _activation_of(self, module: nn.Module) -> tuple[Activation, dict] | None:
        if isinstance(module, SiteTap):
            return module.activation, module.params
        if self.tapped:
            return None
        match = self.catalogue.match_module(module)  # the model itself (its compile failed): modules only
        if match is not None:
            return match.activation, match.params
        return protocol.wrapped_activation(module)

    def _record_layer(self, name: str, module: nn.Module, args: tuple) -> None:
        row = self.layers.get(name)
        if row is None:
            row = LayerRow(name or "<root>", type(module).__name__, sum(p.numel() for p in self._weights[name]))
            self.layers[name] = row
        row.calls += 1
        x = _first_tensor(args)
        if x is not None and x.is_floating_point() and x.numel():
            row._signal_sum += x.detach().double().pow(2).mean().item()
            row._signal_n += 1
        self._last_layer = row

    @staticmethod
    def _out_grad(row: LayerRow, grad: torch.Tensor) -> None:
        row._grad_sum += grad.detach().double().pow(2).mean().item()
        row._grad_n += 1

    def _watch_time(self, name: str, module: nn.Module, args: tuple) -> tuple | None:
        row = self.recurrent.setdefault(name, RecurrentRow(name, type(module).__name__))
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor):
            row.note = "input is not a tensor (packed sequence?): no per-step gradients"
            return None
        slot = len(row._series)
        row._series.append(None)
        cell = row._cell = isinstance(module, nn.RNNCellBase)
        tdim = _time_dim(module, x)

        def per_step(grad: torch.Tensor) -> None:
            g = grad.detach().double()
            row._series[slot] = (
                [g.norm().item()] if cell else g.movedim(tdim, 0).reshape(g.shape[tdim], -1).norm(dim=1).tolist()
            )

        if x.requires_grad:
            x.register_hook(per_step)
            return None
        # the model's own input: a leaf that requires grad cuts nothing upstream
        leaf = x.detach().requires_grad_(True)
        leaf.register_hook(per_step)
        return (leaf, *args[1:])

    def _record_activation(self, name: str, act: Activation, params: dict, h: torch.Tensor):
        if not h.is_floating_point() or not h.numel():
            return
        lo, hi, top = self._region_of(act, params)
        row = self.activations.get(name)
        if row is None:
            two_sided = math.isfinite(lo) and math.isfinite(hi) and act.family != "relu"  # relu6: dead below 0
            row = self.activations[name] = ActivationRow(name, act.describe(params), (lo, hi), two_sided)
        h = h.detach()
        row.calls += 1
        row.count += h.numel()
        row.saturated += int(((h < lo) | (h > hi)).sum())
        with torch.enable_grad():
            z = h.double().requires_grad_(True)
            (d,) = torch.autograd.grad(act.fn(z, **params).sum(), z)
        counts = torch.histc((d.abs() / top).clamp(0, 1), bins=HIST_BINS, min=0.0, max=1.0)
        row.hist = [a + int(b) for a, b in zip(row.hist, counts.tolist())]
        if self._last_layer is not None:
            if self._last_layer.activation is None:
                self._last_layer.activation = name
            self._last_layer = None

    def _region_of(self, act: Activation, params: dict) -> tuple[float, float, float]:
        lo, hi, top = dynamic_region(act, params, self.threshold)
        given = self.regions.get(act.name)
        if given is not None:
            lo, hi = float(given[0]), float(given[1])
        return lo, hi, top

    # results -----------------------------------------------------------------------------
    def collect(self, loss: float) -> Measurement:
        for name, row in self.layers.items():
            row.signal = row._signal_sum / row._signal_n if row._signal_n else None
            row.out_grad = row._grad_sum / row._grad_n if row._grad_n else None
            grads = [p.grad for p in self._weights[name] if p.grad is not None]
            row.grad_norm = math.sqrt(sum(g.detach().double().pow(2).sum().item() for g in grads)) if grads else None
            act = self.activations.get(row.activation) if row.activation else None
            row.saturation = act.saturation if act else None
        for row in self.recurrent.values():
            done = [s for s in row._series if s is not None]
            row.steps = [v for s in done for v in s] if row._cell else _mean_series(done)
        return Measurement(
            list(self.layers.values()), list(self.activations.values()), [r for r in self.recurrent.values()], loss
        )


def _mean_series(series: Sequence[Sequence[float]]) -> list[float]:
    """The elementwise mean of equally long series, else their concatenation."""
    if not series:
        return []
    if all(len(s) == len(series[0]) for s in series):
        return [sum(v) / len(series) for v in zip(*series)]
    return [v for s in series for v in s]


# ---------------------------------------------------------------------------------------
# losses


def projection_loss(output: Any, seed: int = 0) -> torch.Tensor:
    """E = Σ_k <y_k, e_k> / B with an independent top error e ~ N(0, 1) per output element:
    the BSNN synthetic protocol (research/bsnn.md §4.1, protocol A); ∂E/∂y = e / B."""
    tensors = [t for t in _flatten(output) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not tensors or not any(t.requires_grad for t in tensors):
        raise UsageError("diagnose: the model output has no floating tensor that depends on the parameters")
    g = torch.Generator(device=tensors[0].device).manual_seed(seed)
    total = 0.0
    for t in tensors:
        e = torch.randn(t.shape, generator=g, dtype=t.dtype, device=t.device)
        total = total + (t * e).sum() / (t.shape[0] if t.dim() > 1 else 1)
    return total


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, (tuple, list)):
        return [v for item in value for v in _flatten(item)]
    if isinstance(value, Mapping):
        return [v for item in value.values() for v in _flatten(item)]
    return [value]


def default_loss(output: Any, targets: Any) -> torch.Tensor:
    """MSE for float targets of the output's shape, cross-entropy for integer class targets."""
    out = _first_tensor(output) if not isinstance(output, torch.Tensor) else output
    if isinstance(targets, torch.Tensor) and out is not None:
        if not targets.is_floating_point() and targets.dim() == out.dim() - 1:
            return nn.functional.cross_entropy(out, targets)
        if targets.is_floating_point() and targets.shape == out.shape:
            return nn.functional.mse_loss(out, targets)
    raise UsageError(
        "diagnose: no default loss for these targets (float targets of the output's shape get MSE, integer "
        "class indices cross-entropy); pass loss=callable(output, targets)"
    )


# ---------------------------------------------------------------------------------------
# the entry point


def measure(
    model: nn.Module,
    inputs: Any,
    targets: Any = None,
    loss: Loss | None = None,
    *,
    seed: int = 0,
    catalogue: Catalogue | None = None,
    regions: Mapping[str, tuple[float, float]] | None = None,
    threshold: float = THRESHOLD,
    watched: nn.Module | None = None,
) -> Measurement:
    """One forward and backward pass of ``model`` on ``inputs`` (a tensor or a tuple of
    positional inputs), watched by the probes; the model's parameters' ``.grad`` are left
    as they were. ``loss(output, targets)`` gives the scalar to differentiate; without it,
    ``targets`` pick MSE or cross-entropy, and without targets the loss is
    :func:`projection_loss` with ``seed``. The model runs in its current train/eval mode.
    ``watched``: what runs instead of ``model``, a :func:`sited_copy` of it (diagnose makes one
    for all its runs); made here when None.
    """
    args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    if watched is None:
        watched = sited_copy(model, args, catalogue or DEFAULT) or model
    params = list({id(p): p for m in (model, watched) for p in m.parameters() if p.requires_grad}.values())
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    probe = _Probe(watched, catalogue or DEFAULT, regions or {}, threshold)

    def run(net: nn.Module) -> torch.Tensor:
        with torch.enable_grad():
            output = _forward(net, args)
            if loss is not None:
                value = _user_loss(loss, output, targets)
            elif targets is not None:
                value = default_loss(output, targets)
            else:
                value = projection_loss(output, seed)
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise UsageError(f"diagnose: the loss must be a scalar tensor, got {_describe(value)}")
            try:
                value.backward()
            except RuntimeError as err:
                raise _BackwardFailed(err) from err
        return value

    try:
        try:
            value = run(watched)
        except _BackwardFailed as failed:
            probe.remove()
            raise UsageError(_backward_failure(failed.__cause__, lambda: run(model))) from None
        return probe.collect(float(value.detach()))
    finally:
        probe.remove()
        for p, g in zip(params, saved):
            p.grad = g


def _user_loss(loss: Loss, output: Any, targets: Any) -> Any:
    from ..core.capture import describe_trace_error

    try:
        return loss(output, targets)
    except UsageError:
        raise
    except Exception as err:
        raise UsageError(f"diagnose: loss(output, targets) raised {describe_trace_error(err)}") from err


class _BackwardFailed(Exception):
    """The backward pass raised (the cause): diagnose says where, see _backward_failure."""


def _forward(model: nn.Module, args: tuple) -> Any:
    """``model(*args)``; a model that raises is a UsageError naming the cause and the user's line."""
    from ..core.capture import describe_trace_error

    try:
        return model(*args)
    except (UsageError, _BackwardFailed):
        raise
    except Exception as err:
        shapes = [tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__ for a in args]
        raise UsageError(
            f"diagnose: the model does not run on inputs {shapes}: {describe_trace_error(err, model)}; pass inputs "
            "the model accepts (a tensor or a tuple of positional arguments)"
        ) from err


def _backward_failure(err: BaseException, rerun: Callable[[], Any]) -> str:
    """One line for a backward pass that raised. The usual cause is an in-place update of a
    tensor autograd saved (a cache or state written in place, as transformers' RWKV does in
    eval mode): rerun without probes under anomaly mode, whose report names the forward line
    that created the tensor, and say whether the model fails on its own."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with torch.autograd.detect_anomaly(check_nan=False):
                rerun()
            alone = "it backpropagates without the probes: please report this"
        except (RuntimeError, _BackwardFailed):
            alone = "the model's own backward pass fails the same way (the probes are not involved)"
    where = _anomaly_location([str(w.message) for w in caught])
    cause = f"{first[:200]}" + (f" (the tensor is computed at {where})" if where else "")
    hint = ""
    if "inplace operation" in first:
        hint = (
            "; the model updates a tensor in place that the backward pass needs (e.g. a cache or recurrent state "
            "kept in eval mode: measure in train mode, or disable the cache)"
        )
    return f"diagnose: cannot measure gradients: backward failed: {cause}; {alone}{hint}"


def _anomaly_location(messages: Sequence[str]) -> str | None:
    """The deepest user frame (file:line in function) of anomaly mode's forward traceback."""
    from ..core.capture import _is_user_file

    for text in messages:
        if "Traceback of forward call" not in text:
            continue
        frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', text)
        user = [f for f in frames if _is_user_file(f[0])]
        if user:
            file, line, fn = user[-1]
            return f"{file}:{line} in {fn}"
    return None


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def merge(measurements: Sequence[Measurement]) -> Measurement:
    """Several runs as one: per-layer figures averaged, activation counts summed, per-step
    gradients averaged (rows matched by name; a row missing from a run is averaged over the
    runs that have it)."""
    if len(measurements) == 1:
        return measurements[0]
    first = measurements[0]
    layers = []
    for row in first.layers:
        same = [r for m in measurements for r in m.layers if r.name == row.name]
        merged = LayerRow(row.name, row.type, row.weights, sum(r.calls for r in same))
        merged.signal = _mean([r.signal for r in same])
        merged.grad_norm = _mean([r.grad_norm for r in same])
        merged.out_grad = _mean([r.out_grad for r in same])
        merged.activation = row.activation
        merged.saturation = _mean([r.saturation for r in same])
        layers.append(merged)
    acts = []
    for row in first.activations:
        same = [r for m in measurements for r in m.activations if r.name == row.name]
        hist = [sum(col) for col in zip(*(r.hist for r in same))]
        acts.append(
            ActivationRow(
                row.name,
                row.kind,
                row.region,
                row.two_sided,
                sum(r.calls for r in same),
                sum(r.count for r in same),
                sum(r.saturated for r in same),
                hist,
            )
        )
    recurrent = []
    for row in first.recurrent:
        same = [r for m in measurements for r in m.recurrent if r.name == row.name]
        recurrent.append(RecurrentRow(row.name, row.type, _mean_series([r.steps for r in same if r.steps]), row.note))
    return Measurement(
        layers,
        acts,
        recurrent,
        sum(m.loss for m in measurements) / len(measurements),
        sum(m.runs for m in measurements),
    )


def _mean(values: Sequence[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return sum(found) / len(found) if found else None


def layer_grad_norms(model: nn.Module, inputs: Any, targets: Any = None, loss: Loss | None = None) -> list[float]:
    """‖∂E/∂W‖_F of each weight layer, input to output (a layer without a gradient is left out)."""
    return measure(model, inputs, targets, loss).grad_norms()
