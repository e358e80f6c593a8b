"""BSNN's synthetic signal-propagation experiment (seed 004; research/bsnn.md §4), measured with
``vgpcompile.diagnose`` and drawn by its plots.

    python examples/bsnn_depth200.py                    # depth 200, width 500, 500 samples -> out/bsnn_depth200/
    python examples/bsnn_depth200.py --quick --out /tmp/q/     # depth 20, width 64: seconds

The protocol is the authors' ``synthetic.m`` (protocol A of research/bsnn.md §4.1): square
layers h = W x, x <- φ(h); inputs x ~ N(0, I) (on the thin shell); an independent N(0, 1)
error at every output element (diagnose's default projection loss, ∂E/∂y = e / B, so each
weight gradient is the batch mean g xᵀ / n of ``synthetic.m``); float64. The network is the
baseline ladder's MLP (vgpcompile/tools/baselines.py ``plain_mlp``) with d_in = d_out =
width: ``depth`` hidden blocks, so depth + 2 square weight matrices and depth + 1
activations; biases exist but are zero (the ladder's inits zero them, as the authors' hidden
layers have none).

Arms, per activation (tanh and SELU, the two of the seed's figure):

- ``<act> <standard init>``: the plain net as practice builds it, the ladder's standard
  initialisation (Xavier with gain 5/3 for tanh, LeCun for SELU);
- ``<act> orthogonal x gain``: the ladder's orthogonal init with torch's gain for the
  activation (5/3 for tanh, 3/4 for SELU);
- ``<act> orthogonal``: Haar-orthogonal weights, gain 1 (the ``orthogonal`` pass), plain
  activation: the seed figure's "Tanh" / "SELU" rows;
- ``<act>-GPN orthogonal``: ``passes=["bsnn"]`` (gpn with the authors' roots + Haar
  orthogonal weights): the seed figure's "Tanh-GPN" / "SELU-GPN".

Written to ``--out``: ``<act>_gradients.png`` (‖∂E/∂W^l‖_F and ‖x^l‖²/n per layer, one
line per arm), ``<act>_saturation.png``, ``ratios.md`` and ``ratios.json`` (max/min
weight-gradient norm, the BSNN figure of merit, with the absolute norms and diagnose's
verdict per arm).

What the full run showed (width 500, not reduced: 73 s of CPU on one thread, 3.2 GB peak;
seed 0, one top-error draw, so expect ~±20% on the ratios, research/bsnn.md §4.2):

| arm | max/min ‖∂E/∂W‖_F | min | max | ‖x‖²/n 2nd layer → last | verdict |
|---|---|---|---|---|---|
| tanh xavier (gain 5/3) | 2.57e8 | 14.6 | 3.76e9 | 0.577 → 0.424 | exploding_gradients |
| tanh orthogonal x gain 5/3 | 2.47e8 | 14.6 | 3.6e9 | 0.578 → 0.425 | exploding_gradients |
| tanh orthogonal | 1.11 | 1.52 | 1.69 | 0.395 → 0.00252 | collapsing_signal |
| tanh-GPN orthogonal | 2.01 | 20.7 | 41.6 | 1.00 → 0.982 | ok |
| selu lecun | 1.27e3 | 22.4 | 2.84e4 | 0.998 → 0.983 | exploding_gradients |
| selu orthogonal x gain 3/4 | 1.44 | 4.36 | 6.29 | 0.636 → 0.0393 | ok |
| selu orthogonal | 1.04e3 | 22.4 | 2.32e4 | 1.00 → 1.00 | exploding_gradients |
| selu-GPN orthogonal | 1.24 | 21.2 | 26.3 | 1.00 → 0.979 | ok |

The seed's figure is reproduced: SELU with orthogonal weights ≈ 2.3e4 at layer 1 decaying
to ≈ 22 at the top (the slides: 2.2e4), SELU-GPN within [21, 26] (slides: 18–28); ratios
next to research/bsnn.md's re-run (tanh 1.18, tanh-GPN 1.76, SELU 988, SELU-GPN 1.38).
Plain tanh with orthogonal weights has the flattest ratio of all while its signal dies
(the case diagnose's signal rule exists for). The ladder's standard tanh init, Xavier with
torch's gain 5/3, is in the chaotic phase at this depth: gradients grow 2.6e8x toward the
input; LeCun SELU explodes backward like orthogonal SELU.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from vgpcompile import diagnose, vgpcompile
from vgpcompile.tools.baselines import Arm, plain_mlp, standard_inits
from vgpcompile.tools.plots import plot_all, write_text

ACTIVATIONS = ("tanh", "selu")


def arms(activation: str, depth: int, width: int, seed: int) -> dict[str, torch.nn.Module]:
    """The four arms of one activation, in float64."""
    std = standard_inits(activation)[0]
    base = plain_mlp(activation, depth, width, width, width, Arm(std), seed=seed).double()
    gpn = "-GPN"
    return {
        f"{activation} {std}": base,
        f"{activation} orthogonal x gain": plain_mlp(
            activation, depth, width, width, width, Arm("orthogonal"), seed=seed
        ).double(),
        f"{activation} orthogonal": vgpcompile(base, passes=["orthogonal"], options={"orthogonal": {"seed": seed}}),
        f"{activation}{gpn} orthogonal": vgpcompile(
            base, passes=["bsnn"], options={"gpn": {"root": "paper"}, "orthogonal": {"seed": seed}}
        ),
    }


def row(label: str, report) -> dict:
    f = report.before.figures
    return {
        "arm": label,
        "grad_ratio": f.grad_ratio,
        "grad_min": f.grad_min,
        "grad_max": f.grad_max,
        "grad_geomean": f.grad_geomean,
        "signal_2nd": f.signal_first,
        "signal_last": f.signal_last,
        "verdict": ", ".join(report.before.verdict.problems) or "ok",
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| arm | max/min ‖∂E/∂W‖_F | min ‖∂E/∂W‖_F | max ‖∂E/∂W‖_F | geo. mean | ‖x‖²/n 2nd layer | ‖x‖²/n last "
        "| verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            f"{r[k]:.3g}" for k in ("grad_ratio", "grad_min", "grad_max", "grad_geomean", "signal_2nd", "signal_last")
        ]
        lines.append(f"| {r['arm']} | " + " | ".join(cells) + f" | {r['verdict']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="depth 20, width 64, 64 samples")
    p.add_argument("--depth", type=int, default=200)
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--samples", type=int, default=500, help="batch size n (the authors' 500)")
    p.add_argument("--seeds", type=int, default=1, help="top-error draws averaged per arm")
    p.add_argument("--seed", type=int, default=0, help="weights and inputs")
    p.add_argument("--out", default="out/bsnn_depth200", help="directory for the PNGs and the ratio table")
    p.add_argument("--activations", default=",".join(ACTIVATIONS))
    args = p.parse_args(argv)
    if args.quick:
        args.depth, args.width, args.samples = 20, 64, 64
    torch.set_num_threads(1)
    out = Path(args.out)
    x = torch.randn(args.samples, args.width, generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64)
    print(
        f"BSNN synthetic: {args.depth} hidden blocks, width {args.width}, {args.samples} samples, float64, "
        f"independent N(0,1) top error, {args.seeds} seed(s)"
    )
    rows = []
    for act in args.activations.split(","):
        t0 = time.perf_counter()
        reports = {}
        for label, model in arms(act, args.depth, args.width, args.seed).items():
            # the figure and ratio table only: no candidate passes compiled (verify=False)
            reports[label] = diagnose(model, x, seeds=args.seeds, inplace=True, verify=False)
            rows.append(row(label, reports[label]))
            del model
        named = {label: r.before.measurement for label, r in reports.items()}
        title = f"{act}: depth {args.depth}, width {args.width}, n = {args.samples}"
        for path in plot_all(named, out, title=title, prefix=f"{act}_"):
            print(f"  wrote {path}")
        print(f"  {act}: {time.perf_counter() - t0:.0f} s")
    text = table(rows)
    print(text)
    write_text(out / "ratios.md", text + "\n")
    write_text(out / "ratios.json", json.dumps([{k: _json(v) for k, v in r.items()} for r in rows], indent=2))
    return rows


def _json(v):
    return str(v) if isinstance(v, float) and not math.isfinite(v) else v


if __name__ == "__main__":
    main(sys.argv[1:])
