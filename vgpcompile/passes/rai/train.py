"""Training a lifted model: ``fit``, the optimisers, re-synchronisation, growing lam, DDP.

Why ``torch.optim.SparseAdam`` for the tables: a row of Z_t is visited once per epoch, so
its optimiser must be lazy: moments and step only for the rows in the batch, every other
row bitwise unchanged. A dense Adam would keep moving unvisited rows with their stale
momentum (research/rai.md §8.1). SparseAdam is exactly the lazy Adam (it updates the
moments only at the indices of the sparse gradient), it is part of torch, and the cut's
``F.embedding(..., sparse=True)`` read gives it the gradient it expects at no extra cost.
With ``sparse=False`` (full batch, the reference's setting) the tables join the weight
optimiser: their dense gradient is zero outside the batch, which Rprop (sign-based) turns
into a zero step, but Adam would not.

A small lifted loss does not mean a working chained network (research/rai.md §5): ``fit``
logs both, the lifted loss (task loss on the lifted output + local losses) and the
chained network's loss and accuracy, on the training data and optionally on test data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UsageError
from .modules import RAICut, cuts, loss, settings, unwrap

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OPTIMIZERS = {"adam": torch.optim.Adam, "rprop": torch.optim.Rprop, "sgd": torch.optim.SGD}


@dataclass
class Record:
    """One logged epoch. ``lifted`` = task loss on the lifted output + local losses, and
    ``violation`` = max over cuts of the mean squared gap (lam excluded), both averaged over
    the epoch's batches; ``chained_*`` / ``test_*``: the plain chained network (eval mode)."""

    epoch: int
    steps: int
    lifted: float
    task: float
    local: float
    violation: float
    chained_loss: float
    chained_acc: float
    test_loss: float = math.nan
    test_acc: float = math.nan
    lam: float = math.nan
    seconds: float = 0.0

    def line(self) -> str:
        test = f"  test loss {self.test_loss:.4f} acc {self.test_acc:.3f}" if not math.isnan(self.test_loss) else ""
        return (
            f"epoch {self.epoch:5d}  lifted {self.lifted:.5f} (task {self.task:.5f}, local {self.local:.5f}, "
            f"max gap {self.violation:.2e})  chained loss {self.chained_loss:.4f} acc {self.chained_acc:.3f}{test}"
        )


@dataclass
class History:
    records: list[Record] = field(default_factory=list)

    @property
    def final(self) -> Record:
        return self.records[-1]

    def to_dicts(self) -> list[dict]:
        return [asdict(r) for r in self.records]


def default_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """BCE on logits for one output column (the reference's sigmoid + BCE), else cross-entropy."""
    if out.dim() == 1 or out.shape[-1] == 1:
        return F.binary_cross_entropy_with_logits(out, y.reshape(out.shape).to(out.dtype))
    return F.cross_entropy(out, y.long())


def accuracy(out: torch.Tensor, y: torch.Tensor) -> float:
    if out.dim() == 1 or out.shape[-1] == 1:
        return float(((out.reshape(-1) > 0) == (y.reshape(-1) > 0.5)).float().mean())
    return float((out.argmax(-1) == y.reshape(-1).long()).float().mean())


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn = default_loss, batch_size: int = 4096
) -> tuple[float, float]:
    """(loss, accuracy) of the plain chained network (eval mode) on (x, y); the mode is restored."""
    was = model.training
    model.eval()
    try:
        out = torch.cat([model(chunk) for chunk in x.split(batch_size)])
    finally:
        model.train(was)
    return float(loss_fn(out, y)), accuracy(out, y)


@torch.no_grad()
def resync(model: nn.Module, x: torch.Tensor, ids: torch.Tensor | None = None, batch_size: int = 4096) -> None:
    """Overwrite the rows ``ids`` (default: all, x[i] being example i) of every table with
    the chained network's values (eval mode), in place, so optimisers keep tracking the
    tables: every local loss is 0 again on those rows."""
    inner = unwrap(model)
    ids = torch.arange(len(x)) if ids is None else torch.as_tensor(ids)
    found = cuts(inner)
    was = inner.training
    inner.eval()
    for cut in found:
        cut.syncing = True
    try:
        for chunk, rows in zip(x.split(batch_size), ids.split(batch_size)):
            inner(chunk, rows.to(chunk.device))
    finally:
        for cut in found:
            cut.syncing = False
        inner.train(was)


def grow_lam(model: nn.Module, factor: float) -> float:
    """Multiply every cut's lam by ``factor``; return the new lam of the first cut."""
    found = cuts(model)
    for cut in found:
        cut.lam *= factor
    return found[0].lam


def weight_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters of a lifted model that are not tables."""
    skip = {id(c.table) for c in cuts(model)}
    return [p for p in unwrap(model).parameters() if p.requires_grad and id(p) not in skip]


def optimizers(
    model: nn.Module, optimizer: str | Callable = "adam", lr: float = 1e-3, table_lr: float | None = None
) -> list[torch.optim.Optimizer]:
    """The optimisers ``fit`` uses: ``optimizer`` ("adam", "rprop", "sgd", or a callable
    ``(param_groups, lr) -> Optimizer``) for the weights; the tables (learning rate
    ``table_lr``, default lr x the pass option ``table_lr_scale``) in a SparseAdam when their
    gradients are sparse, else in the weights' optimiser as a second parameter group."""
    found = cuts(model)
    table_lr = lr * settings(model).table_lr_scale if table_lr is None else table_lr
    make = OPTIMIZERS.get(optimizer) if isinstance(optimizer, str) else optimizer
    if make is None:
        raise UsageError(f"rai.fit: unknown optimizer {optimizer!r}; use one of {sorted(OPTIMIZERS)} or a callable")
    sparse = [c.table for c in found if c.sparse]
    dense = [c.table for c in found if not c.sparse]
    groups = [{"params": weight_parameters(model), "lr": lr}]
    if dense:
        groups.append({"params": dense, "lr": table_lr})
    # foreach: one fused call per step instead of a Python loop over the (many small) tensors
    out = [make(groups, lr=lr, foreach=True) if make in OPTIMIZERS.values() else make(groups, lr=lr)]
    if sparse:
        if make is torch.optim.Rprop:
            raise UsageError(
                "rai.fit: Rprop does not take sparse gradients; compile with options={'rai': {'sparse': False}} "
                "(full batch) or use optimizer='adam'"
            )
        out.append(torch.optim.SparseAdam(sparse, lr=table_lr))
    return out


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int | None = None,
    optimizer: str | Callable = "adam",
    lr: float = 1e-3,
    table_lr: float | None = None,
    loss_fn: LossFn = default_loss,
    lam_growth: float | None = None,
    resync_every: int | None = None,
    x_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
    log_every: int = 1,
    seed: int = 0,
    verbose: bool = False,
    callback: Callable[[Record], None] | None = None,
) -> History:
    """Train a lifted model on (x, y), x[i] being example id i; return the logged history.

    Full batch (``batch_size`` None or >= n) visits the examples in order, as the reference;
    mini-batches are drawn from a permutation seeded by ``seed``. ``lam_growth`` and
    ``resync_every`` default to the pass options (applied after each epoch / every k
    epochs). Every ``log_every`` epochs (and after the last) the chained network is
    evaluated; the model is left in eval mode (the deployed, chained network).
    """
    n = len(x)
    box = settings(model)
    if n != cuts(model)[0].num_examples:
        raise UsageError(f"rai.fit: x has {n} examples, the tables {cuts(model)[0].num_examples} rows (num_examples)")
    growth = box.lam_growth if lam_growth is None else lam_growth
    every = box.resync_every if resync_every is None else resync_every
    opts = optimizers(model, optimizer, lr, table_lr)
    order = torch.Generator().manual_seed(seed)
    full = batch_size is None or batch_size >= n
    history = History()
    start, steps = time.perf_counter(), 0
    for epoch in range(1, epochs + 1):
        ids = torch.arange(n) if full else torch.randperm(n, generator=order)
        batches = ids.split(n if full else batch_size)
        sums = _train_epoch(model, x, y, batches, opts, loss_fn)
        steps += len(batches)
        if growth != 1.0:
            grow_lam(model, growth)
        if every and epoch % every == 0:
            resync(model, x)
        if epoch % log_every == 0 or epoch == epochs:
            record = _record(model, x, y, x_test, y_test, loss_fn, epoch, sums, time.perf_counter() - start)
            record.steps = steps
            history.records.append(record)
            if verbose:
                print(record.line(), flush=True)
            if callback is not None:
                callback(record)
    model.eval()
    return history


def _train_epoch(model, x, y, batches, opts, loss_fn) -> dict[str, float]:
    model.train()
    found: list[RAICut] = cuts(model)
    totals = {"task": 0.0, "local": 0.0}
    gaps = torch.zeros(len(found))
    for ids in batches:
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        out = model(x[ids], ids.to(x.device))
        task = loss_fn(out, y[ids])
        local = loss(model)
        (task + local).backward()
        for opt in opts:
            opt.step()
        totals["task"] += float(task.detach())
        totals["local"] += float(local.detach())
        with torch.no_grad():
            gaps += torch.stack([c.local.detach() / c.lam for c in found]).cpu()
    k = len(batches)
    return {"task": totals["task"] / k, "local": totals["local"] / k, "violation": float(gaps.max()) / k}


def _record(model, x, y, x_test, y_test, loss_fn, epoch, sums, seconds) -> Record:
    chained_loss, chained_acc = evaluate(model, x, y, loss_fn)
    test = evaluate(model, x_test, y_test, loss_fn) if x_test is not None else (math.nan, math.nan)
    return Record(
        epoch=epoch,
        steps=0,
        lifted=sums["task"] + sums["local"],
        task=sums["task"],
        local=sums["local"],
        violation=sums["violation"],
        chained_loss=chained_loss,
        chained_acc=chained_acc,
        test_loss=test[0],
        test_acc=test[1],
        lam=cuts(model)[0].lam,
        seconds=seconds,
    )


def ddp(model: nn.Module, **kwargs) -> nn.parallel.DistributedDataParallel:
    """``DistributedDataParallel(model, **kwargs)`` with the rai tables and seen-masks left
    out of DDP's synchronisation: each process owns the rows of the ids it sees (give every
    process a fixed shard of the ids), while the weights' gradients are averaged as usual."""
    inner = unwrap(model)
    names = [n for n, _ in inner.named_parameters() if _is_table(inner, n)]
    names += [n for n, _ in inner.named_buffers() if _is_table(inner, n)]
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(inner, names)
    return nn.parallel.DistributedDataParallel(inner, **kwargs)


def fsdp(model: nn.Module, **kwargs) -> nn.Module:
    """``torch.distributed.fsdp.fully_shard(model, **kwargs)`` (FSDP2) with the rai tables left
    out (``ignored_params``): each process keeps its own full tables and owns the rows of the
    ids it sees, as with :func:`ddp`; the weights are sharded and their gradients averaged.
    Without this, FSDP2 fails on the tables' row-sparse gradients ("Could not run
    'fsdp::chunk_cat' with arguments from the 'SparseCPU' backend", torch 2.13), and dense
    tables would be sharded by rows and all-gathered whole at every forward. Shard the
    submodules first with ``fully_shard`` yourself if you want per-layer units."""
    from torch.distributed.fsdp import fully_shard

    inner = unwrap(model)
    tables = {c.table for c in cuts(inner)}
    ignored = set(kwargs.pop("ignored_params", None) or ()) | tables
    return fully_shard(inner, ignored_params=ignored, **kwargs)


def _is_table(model: nn.Module, name: str) -> bool:
    owner = name.rsplit(".", 1)[0] if "." in name else ""
    return isinstance(model.get_submodule(owner), RAICut)
