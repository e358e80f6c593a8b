"""The ARP seed experiment: 2-D Rastrigin regression, classic sigmoid MLP vs the same MLP compiled with ``arp``.

    python examples/arp_rastrigin.py                 # 10 pairs, about a minute on a laptop CPU
    python examples/arp_rastrigin.py --pairs 30      # the poster's 30 pairs

Protocol (research/arp.md §5.1; the paper's own optimizer and epochs are unknown):

- f(x) = 20 + sum_i (x_i^2 - 10 cos(2 pi x_i)) on a 50 x 50 grid over [-5.12, 5.12]^2;
  inputs and target min-max scaled to [0, 1]; 2000 random points train, 500 test.
- Model: 2-50-50-50-1, sigmoid hidden units, a plain linear output unit.
- Pair k: one classic MLP from seed k, and ``vgpcompile(copy, passes=["arp"], options={"arp":
  {"L": 6}}, input_range=(0, 1))`` of it, so both start from identical weights (q = 2 in every
  layer: the data and the sigmoid outputs lie in [0, 1]). Same data split, same batch order.
- Adam (lr 1e-3), batch 64, 40 epochs, MSE loss.

It prints the final test MSE of each pair, mean +- sd of both arms, the number of pairs
where ARP ends lower, and writes the mean +- sd train and test curves to a PNG.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vgpcompile import vgpcompile


def rastrigin_data(grid: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    axis = torch.linspace(-5.12, 5.12, grid, dtype=torch.float64)
    x = torch.cartesian_prod(axis, axis)
    y = 20 + (x**2 - 10 * torch.cos(2 * math.pi * x)).sum(1, keepdim=True)

    def minmax(t: torch.Tensor) -> torch.Tensor:
        return (t - t.min(0).values) / (t.max(0).values - t.min(0).values)

    return minmax(x).float(), minmax(y).float()


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


def train(model: nn.Module, data: dict[str, torch.Tensor], epochs: int, seed: int, batch: int = 64) -> dict:
    """Train with Adam; return per-epoch train and test MSE (evaluated on the full sets)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(seed)
    curves: dict[str, list[float]] = {"train": [], "test": []}
    n = len(data["x_train"])
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=order).split(batch):
            opt.zero_grad(set_to_none=True)
            F.mse_loss(model(data["x_train"][idx]), data["y_train"][idx]).backward()
            opt.step()
        with torch.no_grad():
            curves["train"].append(F.mse_loss(model(data["x_train"]), data["y_train"]).item())
            curves["test"].append(F.mse_loss(model(data["x_test"]), data["y_test"]).item())
    return curves


def run_pair(k: int, x: torch.Tensor, y: torch.Tensor, epochs: int, L: float, floor: float | None = None) -> dict:
    split = torch.randperm(len(x), generator=torch.Generator().manual_seed(1000 + k))
    tr, te = split[:2000], split[2000:2500]
    data = {"x_train": x[tr], "y_train": y[tr], "x_test": x[te], "y_test": y[te]}
    torch.manual_seed(k)
    classic = classic_mlp()
    options = {"L": L} if floor is None else {"L": L, "floor": floor}
    arp = vgpcompile(copy.deepcopy(classic), passes=["arp"], options={"arp": options}, input_range=(0.0, 1.0))
    return {"classic": train(classic, data, epochs, seed=k), "arp": train(arp, data, epochs, seed=k)}


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} +- {sd:.4f}"


def plot(results: list[dict], variance: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, split in zip(axes, ("train", "test")):
        for arm, color in (("classic", "tab:blue"), ("arp", "tab:red")):
            curves = torch.tensor([r[arm][split] for r in results])
            mean, sd = curves.mean(0), curves.std(0) if len(results) > 1 else torch.zeros(curves.shape[1])
            epochs = torch.arange(1, curves.shape[1] + 1)
            ax.plot(epochs, mean, color=color, label=f"{arm} (mean of {len(results)})")
            ax.fill_between(epochs, (mean - sd).clamp_min(1e-6), mean + sd, color=color, alpha=0.2)
        ax.axhline(variance, color="gray", linestyle="--", linewidth=1, label="predict the mean")
        ax.set(title=f"{split} MSE, 2-D Rastrigin", xlabel="epoch", yscale="log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("MSE (scaled target)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=10, help="classic/arp pairs (the poster used 30)")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--L", type=float, default=6.0, help="ARP pivot target (the poster's 6)")
    ap.add_argument("--floor", type=float, default=None, help="arp's pivot floor (default: the pass default)")
    ap.add_argument("--out", type=Path, default=Path("arp_rastrigin.png"), help="where to write the curves")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # tiny models: one thread is fastest and keeps runs reproducible
    x, y = rastrigin_data()
    start = time.perf_counter()
    results = []
    for k in range(args.pairs):
        results.append(run_pair(k, x, y, args.epochs, args.L, args.floor))
        c, a = results[-1]["classic"]["test"][-1], results[-1]["arp"]["test"][-1]
        print(f"pair {k:2d}: final test MSE classic {c:.4f}  arp {a:.4f}", flush=True)
    classic = [r["classic"]["test"][-1] for r in results]
    arp = [r["arp"]["test"][-1] for r in results]
    wins = sum(a < c for a, c in zip(arp, classic))
    variance = y.var(unbiased=False).item()
    print(f"\ntarget variance (predict-the-mean MSE): {variance:.4f}")
    print(f"final test MSE, classic: {mean_sd(classic)}")
    print(f"final test MSE, arp    : {mean_sd(arp)}   (L = {args.L:g})")
    print(f"ARP wins {wins} of {args.pairs} pairs   ({time.perf_counter() - start:.0f} s)")
    plot(results, variance, args.out)
    print(f"curves: {args.out}")
    return {"classic": classic, "arp": arp, "wins": wins, "results": results}


if __name__ == "__main__":
    main()
