"""Runtime pieces of the ``orthogonal`` pass (research/bsnn.md); usable by hand as well.

A layer's weight is read as ``groups`` matrices of shape (fan_out, fan_in) — see
:class:`Layout` — and "orthogonal" means orthonormal rows when fan_out <= fan_in, else
orthonormal columns, of each such matrix, times ``gain``. How it stays so in training:

- ``RowNorm``: the BSNN authors' ``OrthLinear``: each output unit's fan-in vector is rescaled
  to a fixed length on every forward pass. Keeps unit rows, not orthogonality.
- torch's ``parametrizations.orthogonal`` on the flattened matrix (``MatrixView`` turns it
  back into the layer's weight): exact, but a linalg solve/exp in every forward and backward.
- retraction: the weight stays a plain parameter; Newton–Schulz pulls it back inside each
  ``optimizer.step()`` (every ``every``-th; a global torch.optim post-step hook) and after
  ``load_state_dict``, or explicitly with :func:`retract`. The forward is the plain layer's.
  A step is certified without a Gram matrix when ‖W − W_r‖_F against the weight as last
  retracted proves the error within tol (:func:`certified_bound`); the host-side float
  comparison runs in the hook, outside any compiled forward.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils import parametrizations, parametrize
from torch.optim.optimizer import register_optimizer_step_post_hook

from ...core.affine import TORCH_AFFINE, DeclaredAffine, declared
from ...core.seeding import seeded
from ...errors import UsageError

LAYER_TYPES: tuple[type, ...] = (*TORCH_AFFINE, DeclaredAffine)
KEEPS = ("init", "rownorm", "parametrization", "retraction")
MAPS = ("auto", "cayley", "matrix_exp", "householder")
DEFAULT_TOL = 1e-4
STATE = "vgp_orthogonal"  # the attribute holding a layer's OrthogonalState


@dataclass(frozen=True)
class Layout:
    """How a weight tensor reads as ``groups`` matrices (fan_out, fan_in).

    Linear: the weight itself; a declared affine layer's (in, out) weight its transpose.
    Conv (out, in/groups, *k): one (out/groups, in/groups * k)
    matrix per group — the map from an input patch to the outputs at one position, not
    torch's default of a matrix per trailing kernel slice. ConvTranspose stores
    (in, out/groups, *k); an output unit's fan-in runs over dim 0 and the kernel, so its
    matrix is the per-group (out/groups, in/groups * k) transpose of that layout.
    """

    shape: tuple[int, ...]
    groups: int = 1
    transposed: bool = False

    @classmethod
    def of(cls, module: nn.Module) -> Layout:
        if isinstance(module, nn.Linear):
            return cls(tuple(module.weight.shape))
        if isinstance(module, _ConvNd):
            return cls(tuple(module.weight.shape), module.groups, bool(module.transposed))
        spec = declared(module)
        if spec is not None and spec.weight == "weight" and module.weight.dim() == 2:
            # a declared (in, out) weight reads as its transpose, like a transposed conv's
            return cls(tuple(module.weight.shape), 1, spec.layout == "in_out")
        raise UsageError(f"orthogonal weights need a Linear or Conv layer, got {type(module).__name__}")

    @property
    def matrix_shape(self) -> tuple[int, int, int]:
        fan_out = self.shape[1] if self.transposed else self.shape[0] // self.groups
        return self.groups, fan_out, math.prod(self.shape) // (self.groups * fan_out)

    def to_matrix(self, w: torch.Tensor) -> torch.Tensor:
        g, m, n = self.matrix_shape
        if self.transposed:
            return w.reshape(g, self.shape[0] // g, m, -1).transpose(1, 2).reshape(g, m, n)
        return w.reshape(g, m, n)

    def from_matrix(self, mat: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            g, m, _ = self.matrix_shape
            return mat.reshape(g, m, self.shape[0] // g, -1).transpose(1, 2).reshape(self.shape)
        return mat.reshape(self.shape)

    def describe(self) -> str:
        g, m, n = self.matrix_shape
        kind = "square" if m == n else ("orthonormal rows" if m < n else "orthonormal columns")
        return f"{m}x{n} {kind}" + (f", {g} groups" if g > 1 else "")


FAST_WORK = 2**27  # rows * cols**2 of the thin matrix above which float32 factorizations are used
FAST_TOL = 1e-5  # the float32 results are checked against this bound on ||QᵀQ - I||_2


def haar(layout: Layout, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A Haar-distributed (semi-)orthogonal weight of ``layout`` (the paper's init).

    The thin side is orthonormalized: a (max(m, n), min(m, n)) Gaussian per group, never a
    square of the larger side. Small matrices (and ``dtype=float64``) use Householder QR
    in float64, as always. Large float32 ones (a 4096 x 25088 VGG classifier layer) use
    :func:`orthonormal_columns`: float32, checked, about 6x faster (benchmarks/orthogonal_init.py).
    """
    g, m, n = layout.matrix_shape
    big, small = max(m, n), min(m, n)
    if dtype == torch.float64 or big * small * small < FAST_WORK:
        z = torch.randn(g, big, small, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(z)
        # QR alone is not Haar (its sign convention biases Q); diag(R) > 0 makes it so (Mezzadri 2007)
        q = q * torch.diagonal(r, dim1=-2, dim2=-1).sign().unsqueeze(-2)
    else:
        q = orthonormal_columns(torch.randn(g, big, small, generator=generator, dtype=torch.float32))
    return layout.from_matrix(q if m >= n else q.mT).to(dtype)


def orthonormal_columns(z: torch.Tensor) -> torch.Tensor:
    """Q of z = QR with diag(R) > 0 (so a Gaussian z gives a Haar Q), in float32, batched.

    A tall z (rows >= 4 * columns) goes through Cholesky QR: the Gram zᵀz and z R⁻¹ are two
    matmuls, the fastest the hardware does, and R comes from a float64 Cholesky of the small
    Gram. Its loss of orthogonality grows with cond(z)², which is below 9 for a Gaussian of
    that shape; the result is checked (:func:`orthogonality_estimate`) and anything not within
    FAST_TOL, or any other shape, goes through float32 Householder QR, which is stable for
    every z.
    """
    if z.shape[-2] >= 4 * z.shape[-1]:
        gram = (z.mT @ z).double()
        r, info = torch.linalg.cholesky_ex(gram, upper=True)
        if not info.any():
            eye = torch.eye(r.shape[-1], dtype=r.dtype, device=r.device).expand_as(r)
            q = z @ torch.linalg.solve_triangular(r, eye, upper=True).to(z.dtype)
            if orthogonality_estimate(q) <= FAST_TOL:
                return q
    q, r = torch.linalg.qr(z)
    return q * torch.diagonal(r, dim1=-2, dim2=-1).sign().unsqueeze(-2)


def orthogonality_estimate(q: torch.Tensor, iters: int = 8) -> float:
    """An estimate of max over the batch of ||QᵀQ - I||_2 for tall Q, by power iteration on
    QᵀQ - I: matrix-vector products only, O(rows * columns) where the exact norm costs a Gram
    matrix. Seeded; in Q's dtype (float32 rounding adds ~1e-7 here); it approaches the true
    norm from below, which FAST_TOL's margin (10x the errors measured) allows for."""
    gen = torch.Generator(device=q.device).manual_seed(0)
    v = torch.randn(*q.shape[:-2], q.shape[-1], 1, generator=gen, device=q.device, dtype=q.dtype)
    est = torch.zeros(())
    for _ in range(iters):
        v = v / torch.linalg.vector_norm(v, dim=-2, keepdim=True)
        w = q.mT @ (q @ v) - v
        est = torch.linalg.vector_norm(w, dim=-2).max()
        v = w
    return float(est)


def polar(mat: torch.Tensor) -> torch.Tensor:
    """The nearest (semi-)orthogonal matrix in Frobenius norm, U Vᵀ of the thin SVD (batched).

    Small or float64 matrices: the float64 SVD. Large float32 ones: A (AᵀA)^(-1/2) on the
    thin side, from a float32 Gram and its float64 eigendecomposition — a (k x k) problem for
    a (N x k) matrix, not an SVD of the whole — when A is well conditioned (cond(A)² below
    1e4); the result is checked against FAST_TOL, polished by one Newton–Schulz step if it
    misses, and checked again. Otherwise, the float64 SVD.
    """
    wide = mat.shape[-2] < mat.shape[-1]
    x = mat.mT if wide else mat
    big, small = x.shape[-2], x.shape[-1]
    if mat.dtype != torch.float64 and big * small * small >= FAST_WORK:
        q = _polar_by_gram(x.float())
        if q is not None:
            return (q.mT if wide else q).to(mat.dtype)
    u, _, vh = torch.linalg.svd(mat.double(), full_matrices=False)
    return (u @ vh).to(mat.dtype)


def _polar_by_gram(x: torch.Tensor) -> torch.Tensor | None:
    evals, evecs = torch.linalg.eigh((x.mT @ x).double())
    if (evals[..., 0] <= 1e-4 * evals[..., -1]).any():
        return None  # ill-conditioned: the Gram loses the small singular values in float32
    inv_sqrt = (evecs * evals.rsqrt().unsqueeze(-2)) @ evecs.mT
    q = x @ inv_sqrt.to(x.dtype)
    if orthogonality_estimate(q) > FAST_TOL:  # one Newton–Schulz step: the error e becomes ~3e²/4
        q = q - 0.5 * (q @ (q.mT @ q - torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)))
    return q if orthogonality_estimate(q) <= FAST_TOL else None


def gram_error(mat: torch.Tensor) -> float:
    """max over the batch of ‖G − I‖₂, G the smaller Gram matrix, in float64: all singular
    values lie in [sqrt(1 − e), sqrt(1 + e)]."""
    mat = mat.detach().double()
    gram = mat.mT @ mat if mat.shape[-2] >= mat.shape[-1] else mat @ mat.mT
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    return torch.linalg.matrix_norm(gram - eye, ord=2).max().item()


def orthogonality_error(layer: nn.Module, gain: float | None = None) -> float:
    """:func:`gram_error` of ``layer``'s current weight / gain, read through its :class:`Layout`."""
    state = getattr(layer, STATE, None)
    gain = gain if gain is not None else (state.gain if state else 1.0)
    layout = state.layout if state else Layout.of(layer)
    with torch.no_grad():
        return gram_error(layout.to_matrix(layer.weight) / gain)


@dataclass
class OrthogonalState:
    """What the pass left on a layer (as ``layer.vgp_orthogonal``)."""

    layout: Layout
    keep: str
    gain: float = 1.0
    tol: float = DEFAULT_TOL
    every: int = 1  # retraction: retract after every ``every``-th optimizer step
    steps: int = 0  # retraction: optimizer steps since the last retraction
    drift: float = 0.0  # retraction: the largest error bound seen when retracting (see drift())
    handles: list[Any] = field(default_factory=list)
    module: Any = field(default=None, repr=False, compare=False)  # retraction: the layer, to register copies
    # retraction's certified skip (see certified_bound): the weight as last retracted, float32, in the
    # weight's own shape, and the bound on ‖XᵀX − I‖₂ of that weight / gain; None: retract at the next step
    anchor: torch.Tensor | None = field(default=None, repr=False, compare=False)
    anchor_error: float = math.inf
    retractions: int = 0  # retraction: Gram matrices computed (retractions, explicit ones included)
    skips: int = 0  # retraction: optimizer-step retractions certified without a Gram matrix
    streak: int = 0  # retraction: of those, since the last Gram matrix

    def __getstate__(self) -> dict:
        """The anchor is a cache, not state: a copy or a pickle goes without it (no second copy
        of every weight in a checkpoint) and retracts in full at its first step."""
        return {**self.__dict__, "anchor": None, "anchor_error": math.inf}

    def __setstate__(self, state: dict) -> None:
        """A deep copy or an unpickled layer retracts after optimizer steps like the original."""
        self.__dict__.update(state)
        if self.keep == "retraction" and self.module is not None:
            _Retraction.add(self.module)


# ---- parametrizations ---------------------------------------------------------------------


class MatrixView(nn.Module):
    """Parametrization: gain x the orthogonal matrix (from torch's ``orthogonal``) as the layer's weight."""

    def __init__(self, layout: Layout, gain: float, inner_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.layout, self.gain, self.inner_shape = layout, gain, inner_shape

    def forward(self, mat: torch.Tensor) -> torch.Tensor:
        w = self.layout.from_matrix(mat)
        return w if self.gain == 1.0 else w * self.gain

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        return (self.layout.to_matrix(w) / self.gain).reshape(self.inner_shape)


class _UnitRows(torch.autograd.Function):
    """rows / ‖rows‖ with a hand-written backward: one pass over the weight fewer than
    autograd's (a depth-20 width-256 step measured 1.42x plain against 1.52x)."""

    @staticmethod
    def forward(ctx, v: torch.Tensor) -> torch.Tensor:
        inv = (v * v).sum(-1, keepdim=True).clamp_min(1e-30).rsqrt()
        out = v * inv
        ctx.save_for_backward(out, inv)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out, inv = ctx.saved_tensors
        return (grad - out * (grad * out).sum(-1, keepdim=True)) * inv


class RowNorm(nn.Module):
    """Parametrization: each output unit's fan-in vector rescaled to length ``gain`` on every
    forward — the BSNN authors' ``OrthLinear(constraint=True)`` (research/bsnn.md §2.1).

    It pins the diagonal of the smaller Gram matrix to gain², the part of orthogonality
    that is cheap to keep; the off-diagonal is free to drift. For a tall matrix
    (fan_out > fan_in) that diagonal is WᵀW's, so columns (each input's fan-out) are
    normalized instead of rows: rows of a matrix with orthonormal columns cannot all have
    one length, and normalizing them would undo the orthogonal init at step 0.
    ``right_inverse`` is the identity: exact on weights that already satisfy this.
    """

    def __init__(self, layout: Layout, gain: float = 1.0) -> None:
        super().__init__()
        _, m, n = layout.matrix_shape
        self.layout, self.gain, self.columns = layout, gain, m > n

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        if not self.layout.transposed and not self.columns:  # fast path: output unit o's fan-in is v[o]
            out = _UnitRows.apply(v.flatten(1)).view_as(v)
        else:
            mat = self.layout.to_matrix(v)
            mat = _UnitRows.apply(mat.mT).mT if self.columns else _UnitRows.apply(mat)
            out = self.layout.from_matrix(mat)
        return out if self.gain == 1.0 else out * self.gain

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        return w


def resolve_map(layout: Layout, orthogonal_map: str) -> str:
    """ "auto": cayley, unless the matrix is far from square. torch's cayley and matrix_exp embed
    an m x n matrix in a square of the larger side N (cost ~N³) while householder costs
    ~N·k for k reflectors; measured per forward+backward at batch 64: 256x256 cayley 6 ms,
    householder 55 ms; 256x64 3.8 vs 13 ms; 32x720 390 vs 34 ms. The crossover is near
    N² = 3500 k."""
    if orthogonal_map != "auto":
        return orthogonal_map
    _, m, n = layout.matrix_shape
    return "householder" if max(m, n) ** 2 > 4096 * min(m, n) else "cayley"


def register_orthogonal(module: nn.Module, layout: Layout, orthogonal_map: str, gain: float, seed: int) -> None:
    """torch's ``orthogonal`` on the flattened (groups, fan_out, fan_in) matrix, with MatrixView on top."""
    g, m, n = layout.matrix_shape
    weight = module.weight
    inner = (layout.to_matrix(weight.detach()) / gain).reshape((m, n) if g == 1 else (g, m, n))
    if inner.shape != weight.shape or gain != 1.0:
        module.weight = nn.Parameter(inner.clone(), requires_grad=weight.requires_grad)
    # torch completes a non-square Q with torch.randn: seed it so that compiles are reproducible
    with seeded(seed, weight.device):
        parametrizations.orthogonal(module, "weight", orthogonal_map=resolve_map(layout, orthogonal_map))
    if inner.shape != weight.shape or gain != 1.0:
        view = MatrixView(layout, gain, tuple(inner.shape))
        parametrize.register_parametrization(module, "weight", view, unsafe=True)


def _load_plain_weight(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """Load-state-dict pre-hook: a plain ``weight`` (from the original model or a frozen one)
    loads into a parametrized layer by assignment through its parametrizations."""
    key = prefix + "weight"
    if key not in state_dict or not parametrize.is_parametrized(module, "weight"):
        return
    state: OrthogonalState = getattr(module, STATE)
    value = state_dict.pop(key)
    if state.keep == "parametrization":  # nearest orthogonal, as init="project" would take
        value = state.layout.from_matrix(polar(state.layout.to_matrix(value) / state.gain)) * state.gain
    with torch.no_grad():
        module.weight = value.to(module.weight)  # the layer's dtype and device
    for name, tensor in module.parametrizations.weight.state_dict().items():
        state_dict[f"{prefix}parametrizations.weight.{name}"] = tensor


# ---- retraction ----------------------------------------------------------------------------


class _Retraction:
    """Retracts after optimizer steps, process-wide: a global torch.optim post-step hook
    retracts each ``keep="retraction"`` layer whose weight the stepping optimizer holds.

    Why after the step and not before the layer's forward (the former design): the stored
    parameter is then orthogonal whoever reads it — eager code that reads ``conv1d.weight``
    without calling the module (transformers' Mamba) included — and the forward is the plain
    layer's, so torch.compile(fullgraph=True) sees no hook, no Python-side stamp and no
    data-dependent branch. Layers are found through a WeakSet (a deep copy or an unpickled
    layer registers itself again: OrthogonalState.__setstate__)."""

    layers: weakref.WeakSet = weakref.WeakSet()
    handle: Any = None

    @classmethod
    def add(cls, module: nn.Module) -> None:
        cls.layers.add(module)
        if cls.handle is None:
            cls.handle = register_optimizer_step_post_hook(cls._after_step)

    @classmethod
    def _after_step(cls, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not cls.layers:
            return
        owners = {id(m.weight): m for m in list(cls.layers)}
        # the optimizer's parameter order, not the set's: every process of a sharded (FSDP2)
        # model then gathers its weights in the same order
        stepped = [owners[id(p)] for group in optimizer.param_groups for p in group["params"] if id(p) in owners]
        for module in dict.fromkeys(stepped):
            state = getattr(module, STATE, None)
            if state is None or state.keep != "retraction":
                continue
            state.steps += 1
            if state.steps >= state.every:
                retract_layer(module, certify=True)


def newton_schulz(mat: torch.Tensor, tol: float = DEFAULT_TOL, max_iter: int = 8) -> tuple[torch.Tensor, float, bool]:
    """Pull (..., m, n) matrices back to (semi-)orthogonal ones: (result, error bound, changed).

    One step X <- X (I - E/2), E = XᵀX - I, maps each Gram eigenvalue 1 + e to
    (1 + e)(1 - e/2)², i.e. e to -3e²/4 + e³/4: quadratic convergence, so one step per
    optimizer step is the usual cost (two matmuls on the smaller Gram). The new error is
    predicted from that formula rather than re-measured, saving a third matmul. Errors are
    Frobenius norms (>= the spectral norm; in training the drift is low-rank and the two
    differ by ~1.5x, measured) plus a float32 rounding floor, so ``err <= tol`` certifies
    ‖XᵀX − I‖₂ <= tol. Far from the manifold (error > 1/2, e.g. a freshly loaded weight)
    Newton–Schulz may diverge, so the SVD polar factor is taken instead — unless a power
    iteration puts the spectral norm of E within 1 (a large Frobenius error spread over
    many directions, as an Adam step leaves) and each step at least halves the error.
    """
    x, err, changed, _ = _newton_schulz(mat, tol, max_iter)
    return x, err, changed


AIM = 1 / 16  # a retraction that measured the error anyway leaves it below tol * AIM (see _newton_schulz)


def _newton_schulz(
    mat: torch.Tensor, tol: float, max_iter: int = 8, aim: Callable[[float], bool] | None = None
) -> tuple[torch.Tensor, float, bool, float]:
    """:func:`newton_schulz`, plus the error bound of ``mat`` itself (before any step).

    ``aim(first measured error)`` says whether to make headroom for the certified skip
    (:func:`certified_bound`): then a matrix measured within tol but not within tol * AIM
    takes one step anyway, one matmul on top of the Gram already paid for, to land near the
    float32 floor. A matrix outside tol is not iterated past tol to reach it: one step from
    error e lands at ~3e²/4, below tol/16 already when e <= 3e-3 (tol 1e-4); a larger e means
    the optimizer moves the weight more than a skip could ever allow (δ ≈ e/2 per step,
    against a budget of ~tol/2), so a second step (two more matmuls) would buy headroom
    that no later step can use.
    """
    wide = mat.shape[-2] < mat.shape[-1]
    x = mat.mT if wide else mat
    floor = 4 * torch.finfo(torch.float32).eps * math.sqrt(x.shape[-1])
    changed, err, first, goal, last = False, math.inf, None, tol, math.inf
    for _ in range(max_iter):
        e = x.mT @ x
        e.diagonal(dim1=-2, dim2=-1).sub_(1.0)
        err = float(torch.linalg.matrix_norm(e).max()) + floor
        if first is None:
            first = err
            goal = min(tol, max(tol * AIM, 2 * floor)) if aim is not None and aim(err) else tol
        if err <= goal or (changed and err <= tol):
            break
        changed = True
        # far out by Frobenius (an Adam step moves every entry: ~1.5 at 1024 x 1024, lr 1e-3) is
        # nearer by the spectral norm that decides convergence (0.5-1.2 measured in training):
        # Newton–Schulz from ‖E‖₂ = 1 takes 5 steps (10 matmuls), the polar factor costs ~18 on
        # one CPU thread. Each step must halve the error, or the polar factor is taken after all.
        # The choice is only about cost: every error above is measured or a proven bound.
        if err > 0.5 and (err > last / 2 or _spectral_estimate(e) > 1.0):
            x = polar(x)
            last = math.inf
            continue
        last = err
        x = x - 0.5 * (x @ e)
        err = 0.75 * err**2 + 0.25 * err**3 + floor
        if err <= tol:
            break
    else:
        if err > tol:  # out of iterations: the polar factor, measured
            x = polar(x)
            e = x.mT @ x
            e.diagonal(dim1=-2, dim2=-1).sub_(1.0)
            err = float(torch.linalg.matrix_norm(e).max()) + floor
    return (x.mT if wide else x), err, changed, first


def _spectral_estimate(e: torch.Tensor, iters: int = 6) -> float:
    """max over the batch of ‖E‖₂ for symmetric E, by power iteration from a seeded start:
    matrix-vector products only; an estimate from below (for a choice, never a bound)."""
    gen = torch.Generator(device=e.device).manual_seed(0)
    v = torch.randn(*e.shape[:-1], 1, generator=gen, device=e.device, dtype=e.dtype)
    for _ in range(iters):
        v = e @ (v / torch.linalg.vector_norm(v, dim=-2, keepdim=True).clamp_min(1e-30))
    return float(torch.linalg.vector_norm(v, dim=-2).max())


U32 = 2.0**-24  # float32 unit roundoff
CHUNK = 2**16  # squares summed in float32 per chunk (the rounding bound grows with it); chunks in float64


def certified_bound(state: OrthogonalState, weight: torch.Tensor) -> float | None:
    """A rigorous bound on ‖XᵀX − I‖₂ for the current weight (X its thin-side matrices / gain)
    from the anchor A (the weight as last retracted, X_r = A / gain, with ‖X_rᵀX_r − I‖₂ <= e_r)
    and one O(weights) pass: δ = ‖W − A‖_F / gain. None without a usable anchor.

    Why it holds: per group, with X = X_r + D (both read on the thin side, as Newton–Schulz
    measures them; the Frobenius norm does not depend on the layout, so δ over the whole
    weight bounds every group's ‖D‖₂ <= ‖D‖_F):
        XᵀX − I = (X_rᵀX_r − I) + X_rᵀD + DᵀX_r + DᵀD,
    and ‖X_r‖₂ <= sqrt(1 + e_r) (all eigenvalues of X_rᵀX_r are <= 1 + e_r), so
        ‖XᵀX − I‖₂ <= e_r + 2 sqrt(1 + e_r) δ + δ².
    Rounding is accounted for, not estimated: δ is computed from float32 (or wider)
    differences fl(w − a) = (w − a)(1 + ε), squared and summed in float32 in chunks of at most
    CHUNK terms (any summation order errs by at most γ_(CHUNK) relatively on nonnegative terms;
    a float32 square underflows by at most 2⁻¹²⁶ each), the chunks in float64; the computed
    value is inflated by those worst cases. With gain != 1 the stored anchor is gain·X_r
    rounded, off by at most 3u‖X_r‖_F <= 3u sqrt(k (1 + e_r)) (k thin columns), added to δ.
    """
    anchor = state.anchor
    if anchor is None or anchor.shape != weight.shape or anchor.device != weight.device:
        return None
    diff = (weight.detach() - anchor).flatten()  # float32, or the weight's dtype if wider
    n = diff.numel()
    rows = max(n // CHUNK, 1)
    parts = [torch.linalg.vector_norm(diff[: rows * (n // rows)].view(rows, -1), dim=1)]
    if n % rows:
        parts.append(torch.linalg.vector_norm(diff[rows * (n // rows) :]).reshape(1))
    squares = float(torch.cat(parts).double().square().sum())
    chunk = n // rows + n % rows
    slack = 2 * (chunk + 8) * U32 + 1e-9  # every rounding above, relative (chunk * U32 <= 1/128)
    delta = math.sqrt(squares / (1 - slack) + n * 2.0**-126) / state.gain
    if state.gain != 1.0:
        g, m, k = state.layout.matrix_shape
        delta += 3 * U32 * math.sqrt(g * min(m, k) * (1 + state.anchor_error))
    e_r = state.anchor_error
    return e_r + 2 * math.sqrt(1 + e_r) * delta + delta**2


@torch.no_grad()
def retract_layer(module: nn.Module, certify: bool = False) -> float:
    """Retract one layer's weight now; returns the bound on its orthogonality error.

    ``certify`` (the optimizer-step hook): first try :func:`certified_bound`, and leave the
    weight as it is, with no Gram matrix, when that bound is within tol. Otherwise, and
    always without ``certify`` (``retract()``, a load, freeze), Newton–Schulz measures and
    retracts as it always did: a weight within tol is left unchanged, so freezing changes no
    output. :func:`_hopeful` says when the result becomes the next anchor. FSDP2
    (DTensor) weights keep no anchor and always retract: the bound would need the norm of
    the difference across all shards.
    """
    state: OrthogonalState = getattr(module, STATE)
    weight = module.weight
    sharded = isinstance(weight, DTensor)  # FSDP2: retract the whole matrix, write back each shard
    bound = certified_bound(state, weight) if certify and not sharded else None
    if bound is not None and bound <= state.tol:
        state.steps, state.skips, state.streak = 0, state.skips + 1, state.streak + 1
        state.drift = max(state.drift, bound)
        return bound

    def hopeful(before: float) -> bool:
        return not sharded and _hopeful(state, bound, before)

    full = weight.full_tensor() if sharded else weight
    mat = state.layout.to_matrix(full.float()) / state.gain
    mat, err, changed, before = _newton_schulz(mat, state.tol, aim=hopeful if certify else None)
    new = state.layout.from_matrix(mat * state.gain).contiguous() if changed else None  # float32
    if changed:
        weight.copy_(distribute_tensor(new.to(full.dtype), weight.device_mesh, weight.placements) if sharded else new)
    _set_anchor(state, weight, new, hopeful(before), err)
    state.steps, state.streak, state.retractions = 0, 0, state.retractions + 1
    state.drift = max(state.drift, before)
    return err


def _hopeful(state: OrthogonalState, bound: float | None, before: float) -> bool:
    """Whether the next interval could be certified: then this retraction keeps an anchor and
    (in an optimizer step) aims at tol * AIM; otherwise neither, and the step costs what it
    did before the skip existed.

    An anchor costs a float32 copy of the weight and an O(weights) pass per step; headroom
    costs a Newton–Schulz step. From an error near tol * AIM the next interval fits if the
    bound grows by at most ~tol per interval; asked is tol / 2, so that an aimed retraction
    buys at least one skipped Gram rather than a coin flip (measured: aiming at a growth of
    ~0.9 tol cost 7 % more than not). The growth per interval is the failed bound's increase
    over its anchor's error, per interval since the last Gram; without a bound (no anchor, an
    explicit retraction) it is guessed as twice the error measured now over the last
    retraction's (the bound's first-order term 2δ is ~1.4x the measured growth for a square
    layer; more for thin ones). A realistic learning rate fails both tests every step.
    """
    if bound is not None:
        growth = (bound - state.anchor_error) / (state.streak + 1)
    elif math.isinf(state.anchor_error):
        return False  # a fresh layer (or a copy): no growth seen yet; a copy of every weight at step 1 could OOM
    else:
        growth = 2 * max(before - state.anchor_error, 0.0)
    return growth <= state.tol / 2


def _set_anchor(state: OrthogonalState, weight: torch.Tensor, new: torch.Tensor | None, keep: bool, err: float) -> None:
    """The retracted weight (``new``, or the unchanged ``weight``) becomes the anchor if ``keep``."""
    anchor = state.anchor
    if not keep:
        state.anchor = None
    elif new is not None:
        state.anchor = new  # the float32 result of this retraction: a fresh tensor, not the weight's storage
    elif anchor is not None and anchor.shape == weight.shape and anchor.device == weight.device:
        anchor.copy_(weight)
    else:
        state.anchor = weight.detach().float().clone()
    state.anchor_error = err


def _retract_loaded(module: nn.Module, incompatible_keys: Any) -> None:
    """Load-state-dict post-hook: a loaded weight (an original checkpoint's, say) is retracted
    at once, the polar factor when it is far from orthogonal."""
    state = getattr(module, STATE, None)
    if state is not None and state.keep == "retraction":
        retract_layer(module)
        state.drift = 0.0  # a load is not training drift


def retract(model: nn.Module) -> int:
    """Retract every ``keep="retraction"`` layer of ``model`` now; returns how many there are.

    Optimizer steps retract by themselves (and loading a state_dict does); call this after
    changing a weight by other means (an in-place edit, a hand-written update without a
    torch.optim optimizer), or with ``every > 1`` before saving a checkpoint.
    """
    layers = [m for m in model.modules() if getattr(getattr(m, STATE, None), "keep", None) == "retraction"]
    for layer in layers:
        retract_layer(layer)
    return len(layers)


def retract_after(optimizer: torch.optim.Optimizer, model: nn.Module):
    """Retract ``model`` after every ``optimizer.step()``, whatever ``every`` says; returns the
    hook's removable handle. (Each step of a torch.optim optimizer retracts already.)"""
    return optimizer.register_step_post_hook(lambda opt, args, kwargs: retract(model))


def drift(model: nn.Module) -> float:
    """The largest orthogonality error bound (‖WᵀW − I‖₂, by Frobenius) any ``keep="retraction"``
    layer of ``model`` had when it was retracted, or the certified bound where a step skipped
    the Gram matrix: with ``every=k`` the error a forward may see between retractions (drift
    grows with the steps taken, so the end of each interval is its worst point); with
    ``every=1`` the drift of one optimizer step."""
    states = (getattr(m, STATE, None) for m in model.modules())
    return max((s.drift for s in states if s is not None and s.keep == "retraction"), default=0.0)


# ---- installing and baking ----------------------------------------------------------------


def keep_orthogonal(
    module: nn.Module,
    keep: str = "retraction",
    *,
    orthogonal_map: str = "auto",
    gain: float = 1.0,
    tol: float = DEFAULT_TOL,
    seed: int = 0,
    every: int = 1,
) -> OrthogonalState:
    """Install ``keep`` on ``module``, whose weight must already be gain x (semi-)orthogonal."""
    if not (isinstance(every, int) and every >= 1):
        raise UsageError(f"every must be a whole number of optimizer steps >= 1, got {every!r}")
    if keep not in KEEPS:
        raise UsageError(f"keep must be one of {KEEPS}, got {keep!r}")
    if orthogonal_map not in MAPS:
        raise UsageError(f"orthogonal_map must be one of {MAPS}, got {orthogonal_map!r}")
    layout = Layout.of(module)
    state = OrthogonalState(layout, keep, gain, tol)
    setattr(module, STATE, state)
    if keep == "retraction":
        state.every, state.module = every, module
        _Retraction.add(module)
        state.handles.append(module.register_load_state_dict_post_hook(_retract_loaded))
    elif keep == "rownorm":
        parametrize.register_parametrization(module, "weight", RowNorm(layout, gain))
    elif keep == "parametrization":
        register_orthogonal(module, layout, orthogonal_map, gain, seed)
    if parametrize.is_parametrized(module, "weight"):
        state.handles.append(module.register_load_state_dict_pre_hook(_load_plain_weight))
    return state


class ThinShell(nn.Module):
    """x -> x * sqrt(n) / ‖x‖ per sample (n features per sample, batch first): puts the
    input on the thin shell ‖x‖² = n that the BSNN theorems assume (research/bsnn.md §1.2).

    Written as x / sqrt(mean(x²)) so that torch.fx can trace it again. It is part of the
    function (kept by freeze).
    """

    vgp_pass = "orthogonal"

    def __init__(self, eps: float = 1e-12) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return (flat * flat.pow(2).mean(1, keepdim=True).clamp_min(self.eps).rsqrt()).reshape_as(x)
