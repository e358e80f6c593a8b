"""The ARP seed experiment (2-D Rastrigin regression) against the plain ladder.

    python examples/arp_rastrigin.py --quick                       # smoke run: 2 arms, 1 rate, 5 epochs
    python examples/arp_rastrigin.py --json out/arp.json --plot out/arp.png   # the full ladder

Protocol (research/arp.md §5.1; the paper's own optimizer and epochs are unknown):

- f(x) = 20 + sum_i (x_i^2 - 10 cos(2 pi x_i)) on a 50 x 50 grid over [-5.12, 5.12]^2;
  inputs and target min-max scaled to [0, 1]. Seed k splits the 2500 points into 2000
  train, 250 validation, 250 test points and draws the weights and the batch order.
- Model: 2-50-50-50-1, sigmoid hidden units, a plain linear output unit.
- Every arm: Adam, batch 64, 40 epochs, MSE loss, each learning rate of the sweep, 3 seeds;
  its rate is the one with the lowest mean validation MSE; the table gives test and train
  MSE at that rate, mean ± sd over the seeds, next to the target variance (the MSE of
  predicting the mean: a model at that level has learnt nothing).
- Arms: ``classic`` is the poster's (PyTorch's default init); ``arp`` is ``vgpcompile(classic,
  passes=["arp"], options={"arp": {"L": 6}}, input_range=(0, 1))`` of the same weights (q = 2
  in every layer: the data and the sigmoid outputs lie in [0, 1]); ``arp on xavier`` is the
  same pass on the standard init; the plain ladder (vgpcompile.tools.baselines) gives the
  standard inits for sigmoid (Xavier first) and BatchNorm, LayerNorm, residual and
  LayerNorm + residual variants of the standard one.

Threads: one torch thread (tiny model: one is fastest and keeps runs reproducible), unless
``--threads`` is given. Time on the project's shared 2-core machine: ``--quick`` ~20 s, the
full ladder about 10-20 minutes. ``examples/make_results.py`` turns the JSON and PNG into
docs/results.md.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vgpcompile import vgpcompile
from vgpcompile.tools.baselines import Arm, Comparison, Sweep, init_linear, ladder, plain_mlp, run_arms, write_json

EPOCHS, L_DEFAULT = 40, 6.0


def rastrigin_data(grid: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    axis = torch.linspace(-5.12, 5.12, grid, dtype=torch.float64)
    x = torch.cartesian_prod(axis, axis)
    y = 20 + (x**2 - 10 * torch.cos(2 * math.pi * x)).sum(1, keepdim=True)

    def minmax(t: torch.Tensor) -> torch.Tensor:
        return (t - t.min(0).values) / (t.max(0).values - t.min(0).values)

    return minmax(x).float(), minmax(y).float()


def split(seed: int) -> dict[str, torch.Tensor]:
    x, y = rastrigin_data()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1000 + seed))
    parts = {"train": perm[:2000], "val": perm[2000:2250], "test": perm[2250:]}
    return {f"{w}_{k}": t[idx] for k, idx in parts.items() for w, t in (("x", x), ("y", y))}


def classic_mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(2, 50),
        nn.Sigmoid(),
        nn.Linear(50, 50),
        nn.Sigmoid(),
        nn.Linear(50, 50),
        nn.Sigmoid(),
        nn.Linear(50, 1),
    )


def build_classic(seed: int, init: str = "default") -> nn.Module:
    torch.manual_seed(seed)
    net = classic_mlp()
    if init != "default":
        for m in net.modules():
            if isinstance(m, nn.Linear):
                init_linear(m, init, "sigmoid")
    return net


def build_arp(seed: int, init: str, L: float, floor: float | None = None) -> nn.Module:
    options = {"arp": {"L": L} if floor is None else {"L": L, "floor": floor}}
    return vgpcompile(copy.deepcopy(build_classic(seed, init)), passes=["arp"], options=options, input_range=(0.0, 1.0))


def build_ladder(seed: int, arm: Arm) -> nn.Module:
    return plain_mlp("sigmoid", 2, 50, 2, 1, arm, seed=seed)


def arms(args: argparse.Namespace) -> dict:
    out = {
        "classic (default init)": ("plain", partial(build_classic, init="default")),
        "arp": ("compiled", partial(build_arp, init="default", L=args.L, floor=args.floor)),
    }
    if args.ladder == "none":
        return out
    out["arp on xavier"] = ("compiled", partial(build_arp, init="xavier", L=args.L, floor=args.floor))
    rungs = [a for a in ladder("sigmoid") if a.init != "default" or a.norm or a.residual]
    for arm in rungs:
        kind = "architectural" if arm.norm or arm.residual else "plain"
        build = partial(build_classic, init=arm.init) if kind == "plain" else partial(build_ladder, arm=arm)
        out[arm.name] = (kind, build)
    return out


def train(model: nn.Module, lr: float, seed: int, data: dict, epochs: int, batch: int = 64) -> dict:
    """Adam on MSE; the final train, validation and test MSE on the full sets."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    n = len(data["x_train"])
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=order).split(batch):
            opt.zero_grad(set_to_none=True)
            loss = F.mse_loss(model(data["x_train"][idx]), data["y_train"][idx])
            if not torch.isfinite(loss):
                return {"val_mse": math.nan, "test_mse": math.nan, "train_mse": math.nan}
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        out = {f"{s}_mse": F.mse_loss(model(data[f"x_{s}"]), data[f"y_{s}"]).item() for s in ("val", "test", "train")}
    model.train()
    return out


def plot(comparison: Comparison, variance: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = sorted(comparison.arms, key=lambda a: a.summary("test_mse")[0])
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(arms) + 1.5))
    colors = {"plain": "tab:blue", "architectural": "tab:green", "compiled": "tab:red"}
    for i, arm in enumerate(arms):
        mean, sd, _ = arm.summary("test_mse")
        ax.barh(i, mean, xerr=sd, color=colors.get(arm.kind, "gray"))
    ax.axvline(variance, color="gray", linestyle="--", linewidth=1, label=f"target variance {variance:.4f}")
    ax.set(yticks=range(len(arms)), yticklabels=[f"{a.name} (lr {a.best_lr:g})" for a in arms], xscale="log",
           xlabel="test MSE at each arm's best lr, mean ± sd (red: compiled, green: architectural)")  # fmt: skip
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    ax.set_title("2-D Rastrigin, 2-50-50-50-1 sigmoid MLP, Adam", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> Comparison:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="classic and arp only, lr 1e-3, 5 epochs")
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--lrs", type=lambda s: tuple(float(v) for v in s.split(",")), default=(1e-3, 3e-3, 1e-2))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--ladder", choices=["full", "none"], default="full", help="'none': classic and arp only")
    ap.add_argument("--L", type=float, default=L_DEFAULT, help="ARP pivot target (the poster's 6)")
    ap.add_argument("--floor", type=float, default=None, help="arp's pivot floor (default the pass's; 0: the paper)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, help="write every run's metrics to this JSON file")
    ap.add_argument("--plot", type=Path, help="write a bar chart of test MSE to this PNG")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.lrs, args.ladder = 5, (1e-3,), "none"
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    sweep = Sweep(tuple(args.lrs), tuple(range(args.seeds)), select="val_mse")
    data = {seed: split(seed) for seed in sweep.seeds}
    variance = rastrigin_data()[1].var(unbiased=False).item()
    loop = lambda model, lr, seed: train(model, lr, seed, data[seed], args.epochs)  # noqa: E731
    results = run_arms(arms(args), loop, sweep, progress=lambda s: print(s, flush=True))
    budget = f"2-D Rastrigin, 2-50-50-50-1 sigmoid MLP, Adam, batch 64, {args.epochs} epochs ({32 * args.epochs} steps)"
    comparison = Comparison(
        "arp against the plain ladder", budget, sweep, results, {"target variance (predict the mean)": variance},
        ("test_mse", "train_mse"), {},
    )  # fmt: skip
    seconds = time.perf_counter() - start
    print(f"\n{comparison.table()}\n\n{comparison.lr_table('test_mse')}\n\ntotal {seconds:.0f}s")
    if args.json:
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        write_json(args.json, {"example": "arp_rastrigin", "config": config, "seconds": round(seconds, 1),
                               "threads": args.threads, "comparison": comparison.to_dict()})  # fmt: skip
    if args.plot:
        plot(comparison, variance, args.plot)
    return comparison


if __name__ == "__main__":
    main(sys.argv[1:])
