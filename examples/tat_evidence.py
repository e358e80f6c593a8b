"""Evidence for the ``tat`` pass (issue 22), three experiments, each written as a Comparison JSON:

    python examples/tat_evidence.py demo --merge docs/results/demo_sgd.json   # tat as one more demo arm
    python examples/tat_evidence.py bsnn --merge docs/results/bsnn_table.json # and in the bsnn table
    python examples/tat_evidence.py arp --merge docs/results/arp_rastrigin.json # and on Rastrigin
    python examples/tat_evidence.py rai --merge docs/results/rai_ladder.json   # and in rai's ladder
    python examples/tat_evidence.py conv --quick --json docs/results/tat_conv.json
    python examples/tat_evidence.py conv --quick --arms tat bsnn --json docs/results/tat_conv.json  # rerun two arms
    python examples/tat_evidence.py conv --quick --channels 32 --seeds 0 --arms tat kaiming+batchnorm+residual \
        --json docs/results/tat_conv_32.json                                   # the width check
    python examples/tat_evidence.py kernel --json docs/results/tat_conv_kernel.json
    python examples/tat_evidence.py gpn --quick --json docs/results/tat_gpn_robustness.json
    python examples/tat_evidence.py gpn --quick --arms tat 'bsnn (gpn + weights kept orthogonal)' \
        --json docs/results/tat_gpn_robustness.json                           # rerun two arms

- demo: the demo's loop, data, sweep and seeds (vgpcompile.tools.demo) for the ``tat`` arm only;
  the arm is added to the demo's saved comparison (the other arms are not rerun).
- conv: where DKS/TAT are strongest, a deep vanilla convolutional net (no normalisation, no
  skips; 3x3 convs, leaky ReLU, global average pooling, a Linear readout) on sklearn's digits
  (8x8, standardised), against tat, bsnn (gpn + orthogonal), the plain ladder (Kaiming,
  orthogonal with the activation's gain), BatchNorm, a residual connection, and BatchNorm +
  residual (ResNet-style), all at equal steps, SGD with momentum 0.9.
- gpn: the demo's net on the issue's variation (1 000 training points, SGD momentum 0.9,
  batch 64, 300 steps, lr 1e-3/1e-2/1e-1, seeds 0-2): gpn as the demo compiles it, gpn from
  orthogonal gain-1 weights without the demo's input-layer scaling, bsnn (gpn with weights kept
  orthogonal), gpn with gradient clipping, tat, and the plain reference arms; each run records
  the step it diverged at and the largest spectral norm of a hidden weight at its last finite
  step, which is what the cause analysis reads.

Every compiled arm's passes draw their random init from the run's seed (``seeded_passes``), so
an arm's seeds differ in init as well as in data and batch order. ``--arms`` runs only the
named arms and puts them in place of the same arms of the saved ``--json`` (``added`` in the
JSON records the command). ``kernel``: the tat-compiled CNN at init against the q and C-map
prediction per channel count.

``--quick`` keeps the CPU small (the committed JSONs); without it the runs are the full size
(the ``experiment`` marker's test runs them).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import torch
from torch import nn

from vgpcompile import vgpcompile
from vgpcompile.core.report import VgpWarning
from vgpcompile.passes.tat import init_layer
from vgpcompile.tools.baselines import (
    ORTHOGONAL1,
    Arm,
    ArmResult,
    Comparison,
    Residual,
    Sweep,
    gain,
    plain_mlp,
    run_arms,
    seeded_passes,
    write_json,
)
from vgpcompile.tools.demo import DemoConfig, compiled_rival, fit, moons
from vgpcompile.tools.demo import train as demo_train


def quietly(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VgpWarning)
        return fn(*args, **kwargs)


# ---- demo: one more arm -------------------------------------------------------------------------


def demo(path: Path, rival: str = "tat") -> dict:
    data = json.loads(path.read_text())
    saved = Comparison.from_dict(data["comparison"])
    cfg_in = data["config"]
    cfg = DemoConfig(cfg_in["activation"], cfg_in["depth"], cfg_in["width"], cfg_in["steps"],
                     optimizer=cfg_in["optimizer"], lrs=tuple(saved.sweep.lrs),
                     seeds=len(saved.sweep.seeds))  # fmt: skip
    start = time.perf_counter()
    (arm,) = run_arms({rival: ("compiled", lambda seed: quietly(compiled_rival, seed, cfg, rival))},
                      lambda m, lr, seed: demo_train(m, lr, seed, cfg), saved.sweep, progress=print)  # fmt: skip
    saved.arms = [a for a in saved.arms if a.name != rival] + [arm]
    data["comparison"] = saved.to_dict()
    data.setdefault("added", {})[rival] = {"command": f"python examples/tat_evidence.py demo --merge {path}",
                                           "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    return data


def bsnn_table(path: Path) -> dict:
    """The tat arm for each activation of examples/bsnn_table.py's saved comparisons, with its
    loop, data, sweep and seeds (TAT refuses ReLU: that row's arm uses method DKS)."""
    import bsnn_table as bt

    data = json.loads(path.read_text())
    cfg = data["config"]
    start = time.perf_counter()
    for act, raw in data["comparisons"].items():
        saved = Comparison.from_dict(raw)
        splits = {seed: bt.digits(seed) for seed in saved.sweep.seeds}
        method = "DKS" if act == "relu" else "TAT"
        name = "tat" if method == "TAT" else "tat (method DKS: TAT refuses ReLU)"
        build = lambda seed, act=act, method=method: quietly(  # noqa: E731
            vgpcompile,
            bt.paper_mlp(act, cfg["width"], cfg["depth"], seed),
            passes=seeded_passes([f"tat{{method={method}}}"], seed),
        )
        loop = lambda m, lr, seed, splits=splits: bt.train(m, lr, seed, splits[seed], cfg["epochs"], "cpu")  # noqa: E731
        print(f"{act}:", flush=True)
        (arm,) = run_arms({name: ("compiled", build)}, loop, saved.sweep, progress=print)
        saved.arms = [a for a in saved.arms if not a.name.startswith("tat")] + [arm]
        data["comparisons"][act] = saved.to_dict()
    data.setdefault("added", {})["tat"] = {"command": f"python examples/tat_evidence.py bsnn --merge {path}",
                                           "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    return data


def arp_table(path: Path) -> dict:
    """The tat arm in examples/arp_rastrigin.py's saved comparison (its 3-layer sigmoid MLP, loop,
    data, sweep and seeds)."""
    import arp_rastrigin as ar

    data = json.loads(path.read_text())
    saved = Comparison.from_dict(data["comparison"])
    splits = {seed: ar.split(seed) for seed in saved.sweep.seeds}
    start = time.perf_counter()
    (arm,) = run_arms({"tat": ("compiled", lambda seed: quietly(vgpcompile, ar.build_classic(seed),
                                                                     passes=seeded_passes(["tat"], seed)))},
                      lambda m, lr, seed: ar.train(m, lr, seed, splits[seed], data["config"]["epochs"]),
                      saved.sweep, progress=print)  # fmt: skip
    saved.arms = [a for a in saved.arms if a.name != "tat"] + [arm]
    data["comparison"] = saved.to_dict()
    data.setdefault("added", {})["tat"] = {"command": f"python examples/tat_evidence.py arp --merge {path}",
                                           "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    return data


def rai_ladder(path: Path) -> dict:
    """The tat arm in examples/rai_moons.py's ladder comparison (the 101-layer sigmoid net,
    full-batch Adam, its data, sweep and seeds)."""
    import rai_moons as rm

    from vgpcompile import rai

    data = json.loads(path.read_text())
    saved = Comparison.from_dict(data["comparison"])
    cfg = data["config"]
    x, y = rm.moons(100, 42)
    xv, yv = rm.moons(200, rm.VAL_SEED)
    xt, yt = rm.moons(1000, rm.TEST_SEED)

    def train(net: nn.Module, lr: float, seed: int) -> dict:
        rm.train_plain(net, x, y, xt, yt, epochs=cfg["steps"], batch=len(x), optimizer="adam", lr=lr, seed=seed)
        val = rai.evaluate(net, xv, yv)
        return {"val_loss": val[0], "val_acc": val[1], **rm._chained(net, x, y, xt, yt)}

    build = lambda seed: quietly(vgpcompile, plain_mlp("sigmoid", cfg["depth"] - 1, cfg["width"], 2, 1,  # noqa: E731
                                                         Arm("default"), seed=seed),
                                        passes=seeded_passes(["tat"], seed))  # fmt: skip
    start = time.perf_counter()
    (arm,) = run_arms({"tat": ("compiled", build)}, train, saved.sweep, progress=print)
    saved.arms = [a for a in saved.arms if a.name != "tat"] + [arm]
    data["comparison"] = saved.to_dict()
    data.setdefault("added", {})["tat"] = {"command": f"python examples/tat_evidence.py rai --merge {path}",
                                           "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    return data


# ---- conv: a deep vanilla CNN -------------------------------------------------------------------


def digits(seed: int) -> dict[str, torch.Tensor]:
    """sklearn's 8x8 digits, standardised over all pixels (mean q = 1; with one channel a
    location's q is its pixel's square, not the 1 per location DKS assumes: docs/results.md),
    split 1 197 / 300 / 300 by a seeded permutation."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None]
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1000 + seed))
    x, y = x[perm], y[perm]
    return {"x_train": x[:1197], "y_train": y[:1197], "x_val": x[1197:1497], "y_val": y[1197:1497],
            "x_test": x[1497:], "y_test": y[1497:]}  # fmt: skip


def deep_cnn(depth: int, channels: int, arm: Arm, seed: int, act: str = "leaky_relu") -> nn.Sequential:
    """Conv(1, C) + act, ``depth`` blocks Conv(C, C, 3x3) [+ BatchNorm] + act [as x + block],
    global average pooling, Linear(C, 10): ``depth + 2`` weight layers."""
    torch.manual_seed(seed)
    act_cls = nn.LeakyReLU if act == "leaky_relu" else nn.Tanh
    layers: list[nn.Module] = [nn.Conv2d(1, channels, 3, padding=1), act_cls()]
    for _ in range(depth):
        block: list[nn.Module] = [nn.Conv2d(channels, channels, 3, padding=1)]
        if arm.norm == "batch":
            block.append(nn.BatchNorm2d(channels))
        block.append(act_cls())
        layers.append(Residual(nn.Sequential(*block)) if arm.residual else nn.Sequential(*block))
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if arm.init == "kaiming":
                    nn.init.kaiming_normal_(m.weight, a=0.01, nonlinearity="leaky_relu")
                elif arm.init == "orthogonal":
                    nn.init.orthogonal_(m.weight, gain=gain(act))
                elif arm.init == ORTHOGONAL1:
                    nn.init.orthogonal_(m.weight)
                m.bias.zero_()
    return net


def conv_train(model: nn.Module, lr: float, seed: int, steps: int) -> dict[str, float]:
    """The demo's loop (SGD, momentum 0.9, batch 64) on the digits; no test loss, only accuracy."""
    return fit(model, digits(seed), lr, seed, DemoConfig(steps=steps), losses=("val", "train"))


def conv(
    quick: bool,
    only: set[str] | None = None,
    channels: int | None = None,
    seeds: tuple[int, ...] | None = None,
    steps: int | None = None,
) -> dict:
    """The comparison; ``channels``, ``seeds`` and ``steps`` override the size's (the width check)."""
    depth, width, size_steps = (50, 8, 120) if quick else (60, 32, 600)
    channels, steps = channels or width, steps or size_steps
    sweep = Sweep((1e-3, 1e-2, 1e-1), seeds or ((0, 1) if quick else (0, 1, 2)))
    plain = lambda arm: partial(deep_cnn, depth, channels, arm)  # noqa: E731
    compiled = lambda passes: lambda seed: quietly(vgpcompile, deep_cnn(depth, channels, Arm(ORTHOGONAL1), seed),  # noqa: E731
                                                   passes=seeded_passes(passes, seed))  # fmt: skip
    builders = {
        "kaiming": ("plain", lambda seed: plain(Arm("kaiming"))(seed)),
        "orthogonal": ("plain", lambda seed: plain(Arm("orthogonal"))(seed)),
        "kaiming+batchnorm": ("architectural", lambda seed: plain(Arm("kaiming", norm="batch"))(seed)),
        "kaiming+residual": ("architectural", lambda seed: plain(Arm("kaiming", residual=True))(seed)),
        "kaiming+batchnorm+residual": ("architectural",
                                       lambda seed: plain(Arm("kaiming", norm="batch", residual=True))(seed)),
        "bsnn": ("compiled", compiled(["gpn", "orthogonal"])),
        "tat": ("compiled", compiled(["tat"])),
    }  # fmt: skip
    start = time.perf_counter()
    builders = {k: v for k, v in builders.items() if only is None or k in only}
    arms = run_arms(builders, lambda m, lr, seed: conv_train(m, lr, seed, steps), sweep, progress=print)
    title = f"deep vanilla CNN: {depth + 2} weight layers, {channels} channels, leaky ReLU, digits 8x8"
    comparison = Comparison(title, f"SGD momentum 0.9, batch 64, {steps} steps", sweep, arms,
                            {"chance accuracy": 0.1}, ("test_acc", "val_loss", "train_loss"), {"test_acc": True},
                            digits=3)  # fmt: skip
    return {"example": "tat_conv", "config": {"quick": quick, "depth": depth, "channels": channels, "steps": steps},
            "seconds": round(time.perf_counter() - start, 1), "threads": torch.get_num_threads(),
            "comparison": comparison.to_dict()}  # fmt: skip


def leaky_relu_c_map(c: torch.Tensor, slope: float) -> torch.Tensor:
    """The C map of TAT's transformed leaky ReLU (q = 1): c + (1 - s)^2 / (pi (1 + s^2)) *
    (sqrt(1 - c^2) - c arccos c) (Zhang et al. 2022, eq. 6), the prediction at init."""
    c = c.clamp(-1.0, 1.0)
    return c + (1 - slope) ** 2 / (math.pi * (1 + slope**2)) * ((1 - c * c).sqrt() - c * torch.acos(c))


def conv_kernel(depth: int = 50, widths: tuple[int, ...] = (8, 32, 128), tat: str = "tat") -> dict:
    """The conv net compiled with tat at init, per channel count, against what DKS/TAT predict
    for it: q (mean square of an activation's input; the prediction is the input's q at every
    layer, per location, since TAT's leaky ReLU keeps q exactly in a wide net) and c (the
    cosine between two examples' vectors at the same location; the prediction is the C map
    applied layer by layer to the input's c there). On 64 digits (one channel: at a location
    the input is one number, q = x^2) and on Gaussian inputs with ``width`` channels (q = 1 per
    location, the methods' assumption), so the width and the input can be told apart."""
    from vgpcompile.passes.tat import TATActivation

    rows = {}
    for width in widths:
        model = quietly(vgpcompile, deep_cnn(depth, width, Arm(ORTHOGONAL1), 0), passes=[tat])
        slope = model.vgp_report.stats["tat"]["negative_slope"]
        seen: list[torch.Tensor] = []
        for mod in model.modules():
            if isinstance(mod, TATActivation):
                mod.register_forward_hook(lambda m, inp, out, seen=seen: seen.append(inp[0].detach()))
        gauss = torch.randn(64, width, 8, 8, generator=torch.Generator().manual_seed(0))
        inputs = {"digits": digits(0)["x_train"][:64], "gaussian": gauss}
        for kind, x in inputs.items():
            seen.clear()
            first = model.get_submodule("0")
            if kind == "gaussian":  # the same network behind a width-channel input: the first conv as a hidden one
                model.add_module("0", nn.Conv2d(width, width, 3, padding=1))
                init_layer(model.get_submodule("0"), 0, "0")
            with torch.no_grad():
                model(x)
            model.add_module("0", first)
            rows[f"{width} {kind}"] = kernel_figures(x, seen, slope)
    return {"example": "tat_conv_kernel", "config": {"depth": depth, "widths": list(widths)}, "rows": rows}


def kernel_figures(x: torch.Tensor, pre: list[torch.Tensor], slope: float) -> dict:
    """q and c per layer against the wide-net prediction (pairs of examples: 0 with 1, 2 with 3, ...)."""

    def cos(h: torch.Tensor) -> torch.Tensor:
        return (h[0::2] * h[1::2]).sum(1) / (h[0::2].norm(dim=1) * h[1::2].norm(dim=1)).clamp(min=1e-12)

    q0, c_pred = x.pow(2).mean(1), cos(x)
    qs, ratio_sd, c_err = [], [], []
    for layer, h in enumerate(pre):
        if layer:
            c_pred = leaky_relu_c_map(c_pred, slope)
        q = h.pow(2).mean(1)
        keep = q0 > 1e-6
        qs.append(float(q.mean()))
        ratio_sd.append(float((q[keep] / q0[keep]).log().std().exp()))
        c_err.append(float((cos(h) - c_pred).abs().mean()))
    return {"q_every_10": [round(q, 3) for q in qs[::10]], "q_min": min(qs), "q_max": max(qs),
            "q_ratio_geo_sd_last": ratio_sd[-1], "c_error_every_10": [round(e, 4) for e in c_err[::10]],
            "c_error_last": c_err[-1]}  # fmt: skip


# ---- gpn: robustness of the demo's headline -------------------------------------------------------


def gpn_net(seed: int, passes: list[str], scaled_input: bool = True) -> nn.Module:
    net = plain_mlp("gelu", 50, 64, 2, 2, Arm(ORTHOGONAL1), seed=seed)
    if not scaled_input:  # orthogonal gain-1 everywhere, as a user would write it
        with torch.no_grad():
            net[0].weight.div_(math.sqrt(64 / 2))
    return quietly(vgpcompile, net, passes=seeded_passes(passes, seed))


def moons_train(model: nn.Module, lr: float, seed: int, steps: int, n_train: int, clip: float | None) -> dict:
    """The demo's loop on n_train points; records where a run diverged and the largest
    spectral norm of a hidden weight at its last finite step."""
    x, y = moons(n_train + 1024, 100 + seed)
    d = {"x_train": x[:n_train], "y_train": y[:n_train], "x_val": x[n_train:n_train + 512],
         "y_val": y[n_train:n_train + 512], "x_test": x[n_train + 512:], "y_test": y[n_train + 512:]}  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    model.train()
    diverged = None
    for step in range(steps):
        idx = torch.randint(0, n_train, (64,), generator=g)
        loss = nn.functional.cross_entropy(model(d["x_train"][idx]), d["y_train"][idx])
        if not torch.isfinite(loss):
            diverged = step
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    hidden = [m.weight for m in model.modules() if isinstance(m, nn.Linear) and m.weight.shape == (64, 64)]
    with torch.no_grad():
        sigma = max(float(torch.linalg.matrix_norm(w.detach(), 2)) for w in hidden)
    if diverged is not None:
        return {"val_loss": math.nan, "test_acc": math.nan, "diverged_at": diverged, "max_sigma": sigma}
    model.eval()
    with torch.no_grad():
        out = {"val_loss": nn.functional.cross_entropy(model(d["x_val"]), d["y_val"]).item(),
               "test_acc": (model(d["x_test"]).argmax(1) == d["y_test"]).float().mean().item()}  # fmt: skip
    return {**out, "diverged_at": None, "max_sigma": sigma}


def gpn_robustness(quick: bool, only: set[str] | None = None) -> dict:
    sweep = Sweep((1e-3, 1e-2, 1e-1), (0, 1, 2))
    steps, n_train = 300, 1000
    plain = lambda arm: lambda seed: plain_mlp("gelu", 50, 64, 2, 2, arm, seed=seed)  # noqa: E731
    builders = {
        "kaiming": ("plain", plain(Arm("kaiming"))),
        "kaiming+layernorm+residual": ("architectural", plain(Arm("kaiming", norm="layer", residual=True))),
        "gpn (demo: orthogonal1, input layer scaled)": ("compiled", partial(gpn_net, passes=["gpn"])),
        "gpn (orthogonal gain 1, input not scaled)": ("compiled", partial(gpn_net, passes=["gpn"],
                                                                          scaled_input=False)),
        "bsnn (gpn + weights kept orthogonal)": ("compiled", partial(gpn_net, passes=["gpn", "orthogonal"])),
        "tat": ("compiled", lambda seed: quietly(vgpcompile, plain_mlp("gelu", 50, 64, 2, 2, Arm("default"), seed=seed),
                                                 passes=seeded_passes(["tat"], seed))),
    }  # fmt: skip
    start = time.perf_counter()
    clipping = {"gpn + gradient clipping (norm 1)": ("compiled", partial(gpn_net, passes=["gpn"]))}
    builders, clipping = ({k: v for k, v in b.items() if only is None or k in only} for b in (builders, clipping))
    arms = run_arms(builders, lambda m, lr, seed: moons_train(m, lr, seed, steps, n_train, None), sweep, print)
    clipped = run_arms(clipping,
                       lambda m, lr, seed: moons_train(m, lr, seed, steps, n_train, 1.0), sweep, print)  # fmt: skip
    comparison = Comparison("demo net (52-layer GELU MLP, width 64) on 1 000 two-moons points",
                            f"SGD momentum 0.9, batch 64, {steps} steps", sweep, arms + clipped,
                            {"chance accuracy": 0.5}, ("test_acc", "val_loss", "max_sigma"), {"test_acc": True},
                            digits=3)  # fmt: skip
    return {"example": "tat_gpn_robustness", "config": {"quick": quick, "steps": steps, "n_train": n_train},
            "seconds": round(time.perf_counter() - start, 1), "threads": torch.get_num_threads(),
            "comparison": comparison.to_dict()}  # fmt: skip


def fits(arm: ArmResult, lr: float, level: float = 0.9) -> bool:
    """Every seed at ``lr`` finished with test accuracy above ``level``."""
    return all(math.isfinite(v) and v > level for v in arm.values("test_acc", lr))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", choices=["demo", "bsnn", "arp", "rai", "conv", "kernel", "gpn"])
    ap.add_argument("--quick", action="store_true", help="the small committed size")
    ap.add_argument("--json", type=Path, help="write the comparison here")
    ap.add_argument("--merge", type=Path, help="demo: the demo JSON to add the tat arm to (rewritten in place)")
    ap.add_argument("--arms", nargs="+", help="conv, gpn: run only these arms and put them in place of the same "
                    "arms of the saved --json (the other arms are kept; a new file if there is none)")  # fmt: skip
    ap.add_argument("--channels", type=int, help="conv: this many channels instead of the size's")
    ap.add_argument("--seeds", type=int, nargs="+", help="conv: these seeds instead of the size's")
    ap.add_argument("--steps", type=int, help="conv: this many steps instead of the size's")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    merges = {"demo": demo, "bsnn": bsnn_table, "arp": arp_table, "rai": rai_ladder}
    if args.experiment in merges:
        if not args.merge:
            ap.error(f"{args.experiment} needs --merge with the saved JSON to add the tat arm to")
        write_json(args.merge, merges[args.experiment](args.merge))
        return 0
    if args.experiment == "kernel":
        data = conv_kernel()
        print(json.dumps(data["rows"], indent=1))
        if args.json:
            write_json(args.json, data)
        return 0
    only = set(args.arms) if args.arms else None
    if args.experiment == "conv":
        data = conv(args.quick, only, args.channels, tuple(args.seeds) if args.seeds else None, args.steps)
    else:
        data = gpn_robustness(args.quick, only)
    comparison = Comparison.from_dict(data["comparison"])
    print(comparison.table() + "\n\n" + comparison.lr_table("test_acc"))
    if only and args.json and args.json.is_file():  # else a new file with these arms only
        argv_text = shlex.join(["python", "examples/tat_evidence.py", *(argv if argv is not None else sys.argv[1:])])
        data = rerun_into(args.json, data, argv_text)
    if args.json:
        write_json(args.json, data)
    return 0


def rerun_into(path: Path, new: dict, command: str) -> dict:
    """The saved comparison at ``path`` with the arms of ``new`` (a run of some arms, same
    configuration) put in place of the same arms, or after them if it has none of that name;
    ``added`` records which arms that command ran."""
    data = json.loads(path.read_text())
    if data["config"] != new["config"]:
        raise SystemExit(f"{path} was run with {data['config']}, this run with {new['config']}: rerun it whole")
    saved, fresh = Comparison.from_dict(data["comparison"]), Comparison.from_dict(new["comparison"])
    old = {a.name for a in saved.arms}
    saved.arms = [next((f for f in fresh.arms if f.name == a.name), a) for a in saved.arms]
    saved.arms += [f for f in fresh.arms if f.name not in old]
    data["comparison"] = saved.to_dict()
    for arm in fresh.arms:
        data.setdefault("added", {})[arm.name] = {"command": command, "seconds": new["seconds"],
                                                  "rerun": arm.name in old}  # fmt: skip
    return data


if __name__ == "__main__":
    sys.exit(main())
