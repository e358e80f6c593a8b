"""Compile time against depth, for every pass: seconds per layer should be flat (issue 18).

    python benchmarks/compile_scaling.py                 # every pass, 100 / 300 / 1000 layers (quick)
    python benchmarks/compile_scaling.py --full          # every pass, 100 / 1000 / 3000 / 10 000 layers
    python benchmarks/compile_scaling.py --passes arp,gpn --depths 100 1000 --repeats 3
    python benchmarks/compile_scaling.py --stages --passes arp+gpn --depths 1000   # where the time goes
    python benchmarks/compile_scaling.py --versus-trace  # vgpcompile / symbolic_trace (old table)

A "layer" is one Linear + Tanh pair of a width-16 MLP (and a final Linear); every compile gets
example_inputs (a batch of 8), so arp calibrates, capture is checked against the original and
what ran is verified. Each row: the median of ``--repeats`` compiles (CPU time), ms per layer,
and that per-layer time over the shallowest depth's ("growth": 1.0 is linear; a super-linear
stage shows as growth rising with depth). ``--versus-trace``: the same compile over
``torch.fx.symbolic_trace`` of the model, passes off / gpn / arp+gpn (issue 18's ratio, target
<= 1.5 for arp+gpn); ``--stages``: seconds per stage of one compile (``STAGES``: each
function timed by wrapping it for the run; nested stages are inside their callers).
(``--versus-trace --no-example --passes roaf --depths 1000 10000 50000 --repeats 1``: roaf's
per-block filters without example inputs, 50 000 layers.)
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import importlib
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import fx, nn

from vgpcompile import vgpcompile

# name -> (passes, options); "+" joins passes of one compile. tat solves its constants with the
# dks package (extra tat) once per compile; rai needs its table size.
PASSES: dict[str, tuple[list[str], dict | None]] = {
    "off": ([], None),
    "arp": (["arp"], None),
    "gpn": (["gpn"], None),
    "arp+gpn": (["arp", "gpn"], None),
    "orthogonal": (["orthogonal"], None),
    "roaf": (["roaf"], None),
    "rai": (["rai"], {"rai": {"num_examples": 64}}),
    "tat": (["tat"], None),
    "bsnn": (["bsnn"], None),
}
QUICK_DEPTHS = [100, 300, 1000]
FULL_DEPTHS = [100, 1000, 3000, 10000]


def mlp(pairs: int, width: int = 16, act: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[m for _ in range(pairs) for m in (nn.Linear(width, width), act())], nn.Linear(width, 1))


def cpu_seconds(fn: Callable[[], object]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


ACT = {"tanh": nn.Tanh, "relu": nn.ReLU}


def compile_fn(name: str, x: torch.Tensor | None) -> Callable[[nn.Module], nn.Module]:
    passes, options = PASSES[name]
    kw = {} if x is None else {"example_inputs": (x,)}
    return lambda model: vgpcompile(model, passes=passes, options=options, **kw)


def scaling(args: argparse.Namespace) -> list[dict]:
    """Seconds and ms per layer of each pass at each depth (models built outside the clock)."""
    x = None if args.no_example else torch.randn(8, 16)
    rows = []
    print(f"{'passes':>10} {'layers':>7} {'seconds':>9} {'ms/layer':>9} {'growth':>7}")
    for name in args.passes:
        fn = compile_fn(name, x)
        fn(args.build(3))  # imports and first-call costs
        first = None
        for pairs in args.depths:
            models = [args.build(pairs) for _ in range(args.repeats)]
            seconds = statistics.median(cpu_seconds(lambda m=m, fn=fn: fn(m)) for m in models)
            per_layer = 1e3 * seconds / pairs
            first = first or per_layer
            rows.append({"passes": name, "layers": pairs, "seconds": seconds, "ms_per_layer": per_layer})
            print(f"{name:>10} {pairs:>7} {seconds:>9.3f} {per_layer:>9.3f} {per_layer / first:>7.2f}", flush=True)
    return rows


def versus_trace(args: argparse.Namespace) -> None:
    """vgpcompile over torch.fx.symbolic_trace of the same model, arms interleaved."""
    x = None if args.no_example else torch.randn(8, 16)
    names = args.passes if args.passes_given else ["off", "gpn", "arp+gpn"]
    fns = {name: compile_fn(name, x) for name in names}
    for fn in fns.values():
        fn(args.build(3))
    print(f"example_inputs: {'none' if x is None else 'a batch of 8'}; CPU-time medians, arms interleaved")
    print(f"{'layers':>7} {'symbolic_trace s':>17} " + " ".join(f"{n + ' ×':>11}" for n in names))
    for pairs in args.depths:
        model = args.build(pairs)
        times: dict[str, list[float]] = {"trace": []} | {n: [] for n in names}
        for _ in range(args.repeats):
            times["trace"].append(cpu_seconds(lambda m=model: fx.symbolic_trace(m)))
            for n, fn in fns.items():
                times[n].append(cpu_seconds(lambda fn=fn, m=model: fn(m)))
        base = statistics.median(times["trace"])
        print(f"{pairs:>7} {base:>17.3f} " + " ".join(f"{statistics.median(times[n]) / base:>11.2f}" for n in names))


def stages(args: argparse.Namespace) -> None:
    """Seconds per stage of one compile of each pass at each depth."""
    x = None if args.no_example else torch.randn(8, 16)
    for name in args.passes:
        fn = compile_fn(name, x)
        fn(args.build(3))
        for pairs in args.depths:
            model = args.build(pairs)
            base = statistics.median(cpu_seconds(lambda m=model: fx.symbolic_trace(m)) for _ in range(3))
            with timed_stages() as seen:
                total = cpu_seconds(lambda fn=fn, m=model: fn(m))
            print(f"{name}, {pairs} layers: {total:.3f} s = {total / base:.2f} × symbolic_trace ({base:.3f} s)")
            for stage, seconds in sorted(seen.items(), key=lambda kv: -kv[1]):
                print(f"  {stage:<40} {seconds:>7.3f} s {seconds / base:>6.2f} × trace")


# (module, attribute) of each stage timed by --stages; a method as "Class.method".
STAGES = [
    ("vgpcompile.api", "copy_model"),
    ("vgpcompile.api", "check_reference"),
    ("vgpcompile.api", "capture_model"),
    ("vgpcompile.core.capture", "_trace_both_modes"),
    ("vgpcompile.core.capture", "make_region"),
    ("vgpcompile.core.capture", "_complete_state"),
    ("vgpcompile.core.capture", "_note_user_leaves"),
    ("vgpcompile.core.verify", "Reference.check"),
    ("vgpcompile.api", "_register_sites"),
    ("vgpcompile.api", "nonlinear_depth"),
    ("vgpcompile.api", "run_pass"),
    ("vgpcompile.core.calibrate", "observe"),
    ("vgpcompile.core.calibrate", "Incremental.full"),
    ("vgpcompile.core.calibrate", "Incremental.upto"),
    ("vgpcompile.core.runner", "_finish_graph"),
    ("vgpcompile.core.verify_run", "check"),
    ("vgpcompile.core.recipe", "build"),
    ("torch.fx.graph_module", "GraphModule.recompile"),
]


@contextlib.contextmanager
def timed_stages():
    """Seconds (CPU) spent in each of ``STAGES`` while the block runs, and calls, by name."""
    seen: dict[str, float] = collections.defaultdict(float)
    undo = []
    for module_name, attribute in STAGES:
        owner = importlib.import_module(module_name)
        *classes, name = attribute.split(".")
        for cls in classes:
            owner = getattr(owner, cls)
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)

        def timed(*a, _f=original, _k=f"{module_name.rsplit('.', 1)[-1]}.{attribute}", **k):
            start = time.process_time()
            try:
                return _f(*a, **k)
            finally:
                seen[_k] += time.process_time() - start

        setattr(owner, name, timed)
        undo.append((owner, name, original))
    try:
        yield seen
    finally:
        for owner, name, original in reversed(undo):
            setattr(owner, name, original)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passes", help=f"comma-separated, of {', '.join(PASSES)} (default: all)")
    parser.add_argument("--depths", type=int, nargs="+", help=f"layers (default {QUICK_DEPTHS}; --full {FULL_DEPTHS})")
    parser.add_argument("--full", action="store_true", help=f"depths {FULL_DEPTHS}")
    parser.add_argument("--repeats", type=int, default=1, help="compiles per depth (median)")
    parser.add_argument("--activation", choices=list(ACT), default="tanh", help="relu: arp calibrates every site")
    parser.add_argument("--no-example", action="store_true", help="compile without example_inputs")
    parser.add_argument("--versus-trace", action="store_true", help="vgpcompile / torch.fx.symbolic_trace")
    parser.add_argument("--stages", action="store_true", help="seconds per stage of one compile")
    args = parser.parse_args(argv)
    args.passes_given = args.passes is not None
    args.passes = args.passes.split(",") if args.passes else list(PASSES)
    unknown = [p for p in args.passes if p not in PASSES]
    if unknown:
        parser.error(f"unknown --passes {unknown}; choose from {', '.join(PASSES)}")
    args.build = functools.partial(mlp, act=ACT[args.activation])
    args.depths = args.depths or (FULL_DEPTHS if args.full else QUICK_DEPTHS)
    warnings.simplefilter("ignore")  # gpn without orthogonal on a deep stack warns; not what is timed
    if args.versus_trace:
        return versus_trace(args)
    if args.stages:
        return stages(args)
    scaling(args)


if __name__ == "__main__":
    main()
