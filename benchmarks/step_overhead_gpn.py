"""gpn's output-form backward against the addcmul it replaced: step / plain, eager and compiled.

    OMP_NUM_THREADS=1 python benchmarks/step_overhead_gpn.py [--sizes 64x32,256x128,1024x128] [--steps 30]
                                                            [--backend inductor] [--no-compiled]

benchmarks/suite.py's step (depth-20 tanh MLP, MSE, SGD momentum) for plain, gpn and arp+gpn, each
pass arm twice: as compiled today (GPNActivation's Function saving only y = a tanh + b) and with
every GPNActivation's ``from_output`` cleared, which is the former forward (one addcmul, autograd's
backward saving tanh's output too). GPNActivation takes the Function under torch.compile only, so
the eager pair runs the same addcmul (a control for the noise), and the memory figures (eager)
show what the Function would hold if eager took it (``from_output`` forced through
``_AffineFromOutput``). The arms run interleaved in one process; a ratio is the median
over rounds of arm / plain. Eager, and under ``torch.compile(fullgraph=True)`` over the compiled
plain model; then, at width 1024, batch 128 (eager), the peak memory of one forward + backward
and what the forward holds for backward (the saved activations), each over plain's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from suite import Clock, _compiled, mlp, peak_bytes, ratios, train_step  # noqa: E402

from vgpcompile.nn import GPNActivation  # noqa: E402
from vgpcompile.passes.gpn import modules as gpn_modules  # noqa: E402

DEPTH = 20


def addcmul_form(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, GPNActivation):
            m.from_output = None  # the plain path: the former forward
    return model


def arms(width: int, x: torch.Tensor) -> dict[str, nn.Module]:
    return {
        "plain": mlp(DEPTH, width),
        "gpn": _compiled(["gpn"])(DEPTH, width, x),
        "gpn (addcmul)": addcmul_form(_compiled(["gpn"])(DEPTH, width, x)),
        "arp+gpn": _compiled(["arp", "gpn"])(DEPTH, width, x),
        "arp+gpn (addcmul)": addcmul_form(_compiled(["arp", "gpn"])(DEPTH, width, x)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="64x32,256x128,1024x128")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--no-compiled", action="store_true")
    args = parser.parse_args()
    clock = Clock(torch.device("cpu"))
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    modes = ["eager"] + ([] if args.no_compiled else ["compiled"])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, depth {DEPTH}, CPU-time ratios (IQR)")
    for width, batch in sizes:
        x, y = torch.randn(batch, width), torch.randn(batch, 1)
        for mode in modes:
            models = arms(width, x)
            if mode == "compiled":
                torch._dynamo.reset()
                models = {k: torch.compile(m, fullgraph=True, backend=args.backend) for k, m in models.items()}
            fns = {k: train_step(m, x, y) for k, m in models.items()}
            r = ratios(clock.rounds(fns, args.steps, warmup=3), "plain", cuda=False)
            row = ", ".join(f"{k} {v['cpu']:.3f} [{v['cpu_iqr'][0]:.2f}-{v['cpu_iqr'][1]:.2f}]"
                            for k, v in r.items() if k != "plain")  # fmt: skip
            print(f"{width}x{batch} {mode} (plain {r['plain']['ms']:.2f} ms): {row}", flush=True)
    x, y = torch.randn(128, 1024), torch.randn(128, 1)
    peaks, held = {}, {}
    # eager as the Function would run it: GPNActivation takes it under torch.compile only
    gpn_modules._saves_output = lambda x, a, b: torch.is_grad_enabled() and x.requires_grad
    for name, model in arms(1024, x).items():
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.5)
        F.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        peaks[name] = peak_bytes(lambda m=model: F.mse_loss(m(x), y).backward())
        # what the forward leaves for backward (the saved activations): the step's peak is at the end
        # of backward, where every weight gradient exists and most activations are freed already
        held[name] = peak_bytes(lambda m=model: F.mse_loss(m(x), y))
    for label, mem in (("peak of forward + backward", peaks), ("held after forward", held)):
        row = ", ".join(f"{k} {v / mem['plain']:.3f}" for k, v in mem.items() if k != "plain")
        print(f"memory 1024x128, {label} / plain ({mem['plain'] / 2**20:.1f} MiB): {row}")


if __name__ == "__main__":
    main()
