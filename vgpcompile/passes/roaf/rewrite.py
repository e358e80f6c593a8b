"""``roaf``: random orthogonal additive filters (Ceni 2022; research/roaf.md).

    y = phi(W x + b), y of x's shape      ->  h = alpha * O x + beta * y        (ROAFFilter)
    nn.RNN (tanh or relu, any num_layers)  ->  ROAFRNN, same parameter names:
                                               h_t = alpha * O h_{t-1} + beta * phi(W_ih x_t + W_hh h_{t-1} + b)

O is a random orthogonal matrix (Haar, from a seeded generator), fixed, never trained.
A block is an activation fed by an affine module whose output has its input's shape: a
square Linear (O mixes the last dimension) or a Conv1d/2d/3d with equal in/out channels,
stride 1 and 'same' padding (O mixes channels at every position, a 1x1 convolution).
Other blocks, the input projection and the readout stay plain; the report gives the
reason for each. The block's affine layer and activation are not touched: the filter is
a new call that takes the activation's output and the block's input, so parameter names
and the state_dict are the original model's, and ``gpn``, ``arp`` and ``orthogonal``
rewrite the activation and the layer as they would without roaf.

The beta rule (research/roaf.md §5). With alpha = 1 - beta and ||W|| <= 1 every singular
value of the input-output Jacobian of L blocks lies in [(1 - 2 beta)^L, 1]: a fixed beta
vanishes with depth, beta = c / L keeps it near [e^-2c, 1] at any depth. So by default
beta = c / L with L the number of blocks filtered in this compile (capped at 1), and for
an RNN, whose unrolled depth is its sequence length, beta = c / horizon: the gradient over
T steps shrinks like exp(-c T / horizon) (a probe over 400 steps: 2e-17 at beta = 0.1,
2e-2 at beta = 0.01). Without ``horizon`` it is 100 steps, with a warning.

Options:
- beta: the nonlinear share for every block and RNN; None: the rule above.
- alpha: the orthogonal share; None: 1 - beta (a convex combination, as the paper).
- c: beta * depth for the rule (default 1).
- horizon: the number of steps an RNN must remember (beta = c / horizon); None: 100.
- shared: True, one O for all blocks (per size); False, one O per block and per RNN
  layer; None (default), per block unless that needs more than ``max_buffer_mb``, then
  shared, with a warning. Per-block O at 50 000 layers of width 64 is 800 MB.
- filter: "haar" (default, the paper's: a dense Haar-random O, one n x n matmul per block)
  or "hadamard" (a randomized Hadamard transform: the Kronecker product of normalized
  Hadamard matrices of at most 32 x 32 with random column signs, and a Haar factor for the
  odd part of n; exactly orthogonal, n * sum(factor sizes) multiply-adds per vector, 32
  instead of 256 at width 256; §5's bounds need only orthogonality). nn.RNN layers keep a
  dense Haar O.
- seed: O of a block is drawn from (seed, the block's site name): independent of order,
  and drawn again identically when ``load`` rebuilds the model. O is a non-persistent
  buffer, so checkpoints hold only the original parameters.
- max_buffer_mb: the most memory the O matrices may take (default 256); an explicit
  ``shared=False`` over it is refused before anything is allocated. ``plan`` reports the
  figure.

The rewrite changes the value range of each block's output (``writes={"ranges"}``), so
arp runs after it and reads the filter's declared range (``vgp_output_range``). That
range is the exact worst case and grows by up to sqrt(n) per block: on deep stacks give
arp a pivot (``arp.xQ``). ``freeze`` keeps the filter, one matmul-add per block.
"""

from __future__ import annotations

import dataclasses
import math
import types
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import fx, nn

from ...core.contract import BLOCK, LAYER, Env, Pass, PassResult
from ...core.facts import Fact
from ...core.protocol import inserted_by
from ...core.rewriter import active
from ...core.targets import Block, Layer
from ...errors import UsageError
from .constants import DEFAULT_C, DEFAULT_HORIZON, DEFAULT_MAX_BUFFER_MB
from .modules import ROAFRNN, ROAFFilter, ROAFHadamard, ROAFMatrix, haar_orthogonal, hadamard_radices, seed_for

MB = 2.0**20


@dataclass
class _Run:
    """What ``prepare`` decided for one compile, read by ``apply``."""

    block_beta: float
    rnn_beta: float
    shared: bool
    matrices: dict[tuple, nn.Module] = field(default_factory=dict)  # shared O by (n, dtype, device, filter)


@dataclass(frozen=True)
class ROAF(Pass):
    name: ClassVar[str] = "roaf"
    summary: ClassVar[str] = (
        "block y = phi(Wx+b) -> alpha*O x + beta*y, O random orthogonal and fixed; nn.RNN likewise (ROAF)"
    )
    matches: ClassVar[tuple[str, ...]] = (BLOCK, LAYER)
    layer_types: ClassVar[tuple[type, ...]] = (nn.RNN,)
    writes: ClassVar[frozenset[str]] = frozenset({Fact.RANGES, Fact.LAYERS})

    beta: float | None = None
    alpha: float | None = None
    c: float = DEFAULT_C
    horizon: int | None = None
    shared: bool | None = None
    seed: int = 0
    max_buffer_mb: float = DEFAULT_MAX_BUFFER_MB
    filter: Literal["haar", "hadamard"] = "haar"

    def __post_init__(self) -> None:
        if self.beta is not None and not (math.isfinite(self.beta) and 0 < self.beta):
            raise UsageError(f"option 'beta' of pass 'roaf' must be a positive number, got {self.beta!r}")
        if self.alpha is not None and not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise UsageError(f"option 'alpha' of pass 'roaf' must be a number >= 0, got {self.alpha!r}")
        if self.beta is not None and self.alpha is None and self.beta > 1:
            raise UsageError(
                f"option 'beta' of pass 'roaf' must be at most 1 when alpha is not given (alpha = 1 - beta would be "
                f"{1 - self.beta:g}); got beta={self.beta!r}: lower beta, or set alpha too"
            )
        if not (math.isfinite(self.c) and self.c > 0):
            raise UsageError(f"option 'c' of pass 'roaf' must be a positive number, got {self.c!r}")
        if self.horizon is not None and self.horizon < 1:
            raise UsageError(f"option 'horizon' of pass 'roaf' must be a number of steps >= 1, got {self.horizon!r}")
        if not (self.max_buffer_mb > 0):
            raise UsageError(f"option 'max_buffer_mb' of pass 'roaf' must be positive, got {self.max_buffer_mb!r}")

    # ---- the whole compile -------------------------------------------------------------------

    def prepare(self, targets: list, env: Env) -> PassResult:
        """Count the blocks and RNNs to filter, fix beta, and size the O matrices before any is drawn."""
        result = PassResult(self.name)
        blocks = [t for t in targets if isinstance(t, Block) and self.check(t, env) is None]
        rnns = [t for t in targets if isinstance(t, Layer) and self.check(t, env) is None]
        block_beta = self.beta if self.beta is not None else min(1.0, self.c / max(len(blocks), 1))
        rnn_beta = self.beta if self.beta is not None else min(1.0, self.c / (self.horizon or DEFAULT_HORIZON))
        sizes = [(*_features(b.affine), self.filter) for b in blocks]
        sizes += [
            (t.module.hidden_size, t.module.weight_hh_l0, "haar") for t in rnns for _ in range(t.module.num_layers)
        ]
        kinds = {(n, w.dtype, w.device, f): _bytes(n, w, f) for n, w, f in sizes}
        own, once = sum(_bytes(n, w, f) for n, w, f in sizes), sum(kinds.values())
        shared = self._choose_sharing(own, once, len(sizes), result)
        if self.shared is None:  # the recipe records the decision: load must not decide again from the limit
            result.resolved["shared"] = shared
        _keep(env, _Run(block_beta, rnn_beta, shared))
        self._warn(targets, blocks, rnns, rnn_beta, result, env)
        self._warn_mix(block_beta if blocks else rnn_beta, result)
        result.stats.update(
            blocks=len(blocks),
            rnn_layers=sum(t.module.num_layers for t in rnns),
            o_matrices=len(kinds) if shared else len(sizes),
            buffer_mb=round((once if shared else own) / MB, 3),
            shared=shared,
        )
        if blocks:
            result.stats["beta"] = block_beta
        if rnns:
            result.stats["beta_rnn"] = rnn_beta
        return result

    def _warn(self, targets: list, blocks: list, rnns: list, rnn_beta: float, result: PassResult, env: Env) -> None:
        done = any(isinstance(t, Block) and _already_filtered(t.site.node) for t in targets)
        if not blocks and not rnns and not done:
            left = [f"{t.full_name!r} ({self.check(t, env)})" for t in targets if isinstance(t, Layer)]
            rnn = f"no nn.RNN it can swap: {', '.join(left[:3])}" if left else "no nn.RNN"
            result.warnings.append(
                "roaf: no block to filter (an activation fed by a square Linear or by a Conv with equal channels, "
                f"stride 1 and 'same' padding) and {rnn}; see the report for each block's reason"
            )
        if rnns and self.beta is None and self.horizon is None:
            names, h = ", ".join(repr(t.full_name) for t in rnns[:3]), DEFAULT_HORIZON
            at_1000 = math.exp(-self.c * 1000 / h)
            result.warnings.append(
                f"roaf: RNN {names} uses beta = c/horizon = {rnn_beta:g} for the default horizon of {h} steps; "
                f"gradients over T steps shrink like exp(-{self.c:g}*T/{h}) (T = 1000: {at_1000:.0e}): "
                "set options={'roaf': {'horizon': T}} for sequences longer than that"
            )

    def _choose_sharing(self, own: int, once: int, count: int, result: PassResult) -> bool:
        limit = self.max_buffer_mb * MB
        if self.shared is None:
            if own <= limit:
                return False
            result.warnings.append(
                f"roaf: one O per block would take {own / MB:.0f} MB for {count} matrices, over max_buffer_mb="
                f"{self.max_buffer_mb:g}; sharing one O per size instead ({once / MB:.3g} MB). Set shared=False "
                "with a larger max_buffer_mb for independent filters"
            )
            return True
        need = once if self.shared else own
        if need > limit:
            hint = "raise max_buffer_mb" if self.shared else "set shared=True (one O per size) or raise max_buffer_mb"
            raise UsageError(
                f"pass 'roaf': the O matrices need {need / MB:.0f} MB ({count} matrices, shared={self.shared}), over "
                f"option max_buffer_mb={self.max_buffer_mb:g}; {hint}"
            )
        return bool(self.shared)

    def _warn_mix(self, beta: float, result: PassResult) -> None:
        alpha = self._alpha(beta)
        if alpha + beta > 1 + 1e-12:
            result.warnings.append(
                f"roaf: alpha + beta = {alpha + beta:g} > 1; the Jacobian's upper bound (alpha + beta*||W||)^L "
                "grows with depth (research/roaf.md §5): gradients can explode"
            )

    def _alpha(self, beta: float) -> float:
        return 1.0 - beta if self.alpha is None else self.alpha

    def _state(self, env: Env) -> _Run:
        run = getattr(env.state, "roaf", None)
        if run is None:  # apply without prepare (by hand): the defaults for a single block
            env = dataclasses.replace(env, state=env.state or types.SimpleNamespace())
            self.prepare([], env)
            run = env.state.roaf
        return run

    # ---- one target ----------------------------------------------------------------------------

    def check(self, target: Block | Layer, env: Env) -> str | None:
        if isinstance(target, Layer):
            return _rnn_reason(target.module)
        return _block_reason(target)

    def apply(self, target: Block | Layer, env: Env) -> str:
        run = self._state(env)
        if isinstance(target, Layer):
            return self._swap_rnn(target, run)
        return self._filter_block(target, run)

    def _matrix(self, n: int, key: str, like: torch.Tensor, run: _Run, kind: str = "haar") -> nn.Module:
        if not run.shared:
            return _draw(n, seed_for(self.seed, key), like, kind)
        slot = (n, like.dtype, like.device, kind)
        if slot not in run.matrices:
            run.matrices[slot] = _draw(n, seed_for(self.seed, f"shared:{n}"), like, kind)
        return run.matrices[slot]

    def _filter_block(self, block: Block, run: _Run) -> str:
        site = block.site
        n, weight = _features(block.affine)
        beta = run.block_beta
        alpha = self._alpha(beta)
        spatial = 0 if isinstance(block.affine, nn.Linear) else len(block.affine.kernel_size)
        o = self._matrix(n, site.name, weight, run, self.filter)
        filt = ROAFFilter(n, alpha=alpha, beta=beta, spatial=spatial, O=o)
        y, x = site.node, _input_of(site.producer)
        rewriter = active()
        name = rewriter.add_module(rewriter.module_of(y), f"{y.name}_roaf", filt)
        new = rewriter.insert_after(y, "call_module", name, (y, x))
        new.meta.update({k: v for k, v in y.meta.items() if k == "nn_module_stack"})
        # every use of the block's output goes through the filter; an in-place activation also
        # changed the affine output it aliases: later uses of that tensor get the filtered value too
        rewriter.replace_uses(y, new)
        if site.inplace:
            rewriter.replace_later_uses(site.producer, new)
        rewriter.mark_applied(y, site)
        rewriter.record(site.name, filt)
        on = "channels (1x1)" if spatial else "features"
        kind = f" ({self.filter}: {' x '.join(map(str, o.radices))})" if filt.structured else ""
        return f"alpha={alpha:.4g} beta={beta:.4g}, O {n}x{n}{kind} on {on}" + (", shared" if run.shared else "")

    def _swap_rnn(self, layer: Layer, run: _Run) -> str:
        rnn = layer.module
        beta = run.rnn_beta
        w = rnn.weight_hh_l0
        o = [self._matrix(rnn.hidden_size, f"{layer.full_name}:l{k}", w, run) for k in range(rnn.num_layers)]
        new = ROAFRNN.from_rnn(rnn, beta=beta, alpha=self._alpha(beta), O=o)
        active().swap_module(layer.gm, layer.name, new, layer.full_name)
        rule = "given" if self.beta is not None else f"c/horizon, horizon {self.horizon or DEFAULT_HORIZON}"
        return f"ROAFRNN alpha={new.alpha:.4g} beta={beta:.4g} ({rule}), {rnn.num_layers} O of {rnn.hidden_size}^2"


def _keep(env: Env, run: _Run) -> None:
    """The compile's roaf state: in the pass run's namespace (the frozen pass is not written)."""
    if env.state is not None:
        env.state.roaf = run


def _draw(n: int, seed: int, like: torch.Tensor, kind: str) -> nn.Module:
    if kind == "hadamard":
        return ROAFHadamard(n, seed, like.dtype, like.device)
    return ROAFMatrix(haar_orthogonal(n, seed, like.dtype, like.device))


def _bytes(n: int, like: torch.Tensor, kind: str) -> int:
    """The memory of one O: n² numbers dense, the factors structured."""
    count = sum(r * r for r in hadamard_radices(n)) if kind == "hadamard" else n * n
    return count * like.element_size()


def _features(affine: nn.Module) -> tuple[int, torch.Tensor]:
    """(size of the mixed dimension, the weight) of a shape-preserving affine layer."""
    n = affine.in_features if isinstance(affine, nn.Linear) else affine.in_channels
    return n, affine.weight


def _input_of(node: fx.Node):
    return active().input_of(node)


def _block_reason(block: Block) -> str | None:
    site = block.site
    change = block.shape_change()
    if change:
        return f"not shape-preserving: {change}"
    if not isinstance(_input_of(site.producer), fx.Node):
        return f"the input of {site.producer_name} is not a tensor computed in the graph"
    weight = getattr(block.affine, "weight", None)
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        return f"{site.producer_name} has no floating-point weight"
    if _already_filtered(site.node):
        return "already rewritten by 'roaf'; its output goes through a ROAF filter"
    return None


def _already_filtered(y: fx.Node) -> bool:
    gm = active().module_of(y)
    return any(u.op == "call_module" and inserted_by(gm.get_submodule(str(u.target))) == "roaf" for u in y.users)


def _rnn_reason(rnn: nn.Module) -> str | None:
    if type(rnn) is not nn.RNN:
        return f"{type(rnn).__name__} is a subclass of nn.RNN; roaf swaps exact types"
    if rnn.bidirectional:
        return "bidirectional nn.RNN is not supported by ROAFRNN"
    return None
