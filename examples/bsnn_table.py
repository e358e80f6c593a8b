"""The BSNN paper's Table 1 (research/bsnn.md §3) on scikit-learn digits, against the plain ladder.

    python examples/bsnn_table.py --quick                  # smoke run: depth 20, width 64, 2 activations
    python examples/bsnn_table.py --json out/bsnn.json     # depth 30, width 128, every activation and arm

Per activation, every arm gets the same loop (the authors': SGD with momentum 0.5, batch
64, cross-entropy), the same epochs, the same learning-rate sweep and the same seeds; each
arm's rate is the one with the best mean validation accuracy (a 20% split of the training
set), and the table gives test accuracy (%) at that rate, mean ± sd over the seeds, next to
chance (10%). The arms:

- paper: the paper's plain rows ("Tanh", "ReLU", ...): the authors' architecture (input
  Linear with bias, ``depth`` square hidden Linears without bias, output Linear with bias),
  orthogonal hidden weights kept at unit-norm rows (``orthogonal`` with ``keep="rownorm"``,
  what the authors' code does), the input and output layers orthogonal and unconstrained.
- bsnn: the paper's "-GPN" rows: the same plus ``gpn`` (``root="paper"``: the authors' b
  roots, the negative one for GELU), i.e. passes ``["gpn", "orthogonal"]``.
- the plain ladder (vgpcompile.tools.baselines): the same architecture with each standard
  initialisation (Kaiming, LeCun, Xavier with the activation's gain, orthogonal with the
  activation's gain, PyTorch's default), then the standard one with BatchNorm, LayerNorm,
  a residual connection, and LayerNorm + residual (``--ladder short`` keeps the standard
  init, orthogonal and LayerNorm + residual).

Inputs are standardized; the paper's two arms have their orthogonal input layer scaled by
sqrt(width / 64), so the first hidden layer sees ||h||^2 ~ width, the thin shell the
authors' 784 -> 500 layer gives on MNIST (digits has 64 inputs).

Threads: the script leaves torch's thread count alone (it follows OMP_NUM_THREADS, or
torch's default), unless ``--threads`` is given. Times measured with OMP_NUM_THREADS=1 on
the project's 2-core machine shared with other jobs: ``--quick`` 60 s wall (22 s of CPU);
the default run (6 activations x 11 arms x 4 rates x 3 seeds = 792 runs) 26 min wall
(17 min of CPU). The paper's scale (``--depth 200 --width 256``, not run here) should cost
about 25x that (time grows with depth x width^2). The full run writes its JSON (``--json``)
and a PNG (``--plot``); ``examples/make_results.py`` turns those into docs/results.md.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from vgpcompile import vgpcompile
from vgpcompile.tools.baselines import Arm, Comparison, Sweep, init_linear, ladder, plain_mlp, run_arms, write_json

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
CHANCE = 10.0
FULL = {"depth": 30, "width": 128, "epochs": 10, "lrs": (1e-4, 1e-3, 1e-2, 1e-1), "activations": list(ACTIVATIONS),
        "ladder": "full"}  # fmt: skip
QUICK = {"depth": 20, "width": 64, "epochs": 3, "lrs": (1e-2, 1e-1), "activations": ["relu", "gelu"], "ladder": "short"}


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def digits(seed: int) -> Data:
    """Digits split 80/20 (stratified), the 80% split again 80/20 into train and validation;
    standardized with the train part's statistics."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    x_tr, x_va, y_tr, y_va = train_test_split(x_tr, y_tr, test_size=0.2, stratify=y_tr, random_state=seed)
    mean, std = x_tr.mean(0), x_tr.std(0)
    std[std < 1e-8] = 1.0

    def prep(a):
        return torch.tensor((a - mean) / std, dtype=torch.float32)

    return Data(prep(x_tr), torch.tensor(y_tr), prep(x_va), torch.tensor(y_va), prep(x_te), torch.tensor(y_te))


def paper_mlp(act: str, width: int, depth: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(64, width), ACTIVATIONS[act]()]
    for _ in range(depth):
        layers += [nn.Linear(width, width, bias=False), ACTIVATIONS[act]()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def build_paper(seed: int, act: str, width: int, depth: int, gpn: bool, root: str) -> nn.Module:
    """The paper's plain row (``gpn=False``) or its GPN row."""
    net = paper_mlp(act, width, depth, seed)
    first, last = net[0], net[-1]
    nn.init.orthogonal_(first.weight, gain=math.sqrt(width / 64))  # the thin shell
    nn.init.orthogonal_(last.weight)
    ends = ["0", str(len(net) - 1)]
    if gpn:
        net = vgpcompile(net, passes=["gpn"], options={"gpn": {"root": root}})
    # the selection is shared by all passes of one call, so the hidden layers get theirs alone
    options = {"orthogonal": {"keep": "rownorm", "seed": seed}}
    return vgpcompile(net, passes=["orthogonal"], options=options, ignore=ends)


def build_ladder(seed: int, act: str, width: int, depth: int, arm: Arm) -> nn.Module:
    """A ladder rung: the paper's own architecture with a standard init, or with a plain fix."""
    if arm.norm or arm.residual:
        return plain_mlp(act, depth, width, 64, 10, arm, seed=seed)
    net = paper_mlp(act, width, depth, seed)
    for m in net.modules():
        if isinstance(m, nn.Linear):
            init_linear(m, arm.init, act)
    return net


def arms_for(act: str, args: argparse.Namespace) -> dict:
    shape = {"act": act, "width": args.width, "depth": args.depth}
    arms = {
        "paper (orthogonal, unit rows)": ("paper", partial(build_paper, gpn=False, root=args.root, **shape)),
        "bsnn (gpn + orthogonal)": ("compiled", partial(build_paper, gpn=True, root=args.root, **shape)),
    }
    rungs = ladder(act)
    if args.ladder == "short":
        rungs = [rungs[0], Arm("orthogonal"), rungs[-1]]
    for arm in rungs:
        kind = "architectural" if arm.norm or arm.residual else "plain"
        arms[arm.name] = (kind, partial(build_ladder, arm=arm, **shape))
    return arms


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        hits = sum((model(xb).argmax(1) == yb).sum().item() for xb, yb in zip(x.split(500), y.split(500)))
    model.train()
    return 100.0 * hits / len(y)


def train(model: nn.Module, lr: float, seed: int, data: Data, epochs: int, device: str, batch: int = 64) -> dict:
    """The authors' loop; a run whose loss stops being finite has no accuracy (diverged)."""
    model = model.to(device)
    x, y = data.x_train.to(device), data.y_train.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.5)
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    for _ in range(epochs):
        losses = []
        for idx in torch.randperm(len(y), generator=gen).split(batch):
            idx = idx.to(device)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            if not torch.isfinite(loss):
                return {"val_acc": math.nan, "test_acc": math.nan, "train_acc": math.nan, "train_loss": math.nan}
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return {
        "val_acc": accuracy(model, data.x_val.to(device), data.y_val.to(device)),
        "test_acc": accuracy(model, data.x_test.to(device), data.y_test.to(device)),
        "train_acc": accuracy(model, x, y),
        "train_loss": sum(losses) / len(losses),  # mean over the last epoch
    }


def plot(comparisons: dict[str, Comparison], path: Path) -> None:
    """Per activation: the paper's plain row, bsnn, the best plain init and the best
    architectural fix (each at its best rate), test accuracy mean ± sd, and chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roles = [("the paper's plain row", ("paper",)), ("bsnn (gpn + orthogonal)", ("compiled",)),
             ("best plain init, same architecture", ("plain",)),
             ("best architectural fix", ("architectural",))]  # fmt: skip
    acts = list(comparisons)
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(acts)), 5))
    width = 0.8 / len(roles)
    for j, (label, kinds) in enumerate(roles):
        means, sds = [], []
        for act in acts:
            arm = comparisons[act].best(kinds, "test_acc")
            mean, sd, _ = arm.summary("test_acc") if arm else (0.0, 0.0, 0)
            means.append(0.0 if math.isnan(mean) else mean)
            sds.append(0.0 if math.isnan(sd) else sd)
        xs = [i + (j - (len(roles) - 1) / 2) * width for i in range(len(acts))]
        ax.bar(xs, means, width, yerr=sds, label=label, color=plt.get_cmap("tab10")(j))
    ax.axhline(CHANCE, color="gray", linestyle="--", linewidth=1, label="chance")
    ax.set(xticks=range(len(acts)), xticklabels=acts, ylabel="test accuracy % (each arm at its best lr)", ylim=(0, 100))
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=5)
    ax.set_title(next(iter(comparisons.values())).budget, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"defaults {QUICK} (options given explicitly win)")
    p.add_argument("--depth", type=int, help=f"hidden layers (default {FULL['depth']})")
    p.add_argument("--width", type=int, help=f"default {FULL['width']}")
    p.add_argument("--epochs", type=int, help=f"default {FULL['epochs']}")
    p.add_argument("--lrs", type=lambda s: tuple(float(v) for v in s.split(",")), help="default 0.0001,0.001,0.01,0.1")
    p.add_argument("--seeds", type=int, default=3, help="seeds per arm and rate (default 3)")
    p.add_argument("--activations", type=lambda s: s.split(","), help="default: all six")
    p.add_argument("--ladder", choices=["full", "short"], help="default full")
    p.add_argument("--root", choices=["paper", "minus", "plus"], default="paper", help="gpn root (default: paper)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch threads (default: leave torch's, i.e. OMP_NUM_THREADS)")
    p.add_argument("--out", type=Path, help="also write the Markdown tables to this file")
    p.add_argument("--json", type=Path, help="write every run's metrics to this JSON file")
    p.add_argument("--plot", type=Path, help="write a bar chart of test accuracy to this PNG")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    bad = [a for a in args.activations if a not in ACTIVATIONS]
    if bad:
        p.error(f"unknown activation {bad[0]!r}; use some of {', '.join(ACTIVATIONS)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Comparison]:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # ELU's exp(x) underflows deep in the net: 9x slower steps on x86
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}", flush=True)
    start = time.perf_counter()
    sweep = Sweep(tuple(args.lrs), tuple(range(args.seeds)), select="val_acc", higher_is_better=True)
    data = {seed: digits(seed) for seed in sweep.seeds}
    budget = (f"digits, depth {args.depth}, width {args.width}, SGD momentum 0.5, batch 64, {args.epochs} epochs "
              f"(~{math.ceil(len(data[0].y_train) / 64) * args.epochs} steps)")  # fmt: skip
    comparisons: dict[str, Comparison] = {}
    for act in args.activations:
        print(f"{act}:", flush=True)
        loop = lambda model, lr, seed: train(model, lr, seed, data[seed], args.epochs, args.device)  # noqa: E731
        arms = run_arms(arms_for(act, args), loop, sweep, progress=lambda s: print(s, flush=True))
        comparisons[act] = Comparison(
            act, budget, sweep, arms, {"chance accuracy %": CHANCE}, ("test_acc", "train_acc", "train_loss"),
            {"test_acc": True, "train_acc": True, "val_acc": True}, digits=1,
        )  # fmt: skip
    seconds = time.perf_counter() - start
    text = "\n\n".join(
        c.table() + f"\n\npaper (MNIST, depth 200, width 500) train / test %: plain {PAPER_MNIST[act][0]}, "
        f"GPN {PAPER_MNIST[act][1]}"
        for act, c in comparisons.items()
    )
    print(f"\n{text}\n\ntotal {seconds:.0f}s", flush=True)
    if args.out:
        args.out.write_text(text + "\n")
    if args.json:
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        write_json(args.json, {"example": "bsnn_table", "config": config, "seconds": round(seconds, 1),
                               "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                               "paper_mnist": PAPER_MNIST,
                               "comparisons": {act: c.to_dict() for act, c in comparisons.items()}})  # fmt: skip
    if args.plot:
        plot(comparisons, args.plot)
    return comparisons


if __name__ == "__main__":
    main(sys.argv[1:])
