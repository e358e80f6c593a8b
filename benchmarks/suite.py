"""Every row of issue 18's cost table, side by side in one process, written to JSON.

    python benchmarks/suite.py [--quick] [--device cuda] [--sections step,rai,...] [--steps 30]
                               [--json docs/performance.json]
    python benchmarks/make_performance.py      # docs/performance.md and README's block from the JSON

Sections (``SECTIONS``; each row is one line of its table, so adding a pass or a size is one line):

- ``step``: one eager training step (forward, MSE, backward, SGD momentum) of a depth-20 tanh
  MLP compiled with each pass of ``STEP_ARMS``, over the plain model, at each (width, batch)
  of ``STEP_SIZES``. Also the arithmetic written by hand (a * tanh + b) and, as "before",
  main's composed arp Linear (``LegacyAutoRotLinear``, kept here verbatim), and arp's floor:
  the same rotated forward with rho held constant in backward (``DetachedRotLinear``; not the
  method, which differentiates through rho: what any exact forward costs at the least). Two
  more floors, not methods either: orthogonal's (``_gram_floor``: the plain step and one Gram
  matrix per layer after it, what a retraction that checks every step's error costs at the
  least) and roaf's (``IdentityFilter``: O = I, what any additive filter costs at the least).
- ``orthogonal_lr``: orthogonal's step over plain at the step table's optimizer (SGD lr 1e-4)
  and at realistic ones (SGD lr 1e-2 momentum 0.9, Adam lr 1e-3) and a fine-tuning rate, with
  the share of layer-steps whose retraction was certified without a Gram matrix ("skipped").
- ``rai``: a lifted step against RAI written by hand (benchmarks/step_overhead_rai.py's arms).
- ``compiled``: the same step under ``torch.compile(model, fullgraph=True)``, over the compiled
  plain model; dynamo's counters give graph breaks and recompiles over all the steps run.
- ``compile_time``: ``vgpcompile`` of a 1000-layer MLP over ``torch.fx.symbolic_trace`` of it
  (and over symbolic_trace + deepcopy, issue 18's own baseline), the cyclic GC off in every arm,
  and arp with example inputs against depth (seconds per layer should be flat).
- ``memory``: the peak of what one forward + backward allocates (grads included, the
  profiler's allocation events), each pass over plain, width 1024, batch 128.
- ``inference``: onnxruntime latency of the frozen, exported model over the plain one.

Timing: the arms of a table run interleaved (one step of each in turn, so load drift hits
them alike); a ratio is the median over rounds of (arm time / plain time) within the round,
reported with its interquartile range as the noise. CPU time (``time.process_time``: all of
the process's threads) and wall time are both recorded; on CUDA only wall time, synchronised.
torch's thread count is left as the user set it (``--threads`` sets it); the JSON records it.
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vgpcompile import vgpcompile  # noqa: E402
from vgpcompile.nn import AutoRotLinear, ROAFFilter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "docs" / "performance.json"
A_TANH, B_TANH = 1.4674135916307953, -0.38854167006712753  # gpn's tanh constants (root "minus")


# ---- models and arms ---------------------------------------------------------------------------


def mlp(depth: int, width: int, out: int = 1) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [m for _ in range(depth) for m in (nn.Linear(width, width), nn.Tanh())]
    return nn.Sequential(*layers, nn.Linear(width, out))


class HandGPNTanh(nn.Module):
    """gpn's arithmetic written by hand: the least a * tanh(x) + b costs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(torch.tensor(B_TANH), torch.tanh(x), torch.tensor(A_TANH))


class LegacyAutoRotLinear(AutoRotLinear):
    """main's AutoRotLinear.forward before the fused Function (ac28821): composed autograd ops."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        z = F.linear(input, self.weight, self.bias)
        return z if not self.rotate else z * self.rho().to(z.dtype)


class DetachedRotLinear(AutoRotLinear):
    """arp's forward with rho's gradient dropped: the plain Linear's backward on g * rho. Not the
    method (the reference differentiates through rho, research/arp.md §1.4); it bounds from
    below what an exact rotated forward costs in eager: rho from the weights, and one pass
    over the output each way."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            rho = self.rho()
        return F.linear(input, self.weight, self.bias) * rho


def _reclass(model: nn.Module, old: type[nn.Module], new: type[nn.Module]) -> nn.Module:
    """Every module of exactly class ``old`` becomes a ``new`` (a subclass with another forward)."""
    for m in model.modules():
        if type(m) is old:
            m.__class__ = new
    return model


def _legacy_arp(model: nn.Module, cls: type[nn.Module] = LegacyAutoRotLinear) -> nn.Module:
    return _reclass(model, AutoRotLinear, cls)


class IdentityFilter(ROAFFilter):
    """roaf's floor: alpha * x + beta * y, the filter with O = I. Not the method (O mixes nothing);
    what any additive filter costs at the least, however cheap its O: the block's output is a
    sum of two terms, one pass each way over the activations."""

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.add(x * self.alpha, y, alpha=self.beta)


def _identity_filter(depth: int, width: int, x: torch.Tensor) -> nn.Module:
    return _reclass(_compiled(["roaf"])(depth, width, x), ROAFFilter, IdentityFilter)


_GRAM = "_vgp_gram_floor"  # marks a weight whose Gram matrix the post-step hook forms


@torch.no_grad()
def _gram_after_step(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
    for group in optimizer.param_groups:
        for p in group["params"]:
            if getattr(p, _GRAM, False):
                p.mT @ p


@functools.cache
def _gram_hook() -> object:
    """The post-step hook's handle, registered once per process, by the first floor model built."""
    return register_optimizer_step_post_hook(_gram_after_step)


def _gram_floor(depth: int, width: int, x: torch.Tensor) -> nn.Module:
    """orthogonal's floor: the plain model, and after each optimizer step one Gram matrix WᵀW per
    square layer, nothing else. Not the method (it keeps nothing orthogonal); the least a
    retraction that checks each step's error costs: the Gram is one n x n x n product, against
    the step's three n x n x batch products per layer."""
    _gram_hook()
    model = mlp(depth, width)
    for m in list(model)[:-1]:
        if isinstance(m, nn.Linear):
            setattr(m.weight, _GRAM, True)
    return model


def _hand_gpn(depth: int, width: int) -> nn.Module:
    torch.manual_seed(0)
    layers = [m for _ in range(depth) for m in (nn.Linear(width, width), HandGPNTanh())]
    return nn.Sequential(*layers, nn.Linear(width, 1))


def _compiled(passes: list[str], **options) -> Callable[[int, int, torch.Tensor], nn.Module]:
    def build(depth: int, width: int, x: torch.Tensor) -> nn.Module:
        kw = {"example_inputs": (x,)} if any(p in ("arp",) for p in passes) else {}
        return vgpcompile(mlp(depth, width), passes=passes, options=options or None, **kw)

    return build


# The step tables' arms: name -> (builder(depth, width, example x) -> model, compiled-section too?).
# One line per row; a pass another branch adds (roaf's structured filter) is one more line.
STEP_ARMS: dict[str, tuple[Callable[[int, int, torch.Tensor], nn.Module], bool]] = {
    "gpn": (_compiled(["gpn"]), True),
    "hand-written a·tanh+b": (lambda d, w, x: _hand_gpn(d, w), False),
    "arp": (_compiled(["arp"]), True),
    "arp, before (main's composed Linear)": (lambda d, w, x: _legacy_arp(_compiled(["arp"])(d, w, x)), False),
    "arp floor: rho without gradient (not the method)": (
        lambda d, w, x: _legacy_arp(_compiled(["arp"])(d, w, x), DetachedRotLinear), False),
    "arp+gpn": (_compiled(["arp", "gpn"]), True),
    "orthogonal": (_compiled(["orthogonal"]), True),
    "orthogonal floor: one Gram matrix per layer per step (not the method)": (_gram_floor, True),
    "roaf": (_compiled(["roaf"]), True),
    "roaf{filter=hadamard}": (_compiled(["roaf{filter=hadamard}"]), True),
    "roaf floor: identity filter, any additive filter's least (not the method)": (_identity_filter, True),
    "orthogonal{every=8}": (_compiled(["orthogonal{every=8}"]), True),  # drift between retractions: README
    "tat": (_compiled(["tat"]), True),  # not in issue 18's table (no target): DKS/TAT came after it
}
STEP_SIZES = [(64, 32), (256, 32), (256, 128), (1024, 32), (1024, 128)]  # (width, batch)
STEP_TARGETS = {"gpn": 1.03, "arp": 1.10, "arp+gpn": 1.12, "orthogonal": 1.5, "roaf": 1.25,
                "roaf{filter=hadamard}": 1.25, "orthogonal{every=8}": 1.5}
MEMORY_ARMS = ["gpn", "arp", "arp, before (main's composed Linear)", "arp+gpn", "orthogonal", "roaf"]
MEMORY_TARGETS = {"gpn": 1.03, "arp": 1.03}


# ---- timing ------------------------------------------------------------------------------------


@dataclass
class Clock:
    device: torch.device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def rounds(self, fns: dict[str, Callable[[], object]], steps: int, warmup: int) -> dict[str, dict[str, list]]:
        """Per arm, the CPU and wall seconds of each measured call; calls alternate between arms."""
        times: dict[str, dict[str, list]] = {name: {"cpu": [], "wall": []} for name in fns}
        for i in range(warmup + steps):
            for name, fn in fns.items():
                self.sync()
                cpu, wall = time.process_time(), time.perf_counter()
                fn()
                self.sync()
                if i >= warmup:
                    times[name]["cpu"].append(time.process_time() - cpu)
                    times[name]["wall"].append(time.perf_counter() - wall)
        return times


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 4:
        m = statistics.median(values)
        return min(values), m, max(values)
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return q1, q2, q3


def ratios(times: dict[str, dict[str, list]], base: str, cuda: bool) -> dict[str, dict]:
    """arm / base per round, median and quartiles, for CPU (not on CUDA) and wall time."""
    out = {}
    for name, t in times.items():
        row = {"ms": 1e3 * statistics.median(t["wall"] if cuda else t["cpu"])}
        for kind in ("wall",) if cuda else ("cpu", "wall"):
            q1, med, q3 = quartiles([a / b for a, b in zip(t[kind], times[base][kind]) if b > 0])
            row[kind] = round(med, 4)
            row[f"{kind}_iqr"] = [round(q1, 4), round(q3, 4)]
            # all rounds' time over the base's: what a step costs on average when some steps
            # do more than others (orthogonal{every=k} retracts on one step in k; a median hides it)
            row[f"{kind}_total"] = round(sum(t[kind]) / max(sum(times[base][kind]), 1e-12), 4)
        out[name] = row
    return out


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer=None) -> Callable[[], None]:
    opt = (optimizer or (lambda p: torch.optim.SGD(p, lr=1e-4, momentum=0.5)))(model.parameters())

    def step() -> None:
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


# ---- sections ----------------------------------------------------------------------------------


def section_step(cfg: argparse.Namespace) -> list[dict]:
    rows = []
    for width, batch in cfg.sizes:
        x, y = torch.randn(batch, width, device=cfg.device), torch.randn(batch, 1, device=cfg.device)
        fns = {"plain": train_step(mlp(cfg.depth, width).to(cfg.device), x, y)}
        for name, (build, _) in STEP_ARMS.items():
            fns[name] = train_step(build(cfg.depth, width, x.cpu()).to(cfg.device), x, y)
        times = cfg.clock.rounds(fns, cfg.steps, cfg.warmup)
        for name, r in ratios(times, "plain", cfg.cuda).items():
            if name != "plain":
                rows.append({"row": name, "width": width, "batch": batch, **r, "target": STEP_TARGETS.get(name),
                             "plain_ms": ratios(times, "plain", cfg.cuda)["plain"]["ms"]})  # fmt: skip
        done = ", ".join(f"{r['row']} {_key(r, cfg)}" for r in rows[-len(STEP_ARMS) :])
        log(cfg, f"step {width}x{batch}: {done}")
    return rows


# orthogonal's retraction skips its Gram matrix only on steps that provably stay within tol
# (small updates): the step table's optimizer and realistic ones, and how often it skipped
ORTHOGONAL_OPTIMIZERS: dict[str, Callable] = {
    "SGD lr 1e-4, momentum 0.5 (the step table's)": lambda p: torch.optim.SGD(p, lr=1e-4, momentum=0.5),
    "SGD lr 1e-2, momentum 0.9": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9),
    "Adam lr 1e-3": lambda p: torch.optim.Adam(p, lr=1e-3),
    "SGD lr 1e-6, momentum 0.5 (fine-tuning)": lambda p: torch.optim.SGD(p, lr=1e-6, momentum=0.5),
}
ORTHOGONAL_SIZES = [(256, 128), (1024, 32)]


def section_orthogonal_lr(cfg: argparse.Namespace) -> list[dict]:
    from vgpcompile.orthogonal import layers

    rows = []
    for width, batch in [(32, 8)] if cfg.quick else ORTHOGONAL_SIZES:
        x, y = torch.randn(batch, width, device=cfg.device), torch.randn(batch, 1, device=cfg.device)
        for name, optimizer in ORTHOGONAL_OPTIMIZERS.items():
            model = _compiled(["orthogonal"])(cfg.depth, width, x.cpu()).to(cfg.device)
            fns = {"plain": train_step(mlp(cfg.depth, width).to(cfg.device), x, y, optimizer),
                   "orthogonal": train_step(model, x, y, optimizer)}  # fmt: skip
            r = ratios(cfg.clock.rounds(fns, cfg.steps, cfg.warmup), "plain", cfg.cuda)["orthogonal"]
            states = [m.vgp_orthogonal for m in layers(model)]
            skips = sum(getattr(s, "skips", 0) for s in states)  # 0 on a tree without the skip
            grams = sum(getattr(s, "retractions", 0) for s in states)
            rows.append({"row": f"orthogonal, {name}", "width": width, "batch": batch, **r, "target": None,
                         "skipped": f"{skips / max(skips + grams, 1):.0%}"})  # fmt: skip
        log(cfg, f"orthogonal_lr {width}x{batch}: " + ", ".join(f"{_key(r, cfg)} ({r['skipped']})" for r in rows[-4:]))
    return rows


def section_rai(cfg: argparse.Namespace) -> list[dict]:
    import step_overhead_rai as bench

    from vgpcompile import rai

    rows, bce = [], F.binary_cross_entropy_with_logits
    n, depth, width = (256, 3, 32) if cfg.quick else (10_000, cfg.depth, 256)
    for batch in (8,) if cfg.quick else (32, 256):
        x, y = torch.randn(n, width), torch.randint(0, 2, (n, 1)).float()
        plain = bench.mlp(depth, width)
        lifted = vgpcompile(bench.mlp(depth, width), passes=["rai"], options={"rai": {"num_examples": n}})
        hand = bench.HandRAI(bench.mlp(depth, width), n)
        with torch.no_grad():
            lifted.train()(x, torch.arange(n))  # every row visited: the lazy init is not what is timed
            for cut, table in zip(rai.cuts(lifted), hand.tables):
                table.weight.copy_(cut.table)
        hand_opt = [torch.optim.Adam(hand.layers.parameters(), lr=1e-3, foreach=True),
                    torch.optim.SparseAdam(list(hand.tables.parameters()), lr=1e-3)]  # fmt: skip
        fns = {
            "hand": bench.step_fn(hand, lambda m, xb, yb, ids: bce(m(xb, ids), yb) + m.local, hand_opt, x, y, batch),
            "plain": bench.step_fn(plain, lambda m, xb, yb, ids: bce(m(xb), yb),
                                   [torch.optim.Adam(plain.parameters(), lr=1e-3, foreach=True)], x, y, batch),
            "rai": bench.step_fn(lifted, lambda m, xb, yb, ids: bce(m(xb, ids), yb) + rai.loss(m),
                                 rai.optimizers(lifted), x, y, batch),
        }  # fmt: skip
        times = cfg.clock.rounds(fns, cfg.steps, cfg.warmup)
        vs_hand, vs_plain = ratios(times, "hand", cfg.cuda)["rai"], ratios(times, "plain", cfg.cuda)["rai"]
        rows.append({"row": "rai / hand-written", "width": width, "batch": batch, **vs_hand, "target": 1.10})
        rows.append({"row": "rai / plain", "width": width, "batch": batch, **vs_plain, "target": None})
        log(cfg, f"rai batch {batch}: / hand {_key(rows[-2], cfg)}, / plain {_key(rows[-1], cfg)}")
    return rows


def section_compiled(cfg: argparse.Namespace) -> list[dict]:
    from torch._dynamo.utils import counters

    width, batch = (32, 8) if cfg.quick else (256, 128)
    x, y = torch.randn(batch, width, device=cfg.device), torch.randn(batch, 1, device=cfg.device)
    fns, info = {}, {}
    arms = {"plain": lambda d, w, x: mlp(d, w)} | {k: b for k, (b, on) in STEP_ARMS.items() if on}
    for name, build in arms.items():
        torch._dynamo.reset()
        counters.clear()
        model = build(cfg.depth, width, x.cpu()).to(cfg.device)
        step = train_step(torch.compile(model, fullgraph=True, backend=cfg.backend), x, y)
        start = time.perf_counter()
        try:
            for _ in range(cfg.compiled_steps):
                step()
        except Exception as err:  # a pass that does not compile is a row of the table, not a crash
            info[name] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
            log(cfg, f"compiled {name}: {info[name]['error']}")
            continue
        info[name] = {"first_steps_s": round(time.perf_counter() - start, 2),
                      "graph_breaks": sum(counters["graph_break"].values()),
                      "recompiles": sum(counters["recompiles"].values()),
                      "graphs": counters["stats"]["unique_graphs"], "steps": cfg.compiled_steps}  # fmt: skip
        fns[name] = step
    times = cfg.clock.rounds(fns, cfg.steps, 2) if "plain" in fns else {}
    r = ratios(times, "plain", cfg.cuda) if times else {}
    rows = []
    for name in arms:
        if name != "plain":
            rows.append({"row": name, "width": width, "batch": batch, **info[name], **r.get(name, {}),
                         "target": STEP_TARGETS.get(name)})  # fmt: skip
    log(cfg, "compiled: " + ", ".join(f"{row['row']} {_key(row, cfg)}" for row in rows))
    return rows


def _timed(fn: Callable[[], object]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def _timed_without_gc(fn: Callable[[], object]) -> float:
    """CPU seconds of fn with the cyclic GC off, after a collection: vgpcompile turns the GC off
    while it compiles, so the baselines run the same way; with it on, a trace's time grows with
    whatever else the process holds (0.13 s alone, 0.37 s after the step tables, measured)."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _timed(fn)
    finally:
        if enabled:
            gc.enable()


def section_compile_time(cfg: argparse.Namespace) -> list[dict]:
    depth, width = (40, 16) if cfg.quick else (1000, 16)
    x = torch.randn(8, width)
    configs: dict[str, Callable[[nn.Module], object]] = {
        "passes off": lambda m: vgpcompile(m, passes=[], example_inputs=(x,)),
        "gpn": lambda m: vgpcompile(m, passes=["gpn"], example_inputs=(x,)),
        "arp+gpn": lambda m: vgpcompile(m, passes=["arp", "gpn"], example_inputs=(x,)),
    }
    model = mlp(depth, width)
    # issue 18 states its 1.5x against symbolic_trace + deepcopy (a compiler must copy the model);
    # "cpu" is against the trace alone, the stricter of the two
    times: dict[str, list[float]] = {"symbolic_trace": [], "deepcopy": []} | {k: [] for k in configs}
    for _ in range(cfg.compile_repeats):  # interleaved repeats
        times["symbolic_trace"].append(_timed_without_gc(lambda: fx.symbolic_trace(model)))
        times["deepcopy"].append(_timed_without_gc(lambda: copy.deepcopy(model)))
        for name, fn in configs.items():
            times[name].append(_timed_without_gc(lambda fn=fn: fn(model)))
    base, copied = statistics.median(times["symbolic_trace"]), statistics.median(times["deepcopy"])
    rows = [{"row": f"{name}, {depth} layers, example inputs", "seconds": round(statistics.median(ts), 3),
             "cpu": round(statistics.median(ts) / base, 3),
             "x_trace_and_copy": round(statistics.median(ts) / (base + copied), 2),
             "target": 1.5 if name == "arp+gpn" else None}
            for name, ts in times.items() if name in configs]  # fmt: skip
    rows.append({"row": f"symbolic_trace, {depth} layers", "seconds": round(base, 3)})
    rows.append({"row": f"copy.deepcopy, {depth} layers", "seconds": round(copied, 3)})
    for layers in (5, 10) if cfg.quick else (25, 50, 100, 200):
        seconds = _timed_without_gc(lambda n=layers: vgpcompile(mlp(n, width), passes=["arp"], example_inputs=(x,)))
        rows.append({"row": "arp vs depth, example inputs", "layers": layers, "seconds": round(seconds, 3),
                     "ms_per_layer": round(1e3 * seconds / layers, 2)})  # fmt: skip
    log(cfg, "compile time: " + ", ".join(f"{r['row']} {r['seconds']}s" for r in rows))
    return rows


def peak_bytes(fn: Callable[[], None]) -> int:
    """The peak of what ``fn`` allocates and has not freed yet, from the profiler's memory events."""
    from torch.profiler import ProfilerActivity, profile

    if torch.cuda.is_available() and torch.cuda.current_device() is not None and _ON_CUDA[0]:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


_ON_CUDA = [False]


def section_memory(cfg: argparse.Namespace) -> list[dict]:
    width, batch = (64, 16) if cfg.quick else (1024, 128)
    x, y = torch.randn(batch, width, device=cfg.device), torch.randn(batch, 1, device=cfg.device)
    models = {"plain": mlp(cfg.depth, width)} | {k: STEP_ARMS[k][0](cfg.depth, width, x.cpu()) for k in MEMORY_ARMS}
    peaks = {}
    for name, model in models.items():
        model.to(cfg.device)
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.5)
        F.mse_loss(model(x), y).backward()
        opt.step()  # state and grads exist: the measured step starts as a training loop's would
        opt.zero_grad(set_to_none=True)
        peaks[name] = peak_bytes(lambda m=model: F.mse_loss(m(x), y).backward())
    rows = [{"row": name, "width": width, "batch": batch, "ratio": round(p / peaks["plain"], 4),
             "mib": round(p / 2**20, 2), "target": MEMORY_TARGETS.get(name)}
            for name, p in peaks.items() if name != "plain"]  # fmt: skip
    log(cfg, f"memory (plain {peaks['plain'] / 2**20:.1f} MiB): " + ", ".join(f"{r['row']} {r['ratio']}" for r in rows))
    return rows


def section_inference(cfg: argparse.Namespace) -> list[dict]:
    import inference_cnn
    import numpy as np
    import onnxruntime as ort

    from vgpcompile import export_onnx

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    width = 32 if cfg.quick else 256
    x = torch.rand(2, width, generator=torch.Generator().manual_seed(0))
    img = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cases = {  # name -> (plain model, compiled model, example, feed shape at the timed batch)
        "MLP gpn": (lambda: mlp(cfg.depth, width), ["gpn"], x, (64, width)),
        "MLP arp": (lambda: mlp(cfg.depth, width), ["arp"], x, (64, width)),
        "MLP roaf": (lambda: mlp(cfg.depth, width), ["roaf"], x, (64, width)),
        "MLP roaf{filter=hadamard}": (lambda: mlp(cfg.depth, width), ["roaf{filter=hadamard}"], x, (64, width)),
        "CNN gpn": (lambda: inference_cnn.cnn(8 if cfg.quick else 32), ["gpn"], img, (16, 3, 16, 16)),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (build, passes, example, shape) in cases.items():
            kw = {"example_inputs": (example,)} if "arp" in passes else {}
            plain = export_onnx(vgpcompile(build()), Path(tmp) / "p.onnx", (example,), exporter=cfg.exporter)
            comp = export_onnx(vgpcompile(build(), passes=passes, **kw), Path(tmp) / "c.onnx", (example,),
                               exporter=cfg.exporter)  # fmt: skip
            sessions = {k: ort.InferenceSession(r.path, opts, providers=["CPUExecutionProvider"])
                        for k, r in (("plain", plain), ("compiled", comp))}  # fmt: skip
            feed = np.random.default_rng(0).random(shape, dtype=np.float32)
            fns = {k: (lambda s=s, f=feed: s.run(None, {s.get_inputs()[0].name: f})) for k, s in sessions.items()}
            times = Clock(torch.device("cpu")).rounds(fns, cfg.inference_runs, 10)
            r = ratios(times, "plain", False)["compiled"]
            target = 1.05 if name == "CNN gpn" else (1.15 if "roaf" in name else 1.02)
            rows.append({"row": name, "batch": shape[0], **r, "nodes": comp.nodes, "plain_nodes": plain.nodes,
                         "target": target})  # fmt: skip
    log(cfg, "inference: " + ", ".join(f"{r['row']} {_key(r, cfg)}" for r in rows))
    return rows


SECTIONS: dict[str, Callable[[argparse.Namespace], list[dict]]] = {
    "step": section_step,
    "orthogonal_lr": section_orthogonal_lr,
    "rai": section_rai,
    "compiled": section_compiled,
    "compile_time": section_compile_time,
    "memory": section_memory,
    "inference": section_inference,
}


def _key(row: dict, cfg: argparse.Namespace) -> str:
    if "error" in row:
        return "fails"
    value = row.get("wall" if cfg.cuda else "cpu")
    return "-" if value is None else f"{value:.2f}"


def log(cfg: argparse.Namespace, text: str) -> None:
    if not cfg.silent:
        print(text, flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes and few steps: a smoke run (seconds)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    ap.add_argument("--steps", type=int, help="measured rounds per table (default 30, quick 5)")
    ap.add_argument("--threads", type=int, help="torch threads (default: as the user / OMP_NUM_THREADS set them)")
    ap.add_argument("--backend", default="inductor", help="torch.compile backend of the compiled section")
    ap.add_argument("--exporter", default="torchscript", help="export_onnx's exporter for the inference section")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    ap.add_argument("--label", default="", help="a name for this run, kept in the JSON (e.g. the git ref measured)")
    ap.add_argument("--silent", action="store_true")
    cfg = ap.parse_args(argv)
    unknown = set(cfg.sections.split(",")) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cfg.device = torch.device(cfg.device)
    cfg.cuda = _ON_CUDA[0] = cfg.device.type == "cuda"
    cfg.clock = Clock(cfg.device)
    cfg.steps = cfg.steps or (5 if cfg.quick else 30)
    cfg.warmup = 2 if cfg.quick else 5
    cfg.depth = 3 if cfg.quick else 20
    cfg.sizes = [(32, 8)] if cfg.quick else STEP_SIZES
    cfg.compiled_steps = 3 if cfg.quick else 100
    cfg.compile_repeats = 1 if cfg.quick else 5
    cfg.inference_runs = 10 if cfg.quick else 200
    return cfg


def main(argv: list[str] | None = None) -> dict:
    cfg = parse(argv)
    meta = {
        "label": cfg.label, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "threads": torch.get_num_threads(), "device": str(cfg.device) if not cfg.cuda else torch.cuda.get_device_name(),
        "quick": cfg.quick, "steps": cfg.steps, "depth": cfg.depth, "clock": "wall" if cfg.cuda else "cpu",
        "command": "python benchmarks/suite.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }  # fmt: skip
    result = {"meta": meta, "sections": {}}
    for name in cfg.sections.split(","):
        start = time.perf_counter()
        result["sections"][name] = SECTIONS[name](cfg)
        meta[f"{name}_seconds"] = round(time.perf_counter() - start, 1)
        cfg.json.parent.mkdir(parents=True, exist_ok=True)
        cfg.json.write_text(json.dumps(result, indent=1) + "\n")  # after every section: a long run keeps its rows
    return result


if __name__ == "__main__":
    main()
