"""Runtime pieces of the ``roaf`` pass (Ceni: random orthogonal additive filters,
research/roaf.md), usable by hand as well.

- :func:`haar_orthogonal`: a Haar-random orthogonal matrix drawn from a seed.
- :class:`ROAFFilter`: ``h = alpha * O x + beta * y`` for a block ``y = phi(W x + b)``.
  The pass leaves the block's affine layer and activation as they are (their parameter
  names, and what other passes do to them) and sends ``y`` and ``x`` through the filter.
  Linear blocks mix the last dimension, ``x @ O.T``; convolution blocks mix channels, a
  1x1 convolution with kernel ``O``.
- :class:`ROAFHadamard`: a structured orthogonal O (a Kronecker product of sign-randomized
  normalized Hadamard matrices), O(n log n) to apply, for ``filter="hadamard"``.
- :class:`ROAFRNN`: ``nn.RNN``'s parameters (same names) and call signature with the state
  update ``h_t = alpha * O h_{t-1} + beta * phi(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``,
  one ``O`` per layer. With ``alpha = 0, beta = 1`` it is ``nn.RNN``.

``O`` lives in a :class:`ROAFMatrix` child as a non-persistent buffer: never trained, not
in the state_dict (an original checkpoint loads strictly, a checkpoint does not grow by n²
per block), drawn again from its seed whenever the module is built, which is what
``vgpcompile.load`` does. Filters that share O share the ROAFMatrix module itself, so
``.to(device)`` and ``.double()`` convert the one matrix once and it stays shared (a tensor
registered as a buffer of many modules would be copied once per module).
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from ...core.lookup import set_plain
from ...errors import UsageError

_CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
FILTERS = ("haar", "hadamard")


def seed_for(seed: int, key: str) -> int:
    """A generator seed for the matrix named ``key``: independent of the order of the draws."""
    return zlib.crc32(f"{seed}:{key}".encode())


def haar_orthogonal(
    n: int, seed: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """An n x n Haar-random orthogonal matrix from ``torch.Generator().manual_seed(seed)``.

    Drawn in float64 on the CPU whatever the target, so the same seed gives the same matrix
    on every device; QR alone is not Haar, the sign fix diag(R) > 0 makes it so (Mezzadri 2007).
    """
    z = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q, r = torch.linalg.qr(z)
    q = q * torch.diagonal(r).sign()
    return q.to(dtype=dtype, device=device)


def check_mix(alpha: float, beta: float, where: str = "roaf") -> tuple[float, float]:
    """(alpha, beta) as floats, or a UsageError: beta > 0 and alpha >= 0, both finite."""
    alpha, beta = float(alpha), float(beta)
    if not (math.isfinite(beta) and beta > 0):
        raise UsageError(f"{where}: beta must be a positive finite number, got {beta!r}")
    if not (math.isfinite(alpha) and alpha >= 0):
        raise UsageError(f"{where}: alpha must be a finite number >= 0, got {alpha!r}")
    return alpha, beta


class ROAFMatrix(nn.Module):
    """Holds one fixed matrix ``O`` (a non-persistent buffer); shared by reference when shared."""

    def __init__(self, O: torch.Tensor) -> None:  # noqa: E741  (the paper's name)
        super().__init__()
        if O.dim() != 2 or O.shape[0] != O.shape[1]:
            raise UsageError(f"ROAFMatrix: O must be a square matrix, got shape {tuple(O.shape)}")
        self.register_buffer("O", O, persistent=False)

    def extra_repr(self) -> str:
        return f"{self.O.shape[0]}x{self.O.shape[1]}"


def as_matrix(O: torch.Tensor | ROAFMatrix, n: int, where: str) -> ROAFMatrix:  # noqa: E741
    """``O`` as a ROAFMatrix of n x n (a given ROAFMatrix is used as is, to share it)."""
    m = O if isinstance(O, ROAFMatrix) else ROAFMatrix(O)
    if tuple(m.O.shape) != (n, n):
        raise UsageError(f"{where}: O must be {n}x{n}, got {tuple(m.O.shape)}")
    return m


MAX_RADIX_BITS = 5  # Hadamard factors of at most 32 x 32: one small matmul per factor
# below this width the factors' small matmuls cost more than one dense n x n matmul with the same O
# (step / plain, depth-20 tanh MLP, one thread: 64/32 factors 1.98 vs dense 1.43, 128/32 1.67 vs
# 1.40, 128/128 1.84 vs 1.57; 256/32 1.37 vs 1.47)
DENSE_BELOW = 256


def hadamard_radices(n: int) -> tuple[int, ...]:
    """The factor sizes of n = 2^k * m (m odd): k bits split evenly over ceil(k / 5) powers of
    two of at most 32, then m itself when m > 1 (a dense Haar factor: cheap when m is small)."""
    k, m = (n & -n).bit_length() - 1, n // (n & -n)
    stages = -(-k // MAX_RADIX_BITS)
    bits = [k // stages + (1 if i < k % stages else 0) for i in range(stages)] if stages else []
    return (*(2**b for b in bits), *((m,) if m > 1 else ()))


def hadamard_factors(n: int, seed: int, dtype: torch.dtype = torch.float32, device=None) -> list[torch.Tensor]:
    """Orthogonal factors F_j (r_j x r_j) with n = prod r_j: normalized Sylvester Hadamard
    matrices with random column signs, H_r diag(d_j) / sqrt(r), and a Haar matrix for the odd
    part of n; their Kronecker product is orthogonal."""
    factors = []
    for j, r in enumerate(hadamard_radices(n)):
        if r & (r - 1):  # the odd part
            factors.append(haar_orthogonal(r, seed_for(seed, f"odd{j}"), torch.float64))
            continue
        h = torch.ones(1, 1, dtype=torch.float64)
        while h.shape[0] < r:
            h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
        gen = torch.Generator().manual_seed(seed_for(seed, f"signs{j}"))
        signs = torch.randint(0, 2, (r,), generator=gen).double() * 2 - 1
        factors.append(h * signs / math.sqrt(r))
    return [f.to(dtype=dtype, device=device) for f in factors]


class ROAFHadamard(nn.Module):
    """A structured orthogonal O = F_1 ⊗ ... ⊗ F_t, F_j = H_r diag(d_j) / sqrt(r): a randomized
    Hadamard transform H diag(d) whose sign pattern d = d_1 ⊗ ... ⊗ d_t is drawn per factor
    (so the signs live in the factors and cost no separate multiply), with factors of at
    most 32 x 32 (a Haar factor for the odd part of n). Applying it costs n · sum(r_j)
    multiply-adds per vector, O(n log n) for a power of two (256: 16 + 16 = 32 per feature,
    against 256 for a dense O), and it is exactly orthogonal: each factor is, and so is a
    Kronecker product of orthogonal matrices. The factors are non-persistent buffers, drawn
    again from the seed. Below ``DENSE_BELOW`` features it applies the same O as one dense
    matrix (their product, a non-persistent buffer too), which measured cheaper there."""

    def __init__(self, n: int, seed: int, dtype: torch.dtype = torch.float32, device=None) -> None:
        super().__init__()
        self.n = int(n)
        self.radices = hadamard_radices(self.n)
        for j, f in enumerate(hadamard_factors(self.n, seed, dtype, device)):
            self.register_buffer(f"factor{j}", f, persistent=False)
        if not self.radices:  # n = 1: O = [1]
            self.register_buffer("factor0", torch.ones(1, 1, dtype=dtype, device=device), persistent=False)
            self.radices = (1,)
        if self.n < DENSE_BELOW:
            self.register_buffer("product", self.dense(), persistent=False)

    @property
    def factors(self) -> list[torch.Tensor]:
        return [getattr(self, f"factor{j}") for j in range(len(self.radices))]

    def mix(
        self, x: torch.Tensor, trailing: int, y: torch.Tensor | None = None, beta: float = 1.0, alpha: float = 1.0
    ) -> torch.Tensor:
        """alpha * O applied to the (lead, n, trailing) view of ``x``, plus ``beta * y`` when
        given: factor j mixes axis j of the (lead, r_1, ..., r_t, trailing) view. With
        trailing 1 (a Linear block) the last factor is one matmul over every row, fused
        with alpha and the add (addmm); otherwise alpha scales the first factor. Below
        ``DENSE_BELOW`` features: the factors' product, one matmul (the same O)."""
        # a Linear block's 2-D rows come back as (-1, n): a constant shape, where x.shape would
        # export as Shape/Gather/Unsqueeze/Concat nodes per filter (onnxruntime runs each)
        shape = (-1, self.n) if x.dim() == 2 and trailing == 1 else x.shape
        if "product" in self._buffers:
            return self._dense_mix(x, trailing, y, beta, alpha, shape)
        return self._factored_mix(x, trailing, y, beta, alpha, shape)

    def _factored_mix(self, x, trailing, y, beta, alpha, shape) -> torch.Tensor:  # noqa: ANN001
        inner = self.n * trailing
        last = len(self.radices) - 1 if trailing == 1 else None
        buffers = self._buffers  # not self.factors: nn.Module.__getattr__ per factor costs µs per call
        for j, r in enumerate(self.radices):
            f = buffers[f"factor{j}"]
            inner //= r
            if j == last:
                rows = x.reshape(-1, r)
                if y is None:
                    return (rows @ f.T).mul(alpha).reshape(shape)
                return torch.addmm(y.reshape(-1, r), rows, f.T, beta=beta, alpha=alpha).reshape(shape)
            x = torch.matmul(f * alpha if j == 0 and last is None else f, x.reshape(-1, r, inner))
        x = x.reshape(shape)
        return x if y is None else torch.add(x, y, alpha=beta)

    def _dense_mix(self, x, trailing, y, beta, alpha, shape) -> torch.Tensor:  # noqa: ANN001
        o = self._buffers["product"]
        if trailing == 1 and x.dim() == 2 and y is not None and y.dim() == 2:  # rows already: no view nodes
            return torch.addmm(y, x, o.T, beta=beta, alpha=alpha)
        if trailing == 1:
            rows = x.reshape(-1, self.n)
            if y is None:
                return (rows @ o.T).mul(alpha).reshape(shape)
            return torch.addmm(y.reshape(-1, self.n), rows, o.T, beta=beta, alpha=alpha).reshape(shape)
        x = torch.matmul(o * alpha, x.reshape(-1, self.n, trailing)).reshape(shape)
        return x if y is None else torch.add(x, y, alpha=beta)

    def dense(self) -> torch.Tensor:
        """O as an n x n matrix (tests, range inference), from the factors: row i of the
        identity maps to column i."""
        eye = torch.eye(self.n, dtype=self.factor0.dtype, device=self.factor0.device)
        return self._factored_mix(eye, 1, None, 1.0, 1.0, (-1, self.n)).T

    def extra_repr(self) -> str:
        dense = ", applied as one matrix" if "product" in self._buffers else ""
        return f"{self.n}, factors {' x '.join(map(str, self.radices))}{dense}"


class ROAFFilter(nn.Module):
    """``forward(y, x) = alpha * O x + beta * y``: the additive orthogonal filter of one block.

    ``features``: the size of the mixed dimension (a Linear's width, a convolution's
    channels). ``spatial``: 0 for a Linear block (O acts on the last dimension), 1, 2 or 3
    for a Conv1d/2d/3d block (O acts on dimension 1, at every position). ``O``: the matrix,
    or a :class:`ROAFMatrix` to share with other filters; None draws one from ``seed``.
    """

    vgp_pass = "roaf"
    vgp_applied = ("roaf",)
    vgp_depth = 0  # linear: the block's activation is counted where it is

    def __init__(
        self,
        features: int,
        *,
        alpha: float,
        beta: float,
        spatial: int = 0,
        O: torch.Tensor | ROAFMatrix | ROAFHadamard | None = None,  # noqa: E741  (the paper's name)
        seed: int = 0,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        filter: str = "haar",
    ) -> None:
        super().__init__()
        alpha, beta = check_mix(alpha, beta, "ROAFFilter")
        if spatial not in (0, *_CONVS):
            raise UsageError(f"ROAFFilter: spatial must be 0 (Linear) or 1, 2, 3 (ConvNd), got {spatial!r}")
        if filter not in FILTERS:
            raise UsageError(f"ROAFFilter: filter must be one of {FILTERS}, got {filter!r}")
        # one filter per block: plain values set without Module.__setattr__'s checks (core/lookup.py)
        set_plain(self, alpha=alpha, beta=beta, features=int(features), spatial=int(spatial))
        if O is None and filter == "hadamard":
            O = ROAFHadamard(self.features, seed_for(seed, "filter"), dtype or torch.float32, device)  # noqa: E741
        elif O is None:
            O = haar_orthogonal(self.features, seed_for(seed, "filter"), dtype or torch.float32, device)  # noqa: E741
        if isinstance(O, ROAFHadamard):
            if O.n != self.features:
                raise UsageError(f"ROAFFilter: O must be {self.features}x{self.features}, got {O.n}x{O.n}")
            self.matrix = O
        else:
            self.matrix = as_matrix(O, self.features, "ROAFFilter")

    @property
    def structured(self) -> bool:
        return isinstance(self.matrix, ROAFHadamard)

    @property
    def O(self) -> torch.Tensor:  # noqa: E743
        """The n x n matrix (computed from the factors for a structured filter)."""
        return self.matrix.dense() if self.structured else self.matrix.O

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.structured:  # the factors, one matmul each; alpha and the add ride on them
            trailing = math.prod(x.shape[2:]) if self.spatial else 1
            return self.matrix.mix(x, trailing, y, self.beta, self.alpha)
        if self.spatial:
            kernel = (self.O * self.alpha).reshape(self.features, self.features, *(1,) * self.spatial)
            return torch.add(_CONVS[self.spatial](x, kernel), y, alpha=self.beta)
        if x.dim() == 2:  # one fused kernel: beta * y + alpha * x @ O.T
            return torch.addmm(y, x, self.O.t(), beta=self.beta, alpha=self.alpha)
        n = self.features
        out = torch.addmm(y.reshape(-1, n), x.reshape(-1, n), self.O.t(), beta=self.beta, alpha=self.alpha)
        return out.reshape(y.shape)

    def vgp_output_range(self, y_range=None, x_range=None) -> tuple[float, float] | str:
        """The exact worst case over boxes: coordinate i of O x lies in
        c * sum_j O_ij -/+ r * sum_j |O_ij| for x in [c - r, c + r]^n. It grows by up to
        sqrt(n) per block (the max row 1-norm of O), so deep chains widen fast."""
        if y_range is None or x_range is None:
            return "the output of a roaf filter whose inputs' ranges are unknown"
        (ylo, yhi), (xlo, xhi) = y_range, x_range
        rows, spread = self._row_sums()
        c, r = (xlo + xhi) / 2, (xhi - xlo) / 2
        lo = self.alpha * float((c * rows - r * spread).min()) + self.beta * ylo
        hi = self.alpha * float((c * rows + r * spread).max()) + self.beta * yhi
        return lo, hi

    def _row_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """(sum_j O_ij, sum_j |O_ij|) in float64, kept while O is unchanged: range inference
        asks once per later block (numpy: small-vector arithmetic without tensor overhead)."""
        source = self.matrix.factor0 if self.structured else self.matrix.O
        key = (source.data_ptr(), source._version)
        if getattr(self, "_sums_key", None) != key:
            o = self.O.detach().double().cpu().numpy()
            self._sums, self._sums_key = (o.sum(1), np.abs(o).sum(1)), key
        return self._sums

    def fold(self) -> nn.Module:
        """The filter is part of the function (one matmul-add), not a training device: it stays."""
        return self

    def extra_repr(self) -> str:
        on = "channels" if self.spatial else "features"
        kind = ", hadamard" if self.structured else ""
        return f"{self.features} {on}{kind}, alpha={self.alpha:g}, beta={self.beta:g}"


class ROAFRNN(nn.Module):
    """``nn.RNN`` with a random orthogonal additive filter on the state (research/roaf.md §3.2)::

        h_t = alpha * O_l h_{t-1} + beta * phi(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)

    Same constructor arguments, parameter names (``weight_ih_l0``, ``bias_hh_l1``, ...),
    initialisation, inputs (batched or not, ``batch_first``, ``h0``) and outputs
    ``(output, h_n)`` as ``nn.RNN``; inter-layer ``dropout`` as torch's. Not supported:
    ``bidirectional`` and PackedSequence inputs. ``alpha`` defaults to ``1 - beta``.

    The unrolled depth is the sequence length, so beta should be about c / horizon for a
    horizon of ``horizon`` steps (the roaf pass's rule): the gradient over T steps shrinks
    like exp(-c T / horizon).

    The time loop is Python; each step is ``addmm(phi(addmm(u_t, h, W_hh^T)), h, O^T,
    beta=beta, alpha=alpha)``: the plain Elman step plus one fused matmul-add. ONNX export
    unrolls it at the example's sequence length.
    """

    vgp_pass = "roaf"
    vgp_applied = ("roaf",)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        *,
        beta: float = 0.01,
        alpha: float | None = None,
        seed: int = 0,
        O: list[torch.Tensor | ROAFMatrix] | None = None,  # noqa: E741
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if nonlinearity not in ("tanh", "relu"):
            raise UsageError(f"ROAFRNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        if num_layers < 1 or not 0 <= dropout <= 1:
            raise UsageError(f"ROAFRNN: needs num_layers >= 1 and dropout in [0, 1], got {num_layers}, {dropout}")
        self.alpha, self.beta = check_mix(1.0 - beta if alpha is None else alpha, beta, "ROAFRNN")
        self.input_size, self.hidden_size, self.num_layers = int(input_size), int(hidden_size), int(num_layers)
        self.nonlinearity, self.bias, self.batch_first, self.dropout = (
            nonlinearity,
            bool(bias),
            bool(batch_first),
            dropout,
        )
        factory = {"device": device, "dtype": dtype}
        for k in range(self.num_layers):
            fan_in = self.input_size if k == 0 else self.hidden_size
            self.register_parameter(f"weight_ih_l{k}", nn.Parameter(torch.empty(hidden_size, fan_in, **factory)))
            self.register_parameter(f"weight_hh_l{k}", nn.Parameter(torch.empty(hidden_size, hidden_size, **factory)))
            if self.bias:
                self.register_parameter(f"bias_ih_l{k}", nn.Parameter(torch.empty(hidden_size, **factory)))
                self.register_parameter(f"bias_hh_l{k}", nn.Parameter(torch.empty(hidden_size, **factory)))
        if O is None:
            O = [  # noqa: E741
                haar_orthogonal(hidden_size, seed_for(seed, f"l{k}"), dtype or torch.float32, device)
                for k in range(self.num_layers)
            ]
        if len(O) != self.num_layers:
            raise UsageError(f"ROAFRNN: O must be {self.num_layers} matrices (one per layer), got {len(O)}")
        self.matrices = nn.ModuleList(as_matrix(m, self.hidden_size, "ROAFRNN") for m in O)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's RNN initialisation: every weight and bias uniform in +-1/sqrt(hidden_size)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    @classmethod
    def from_rnn(
        cls,
        rnn: nn.RNN,
        *,
        beta: float,
        alpha: float | None = None,
        seed: int = 0,
        O: list[torch.Tensor | ROAFMatrix] | None = None,  # noqa: E741
    ) -> ROAFRNN:
        """A ROAF RNN sharing ``rnn``'s parameter objects (no copy, same names)."""
        if rnn.bidirectional or getattr(rnn, "proj_size", 0):
            raise UsageError("ROAFRNN: bidirectional RNNs are not supported")
        weight = rnn.weight_hh_l0
        if O is None:
            O = [  # noqa: E741
                haar_orthogonal(rnn.hidden_size, seed_for(seed, f"l{k}"), weight.dtype, weight.device)
                for k in range(rnn.num_layers)
            ]
        new = cls(
            rnn.input_size, rnn.hidden_size, rnn.num_layers, rnn.nonlinearity, rnn.bias, rnn.batch_first,
            rnn.dropout, beta=beta, alpha=alpha, O=O, device="meta", dtype=weight.dtype,
        )  # fmt: skip
        for name, _ in list(new.named_parameters()):
            setattr(new, name, getattr(rnn, name))
        return new.train(rnn.training)

    def layer_weights(self, k: int) -> tuple[torch.Tensor, ...]:
        """(W_ih, W_hh, b_ih, b_hh, O) of layer ``k`` (biases None without bias)."""
        get = lambda n: getattr(self, f"{n}_l{k}", None)
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"), self.matrices[k].O

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(input, PackedSequence):
            raise UsageError("ROAFRNN takes padded tensors, not a PackedSequence (pad it and pass h0 if needed)")
        if input.dim() not in (2, 3):
            raise UsageError(f"ROAFRNN expects a 2-D (unbatched) or 3-D input, got shape {tuple(input.shape)}")
        batched = input.dim() == 3
        x = input.transpose(0, 1) if batched and self.batch_first else input  # time-major from here on
        if not batched:
            x = x.unsqueeze(1)
        h0 = self._initial_state(x, hx, batched)
        phi = torch.tanh if self.nonlinearity == "tanh" else torch.relu
        finals = []
        for k in range(self.num_layers):
            x, h = self._layer(x, h0[k], k, phi)
            finals.append(h)
            if self.dropout and self.training and k < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
        out, h_n = x, torch.stack(finals)
        if batched and self.batch_first:
            out = out.transpose(0, 1)
        if not batched:
            out, h_n = out.squeeze(1), h_n.squeeze(1)
        return out, h_n

    def _initial_state(self, x: torch.Tensor, hx: torch.Tensor | None, batched: bool) -> torch.Tensor:
        shape = (self.num_layers, x.shape[1], self.hidden_size)
        if hx is None:
            return x.new_zeros(shape)
        h0 = hx if batched else hx.unsqueeze(1)
        if tuple(h0.shape) != shape:
            want = shape if batched else (self.num_layers, self.hidden_size)
            raise UsageError(f"ROAFRNN: expected hidden state of shape {want}, got {tuple(hx.shape)}")
        return h0

    def _layer(self, x: torch.Tensor, h: torch.Tensor, k: int, phi) -> tuple[torch.Tensor, torch.Tensor]:
        w_ih, w_hh, b_ih, b_hh, o = self.layer_weights(k)
        u = F.linear(x, w_ih, None if b_ih is None else b_ih + b_hh)  # every step's input term at once
        w_hh_t, o_t = w_hh.t(), o.t()
        outs = []
        # unbind, not u[t]: one backward node for all steps (indexing would write a zero-filled
        # copy of u per step in backward, quadratic in T); two addmm per step, no slicing
        for u_t in u.unbind(0):
            h = torch.addmm(phi(torch.addmm(u_t, h, w_hh_t)), h, o_t, beta=self.beta, alpha=self.alpha)
            outs.append(h)
        return torch.stack(outs), h

    def vgp_output_range(self, input_range=None) -> tuple[float, float] | None:
        """For a tanh RNN started from h0 = 0 (or ||h0||_2 within the bound): ||h_t||_2 <=
        alpha ||h_{t-1}||_2 + beta sqrt(n) gives |h_t,i| <= sqrt(n) beta / (1 - alpha), and
        |h_t,i| <= alpha ||O_i||_1 max|h_{t-1}| + beta gives beta / (1 - alpha max ||O_i||_1)
        when that is positive; the smaller holds. A relu state is unbounded."""
        if self.nonlinearity != "tanh":
            return None
        bounds = []
        if self.alpha < 1:
            bounds.append(math.sqrt(self.hidden_size) * self.beta / (1 - self.alpha))
        spread = max(float(self.layer_weights(k)[4].detach().abs().sum(1).max()) for k in range(self.num_layers))
        if self.alpha * spread < 1:
            bounds.append(self.beta / (1 - self.alpha * spread))
        if not bounds:
            return None
        return -min(bounds), min(bounds)

    def fold(self) -> nn.Module:
        """Itself (the filter is part of the function); ``nn.RNN`` on the same parameters when
        alpha = 0 and beta = 1, where the two are the same function."""
        if self.alpha != 0 or self.beta != 1:
            return self
        plain = nn.RNN(
            self.input_size, self.hidden_size, self.num_layers, self.nonlinearity, self.bias, self.batch_first,
            self.dropout, device="meta", dtype=self.weight_hh_l0.dtype,
        )  # fmt: skip
        for name, p in self.named_parameters():
            setattr(plain, name, p)
        plain._init_flat_weights()
        return plain.train(self.training)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, nonlinearity={self.nonlinearity!r}"
        s += "" if self.bias else ", bias=False"
        s += ", batch_first=True" if self.batch_first else ""
        s += f", dropout={self.dropout}" if self.dropout else ""
        return s + f", alpha={self.alpha:g}, beta={self.beta:g}"
