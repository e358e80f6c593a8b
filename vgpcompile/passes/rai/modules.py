"""The module the ``rai`` pass inserts, one :class:`RAICut` per lifted boundary (children of
the root named ``rai_cut_<t>``, so a lifted model traced again keeps them), and the
functions that read them (``loss``, ``cuts``).

A cut sits on one value h_t = f_t(input) of the traced graph (a pre-activation or the
output logit) and owns the per-example table Z_t (``num_examples`` rows, one per training
example, each of h_t's per-example shape). Called as ``cut(h, idx)``:

- eval mode: returns h unchanged: the lifted model is the plain chained network;
- training mode: rows of ``idx`` never visited before are first set to h's rows (the
  chained forward value, so every local loss starts at exactly 0, as the reference's
  warm-up forward does for the full batch); then it returns Z_t[idx] to the next block
  and records the local loss lam_t * mean((Z_t[idx] - h)^2) (torch's mse_loss, the mean
  over the batch and the entries, as the reference's MSELoss). Gradients reach both
  arguments: the rows of Z_t, and through h the block's parameters and the previous cut's
  rows. No gradient path is longer than one block.

The table is read with ``F.embedding(..., sparse=True)`` by default, so its gradient is a
sparse tensor holding only the batch's rows, for ``torch.optim.SparseAdam`` (see
:mod:`.train` for why that optimiser). ``sparse=False`` gives a dense gradient that is
zero outside the batch, for full-batch training with any optimiser (the reference's Rprop).

Under ``torch.compile`` the training forward takes a traced path with the same values: the
lazy fill is a select on the seen-mask (no branch on data, no ``all_seen`` flag), and the
ids' range check is an in-graph assertion (``torch._assert_async``, a RuntimeError) instead of
the eager UsageError; both table forms (sparse and dense gradients) compile whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...core.lookup import set_plain
from ...errors import UsageError

PASS = "rai"


@dataclass
class Settings:
    """What every cut of one lifted model shares: the name of the ids input, and the
    training options that ``fit`` reads (pass options of the same names)."""

    idx_name: str = "idx"
    table_lr_scale: float = 1.0
    resync_every: int = 0
    lam_growth: float = 1.0
    # the ids tensor the first cut of the current forward validated, and its int64 form: the
    # other cuts of that forward skip the check and the conversion
    checked: Any = field(default=None, repr=False, compare=False)
    checked_ids: Any = field(default=None, repr=False, compare=False)


class RAICut(nn.Module):
    """One lifted boundary: the table Z (``num_examples`` x prod(shape)), its seen-mask and
    the weight ``lam`` of its local loss."""

    vgp_pass = PASS
    vgp_applied = (PASS,)
    vgp_depth = 0
    local: torch.Tensor | None  # set in __init__

    def __init__(
        self,
        num_examples: int,
        shape: tuple[int, ...],
        *,
        lam: float = 1.0,
        sparse: bool = True,
        label: str = "",
        position: int = 0,
        settings: Settings | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        # position: its rank among the model's cuts, in graph order; plain values set without
        # Module.__setattr__'s checks (one cut per site; core/lookup.py)
        set_plain(
            self, shape=tuple(int(s) for s in shape), label=label or "cut", position=position,
            settings=settings or Settings(), lam=float(lam), sparse=bool(sparse),
        )  # fmt: skip
        self.table = nn.Parameter(torch.zeros(num_examples, math.prod(self.shape), dtype=dtype, device=device))
        self.register_buffer("seen", torch.zeros(num_examples, dtype=torch.bool, device=device))
        # syncing: set by train.resync, eval forwards write the chained value into the rows;
        # all_seen: every row initialised, the lazy-init check can be skipped; copy_out: hand back a
        # copy of Z[idx] (the local loss keeps its own), unless the pass found that nothing
        # downstream works in place on it (``core.rewrite.mutation_free``); local: lam * mse of the
        # last training forward
        set_plain(self, syncing=False, all_seen=False, copy_out=True, local=None)

    @property
    def num_examples(self) -> int:
        return self.table.shape[0]

    def __getstate__(self) -> dict:
        # the recorded loss holds an autograd graph, which neither deepcopy nor pickle takes
        return {**super().__getstate__(), "local": None}

    def forward(self, h: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        if not self.training:
            self.local = None
            if self.syncing and idx is not None:
                self._write(self._check(h, idx), h, everywhere=True)
            return h
        if idx is None:
            raise UsageError(
                f"rai cut at {self.label!r}: in training mode the lifted model takes (x, idx), idx being the "
                f"batch's example ids in [0, {self.num_examples}); call model.eval() for the plain chained network"
            )
        if torch.compiler.is_compiling():
            idx = self._traced_ids(h, idx)
            self._fill(idx, h)
        else:
            shared = self.settings
            if idx is shared.checked and h.shape[1:] == self.shape and h.shape[0] == idx.shape[0]:
                idx = shared.checked_ids  # validated by an earlier cut of this forward
            else:
                idx = self._check(h, idx)
            if not self.all_seen:
                self._write(idx, h, everywhere=False)
        z = F.embedding(idx, self.table, sparse=self.sparse).view(h.shape)
        local = F.mse_loss(z, h)
        self.local = local if self.lam == 1.0 else self.lam * local  # one kernel less per cut and step
        # a block downstream that works in place on what it gets would break the loss's saved z
        return z.clone() if self.copy_out else z

    def _traced_ids(self, h: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``_check`` as ``torch.compile`` traces it: no branch on tensor data and no Python state
        that changes between forwards (the ids cache: a guard that would fail and recompile
        every step); out-of-range ids stop the graph with a RuntimeError of the same message."""
        idx = self._check_shapes(h, torch.as_tensor(idx, device=self.table.device))
        torch._assert_async(
            ((idx >= 0) & (idx < self.num_examples)).all(),
            f"rai cut at {self.label!r}: idx holds ids outside [0, {self.num_examples}) "
            "(option 'num_examples' of pass 'rai')",
        )
        return idx.long()

    @torch.no_grad()
    def _fill(self, idx: torch.Tensor, h: torch.Tensor) -> None:
        """``_write(idx, h, everywhere=False)`` without a branch on data, for torch.compile: unseen
        rows of ``idx`` := h's rows, seen rows written back unchanged (the seen-mask as a select).
        It runs every forward (``all_seen`` is not read: it would be a guard that flips once)."""
        values = h.detach().reshape(h.shape[0], -1).to(self.table.dtype)
        fresh = ~self.seen[idx]
        self.table.index_put_((idx,), torch.where(fresh.unsqueeze(1), values, self.table[idx]))
        self.seen.index_fill_(0, idx, True)

    def _check_shapes(self, h: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8) or idx.dim() != 1:
            raise UsageError(f"rai cut at {self.label!r}: idx must be a 1-D integer tensor of example ids")
        if tuple(h.shape[1:]) != self.shape:
            raise UsageError(
                f"rai cut at {self.label!r}: the value here has per-example shape {tuple(h.shape[1:])}, the table "
                f"was built for {self.shape}; compile with example_inputs= (or option 'shapes' of pass 'rai')"
            )
        if h.shape[0] != idx.shape[0]:
            raise UsageError(f"rai cut at {self.label!r}: idx has {idx.shape[0]} ids for a batch of {h.shape[0]}")
        return idx

    def _check(self, h: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        idx = self._check_shapes(h, torch.as_tensor(idx, device=self.table.device))
        if idx is not self.settings.checked:
            if idx.numel() and bool(((idx < 0) | (idx >= self.num_examples)).any()):
                raise UsageError(
                    f"rai cut at {self.label!r}: idx holds ids outside [0, {self.num_examples}) "
                    "(option 'num_examples' of pass 'rai')"
                )
            self.settings.checked, self.settings.checked_ids = idx, idx.long()
        return idx.long()

    @torch.no_grad()
    def _write(self, idx: torch.Tensor, h: torch.Tensor, everywhere: bool) -> None:
        """Rows ``idx`` := h's rows: only the unseen ones (lazy init), or all (re-sync)."""
        values = h.detach().reshape(h.shape[0], -1).to(self.table.dtype)
        if not everywhere:
            fresh = ~self.seen[idx]
            idx, values = idx[fresh], values[fresh]
        if idx.numel():
            self.table[idx] = values
            self.seen[idx] = True
        self.all_seen = bool(self.seen.all())

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.all_seen = False  # the loaded seen-mask decides again

    def extra_repr(self) -> str:
        kind = "sparse" if self.sparse else "dense"
        return f"{self.label}: Z {self.num_examples} x {self.shape}, lam={self.lam:g}, {kind} gradient"


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel / DataParallel wrapper."""
    return (
        getattr(model, "module", model)
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel))
        else model
    )


def cuts(model: nn.Module) -> list[RAICut]:
    """The cuts of a lifted model, in graph order (a UsageError when it was not lifted)."""
    found = [m for m in unwrap(model).modules() if isinstance(m, RAICut)]
    if not found:
        raise UsageError("this model was not lifted by the 'rai' pass (no rai cuts found)")
    return sorted(found, key=lambda c: c.position)


def settings(model: nn.Module) -> Settings:
    """The lifted model's training options (the pass options ``fit`` reads)."""
    return cuts(model)[0].settings


def loss(model: nn.Module) -> torch.Tensor:
    """Sum of the local losses lam_t * mean((Z_t[idx] - f_t(input))^2) recorded by the
    lifted model's last training forward; add it to the task loss on the lifted output."""
    found = cuts(model)
    if any(c.local is None for c in found):
        raise UsageError(
            "rai.loss: no local losses recorded; call the lifted model in training mode with (x, idx) first"
        )
    return torch.stack([c.local for c in found]).sum()


def local_losses(model: nn.Module) -> dict[str, float]:
    """Each cut's last local loss (lam included), by cut label: a diagnostic."""
    return {c.label: float(c.local) for c in cuts(model) if c.local is not None}
