"""The direction of the BSNN paper's Table 1 (research/bsnn.md §3) on scikit-learn digits.

    python examples/bsnn_table.py --quick                   # depth 30, width 64: ~2 minutes
    python examples/bsnn_table.py --out table.md            # depth 200, width 256: ~13 minutes
    python examples/bsnn_table.py --lr 1e-4 --epochs 10     # the authors' rate, no sweep: ~10 min

Timings on 2 uncontended CPU cores: one epoch of one depth-200 width-256 run takes 4-5 s
(width 500 takes ~4x, so the default is 256); ``--jobs`` runs in parallel processes.

What the runs showed (closing note of issue 4): at depth 30 the sweep's rate suits both
arms and the paper's direction appears (ReLU, leaky ReLU, GELU at chance without GPN,
learning with it). At depth 200 the two arms want rates two orders apart: GPN nets' weight
gradients are ~15x larger per layer (tests/test_bsnn.py), they stay at chance at 1e-2 and
learn at the authors' 1e-4, where the plain arms learn slowly or not at all. A shared
sweep of one or two epochs therefore picks the plain arms' rate; ``--lr 1e-4``
reproduces the paper's rows for ELU, SELU and GELU, not (in 230 steps; the paper trained
47k) for ReLU and leaky ReLU.

The paper's architecture, as its released code builds it (research/bsnn.md §2.1): an input
Linear with bias, ``depth`` square hidden Linear layers without bias, an output Linear with
bias; the same activation after every layer but the last. Two arms per activation, the
paper's rows:

- plain: the paper's "Tanh", "ReLU", ... rows: orthogonal hidden weights kept by unit-norm
  rows (``orthogonal`` with ``keep="rownorm"``, what the authors' code does), plain activation.
- bsnn: the paper's "-GPN" rows: the same plus ``gpn`` (``root="paper"``: the authors' b
  roots, the negative one for GELU), i.e. passes ``["gpn", "orthogonal"]``.
- default (``--arms plain,bsnn,default``): no vgpcompile at all, PyTorch's default init.

As the authors: input and output layers orthogonally initialized (``nn.init.orthogonal_``)
and left unconstrained, SGD with momentum 0.5, batch 64, cross-entropy, the last epoch
reported. One learning rate for every arm and activation, picked by a short sweep on a
validation split of the training set (the best mean validation accuracy over all runs).

Digits has 64 inputs, fewer than the width, so the semi-orthogonal input layer has
orthonormal columns and preserves ‖x‖; the standardized input is scaled by
sqrt(width / 64) so that the first hidden layer sees ‖h‖² ≈ width, the thin shell the
authors' 784 -> 500 layer gives on MNIST. Accuracies are % (train: a separate pass over
the whole training set in eval mode, not the authors' running minibatch accuracy).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import torch
from torch import nn

from vgpcompile import vgpcompile

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "gelu": nn.GELU,
}
# research/bsnn.md §3, MNIST without BN: (train, test) of the plain and the GPN row.
PAPER_MNIST = {
    "tanh": ((99.05, 96.57), (99.81, 95.54)),
    "relu": ((11.24, 11.35), (33.28, 28.13)),
    "leaky_relu": ((11.24, 11.35), (43.17, 49.28)),
    "elu": ((99.06, 95.41), (100.00, 96.56)),
    "selu": ((99.86, 97.33), (99.92, 96.97)),
    "gelu": ((11.24, 11.35), (97.67, 95.82)),
}
ARMS = ("plain", "bsnn", "default")


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def digits(width: int, seed: int = 0, validation: bool = False) -> Data:
    """Digits split 80/20 (stratified); with ``validation`` the training part is split again."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    if validation:
        x_tr, x_te, y_tr, y_te = train_test_split(x_tr, y_tr, test_size=0.2, stratify=y_tr, random_state=seed)
    mean, std = x_tr.mean(0), x_tr.std(0)
    std[std < 1e-8] = 1.0
    scale = math.sqrt(width / x.shape[1])

    def prep(a):
        return torch.tensor((a - mean) / std * scale, dtype=torch.float32)

    return Data(prep(x_tr), torch.tensor(y_tr), prep(x_te), torch.tensor(y_te))


def mlp(act: str, width: int, depth: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(64, width), ACTIVATIONS[act]()]
    for _ in range(depth):
        layers += [nn.Linear(width, width, bias=False), ACTIVATIONS[act]()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def build(arm: str, act: str, width: int, depth: int, seed: int, root: str = "paper") -> nn.Module:
    net = mlp(act, width, depth, seed)
    if arm == "default":
        return net
    first, last = net[0], net[-1]
    for layer in (first, last):  # the authors' unconstrained input and output layers
        nn.init.orthogonal_(layer.weight)
    ends = ["0", str(len(net) - 1)]
    if arm == "bsnn":
        net = vgpcompile(net, passes=["gpn"], options={"gpn": {"root": root}})
    # the selection is shared by all passes of one call, so the hidden layers get theirs alone
    options = {"orthogonal": {"keep": "rownorm", "seed": seed}}
    return vgpcompile(net, passes=["orthogonal"], options=options, ignore=ends)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        hits = sum((model(xb).argmax(1) == yb).sum().item() for xb, yb in zip(x.split(500), y.split(500)))
    model.train()
    return 100.0 * hits / len(y)


def train(model: nn.Module, data: Data, lr: float, epochs: int, seed: int, batch: int = 64) -> tuple[float, float]:
    """(train %, test %) after ``epochs``; a run whose loss stops being finite scores chance."""
    device = next(model.parameters()).device
    x, y = data.x_train.to(device), data.y_train.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.5)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(batch):
            idx = idx.to(device)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            if not torch.isfinite(loss):
                return float("nan"), float("nan")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return accuracy(model, x, y), accuracy(model, data.x_test.to(device), data.y_test.to(device))


def run_one(task: tuple) -> tuple[float, float, float]:
    """One training run, in a worker process: (train %, test %, seconds)."""
    arm, act, lr, epochs, validation, args = task
    torch.set_flush_denormal(True)  # ELU's exp(x) underflows deep in the net: 9x slower steps on x86
    if args.device == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.jobs))
    start = time.perf_counter()
    model = build(arm, act, args.width, args.depth, args.seed, args.root).to(args.device)
    result = train(model, digits(args.width, args.seed, validation), lr, epochs, args.seed)
    return (*result, time.perf_counter() - start)


def run_all(tasks: list[tuple], jobs: int) -> Iterator[tuple[float, float, float]]:
    """Results in task order, each as soon as it and those before it are done."""
    if jobs <= 1:
        yield from map(run_one, tasks)
        return
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    with ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
        yield from pool.map(run_one, tasks)


def sweep(args: argparse.Namespace) -> tuple[float, dict[float, float]]:
    """The learning rate with the best mean validation accuracy over every arm and activation."""
    tasks = [
        (arm, act, lr, args.sweep_epochs, True, args)
        for lr in args.lrs
        for arm in args.arms
        for act in args.activations
    ]
    scores: dict[float, list[float]] = {lr: [] for lr in args.lrs}
    for task, (_, val, sec) in zip(tasks, run_all(tasks, args.jobs)):
        scores[task[2]].append(0.0 if math.isnan(val) else val)
        print(f"  sweep {task[1]:>10} {task[0]:>7} lr={task[2]:g}: validation {fmt(val)}  ({sec:.0f}s)", flush=True)
    means = {lr: statistics.fmean(v) for lr, v in scores.items()}
    for lr, mean in means.items():
        print(f"  sweep lr={lr:g}: mean validation accuracy {mean:.2f}% over {len(scores[lr])} runs", flush=True)
    return max(means, key=means.get), means


def fmt(v: float) -> str:
    return "diverged" if math.isnan(v) else f"{v:.2f}"


def table(results: dict, args: argparse.Namespace, lr: float, means: dict[float, float]) -> str:
    arms = list(args.arms)
    head = ["activation"] + [f"{a} {s}" for a in arms for s in ("train", "test")] + ["paper plain", "paper GPN"]
    how = (
        f"sweep over {', '.join(f'{k:g}' for k in means)} on a validation split, {args.sweep_epochs} epochs: "
        + ", ".join(f"{k:g} -> {v:.1f}%" for k, v in means.items())
        if means
        else "rate given with --lr, no sweep"
    )
    lines = [
        f"digits, depth {args.depth}, width {args.width}, SGD lr {lr:g} momentum 0.5, batch 64, "
        f"{args.epochs} epochs, seed {args.seed} ({how}). Paper: MNIST, depth 200, width 500, 50 epochs, "
        "train / test %.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for act in args.activations:
        cells = [fmt(v) for arm in arms for v in results[arm, act]]
        (pp, pg) = PAPER_MNIST[act]
        cells += [f"{pp[0]:.2f} / {pp[1]:.2f}", f"{pg[0]:.2f} / {pg[1]:.2f}"]
        lines.append(f"| {act} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="depth 30, width 64, 4 epochs, a 2-point sweep")
    p.add_argument("--depth", type=int, default=200)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lrs", type=lambda s: [float(v) for v in s.split(",")], default=[1e-4, 1e-3, 1e-2])
    p.add_argument("--lr", type=float, help="skip the sweep and use this rate")
    p.add_argument("--sweep-epochs", type=int, default=1)
    p.add_argument("--arms", type=lambda s: s.split(","), default=["plain", "bsnn"])
    p.add_argument("--activations", type=lambda s: s.split(","), default=list(ACTIVATIONS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", choices=["paper", "minus", "plus"], default="paper", help="gpn root (default: paper)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (CPU threads are shared out)")
    p.add_argument("--out", help="also write the Markdown table to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.depth, args.width, args.epochs, args.sweep_epochs, args.lrs = 30, 64, 4, 2, [1e-2, 3e-2]
    bad = [a for a in args.arms if a not in ARMS] + [a for a in args.activations if a not in ACTIVATIONS]
    if bad:
        p.error(f"unknown arm or activation {bad[0]!r}")
    return args


def main(argv: list[str] | None = None) -> str:
    args = parse(argv)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {args.jobs} jobs, device {args.device}", flush=True)
    start = time.perf_counter()
    lr, means = (args.lr, {}) if args.lr else sweep(args)
    tasks = [(arm, act, lr, args.epochs, False, args) for act in args.activations for arm in args.arms]
    results = {}
    for (arm, act, *_), (tr, te, sec) in zip(tasks, run_all(tasks, args.jobs)):
        results[arm, act] = (tr, te)
        print(f"  {act:>10} {arm:>7}: train {fmt(tr)}  test {fmt(te)}  ({sec:.0f}s)", flush=True)
    text = table(results, args, lr, means)
    print(f"\n{text}\n\ntotal {time.perf_counter() - start:.0f}s")
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    return text


if __name__ == "__main__":
    main()
