"""ROAF on recurrent nets (research/roaf.md §4): a single-layer Elman RNN compiled with ``roaf``
against the plain RNN and an LSTM of the same width.

    python examples/roaf_sequence.py                    # both tasks, 3 seeds, lr sweep; ~1 h on 2 busy cores
    python examples/roaf_sequence.py --task digits      # permuted sequential digits only
    python examples/roaf_sequence.py --quick            # tiny budgets: a smoke test

Tasks (ours: the paper's psMNIST setup and its long-dependency task are not known in detail):

- Permuted sequential digits: scikit-learn's 8x8 digits read one pixel per step (64 steps,
  pixels / 16) under one fixed random permutation; 10 classes; 1797 images split 1149
  train / 288 validation / 360 test (stratified, seeded). The readout sees the last state.
  Accuracy on the test set after epoch 1 and after the last epoch (10).
- Long-delay recall: x_1 ~ N(0, 1), then T - 1 more inputs (zeros by default; N(0, noise²)
  with --noise); the target is the sign of x_1, read from the state after step T. Fresh
  batches every step; 1000 validation and 1000 test sequences. T = 100 and 1000.

Models: ``nn.RNN(tanh)``, the same module compiled with ``passes=["roaf"]`` (horizon = the
sequence length, so beta = 1/T and alpha = 1 - beta) and ``nn.LSTM``, all with the same
hidden width, PyTorch's default init and a Linear readout. Adam, gradient norm clipped at 1
for every model. The learning rate is swept over the same values for every model (digits:
1e-3 ... 3e-1; roaf's nonlinear branch is scaled by beta = 1/64, and its best rates are
10x the others'; recall: 1e-3 ... 3e-2) and chosen per model by mean validation accuracy;
each figure is mean +- sd over the seeds at that rate. At T = 1000 (10x the cost per step)
each model uses the rate it did best with at T = 100.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vgpcompile import vgpcompile

MODELS = ("roaf", "rnn", "lstm")


class SeqClassifier(nn.Module):
    def __init__(self, cell: str, d_in: int, hidden: int, classes: int) -> None:
        super().__init__()
        layer = nn.LSTM if cell == "lstm" else nn.RNN
        self.rnn = layer(d_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def make_model(kind: str, d_in: int, hidden: int, classes: int, horizon: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = SeqClassifier("lstm" if kind == "lstm" else "rnn", d_in, hidden, classes)
    if kind == "roaf":
        net = vgpcompile(net, passes=["roaf"], options={"roaf": {"horizon": horizon, "seed": seed}})  # O per seed too
    return net


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


# ---- permuted sequential digits -----------------------------------------------------------------


def digit_sequences(seed: int = 0) -> dict[str, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(seed))
    seq = torch.tensor(x, dtype=torch.float32)[:, perm].unsqueeze(-1) / 16.0
    y = torch.tensor(y)
    idx = torch.arange(len(y)).numpy()
    rest, test = train_test_split(idx, test_size=360, random_state=seed, stratify=y.numpy())
    train, val = train_test_split(rest, test_size=288, random_state=seed, stratify=y.numpy()[rest])
    return {
        f"{k}_{s}": t[i] for s, i in (("train", train), ("val", val), ("test", test)) for k, t in (("x", seq), ("y", y))
    }


def run_digits(kind: str, lr: float, seed: int, data: dict, epochs: int, hidden: int, batch: int) -> dict:
    model = make_model(kind, 1, hidden, 10, 64, seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    n = data["x_train"].shape[0]
    test, val = [], []
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(n, generator=g).split(batch):
            step(model, opt, data["x_train"][idx], data["y_train"][idx])
        model.eval()
        test.append(accuracy(model, data["x_test"], data["y_test"]))
        val.append(accuracy(model, data["x_val"], data["y_val"]))
    return {"test": test, "val": val}


# ---- long-delay recall ------------------------------------------------------------------------------


def recall_batch(n: int, T: int, noise: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, T, 1, generator=g) * noise
    x[:, 0, 0] = torch.randn(n, generator=g)
    return x, (x[:, 0, 0] > 0).long()


def run_recall(kind: str, lr: float, seed: int, T: int, steps: int, noise: float, hidden: int, batch: int) -> dict:
    model = make_model(kind, 1, hidden, 2, T, seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(1000 + seed)
    x_val, y_val = recall_batch(1000, T, noise, torch.Generator().manual_seed(1))
    x_test, y_test = recall_batch(1000, T, noise, torch.Generator().manual_seed(2))
    start = time.perf_counter()
    for _ in range(steps):
        step(model, opt, *recall_batch(batch, T, noise, g))
    seconds = (time.perf_counter() - start) / max(steps, 1)
    return {"val": [accuracy(model, x_val, y_val)], "test": [accuracy(model, x_test, y_test)], "step_s": seconds}


# ---- the protocol -----------------------------------------------------------------------------------


def sweep(run: Callable[[str, float, int], dict], lrs: list[float], seeds: int, label: str) -> dict:
    """{model: {lr: [result per seed]}} and the chosen lr per model (best mean final validation accuracy)."""
    results: dict = {m: {} for m in MODELS}
    for kind in MODELS:
        for lr in lrs:
            results[kind][lr] = [run(kind, lr, s) for s in range(seeds)]
            vals = [r["val"][-1] for r in results[kind][lr]]
            print(f"  {label} {kind:5s} lr {lr:g}: val acc {fmt(vals)}", flush=True)
    chosen = {m: max(lrs, key=lambda lr, m=m: statistics.mean(r["val"][-1] for r in results[m][lr])) for m in MODELS}
    return {"results": results, "lr": chosen}


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def digits_table(out: dict, epochs: int) -> list[str]:
    lines = [f"| model | lr | test acc after epoch 1 | test acc after epoch {epochs} |", "|---|---|---|---|"]
    for m in MODELS:
        runs = out["results"][m][out["lr"][m]]
        first, last = [r["test"][0] for r in runs], [r["test"][-1] for r in runs]
        lines.append(f"| {m} | {out['lr'][m]:g} | {fmt(first)} | {fmt(last)} |")
    return lines


def recall_rows(T: int, out: dict, solved: float = 0.95) -> list[str]:
    rows = []
    for m in MODELS:
        runs = out["results"][m][out["lr"][m]]
        acc = [r["test"][-1] for r in runs]
        n = sum(a >= solved for a in acc)
        step_s = statistics.mean(r["step_s"] for r in runs)
        rows.append(f"| {T} | {m} | {out['lr'][m]:g} | {fmt(acc)} | {n}/{len(acc)} | {step_s:.3f} |")
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["all", "digits", "recall"], default="all")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--digits-lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1])
    parser.add_argument("--recall-lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2, 3e-2])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32, help="digits batch (recall uses 64)")
    parser.add_argument("--T", type=int, nargs="+", default=[100, 1000], help="recall delays; the first is swept")
    parser.add_argument("--steps", type=int, default=200, help="recall training steps")
    parser.add_argument("--noise", type=float, default=0.0, help="recall distractor std (0: zeros after x_1)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 lr, 2 epochs, T = 20 and 40, 10 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.T, args.steps, args.hidden = 1, 2, [20, 40], 10, 16
        args.digits_lrs = args.recall_lrs = [3e-3]
    torch.set_num_threads(1)
    summary: dict = {}
    if args.task in ("all", "digits"):
        data = digit_sequences()
        print(f"permuted sequential digits: hidden {args.hidden}, batch {args.batch}, {args.epochs} epochs", flush=True)
        run = lambda kind, lr, seed: run_digits(kind, lr, seed, data, args.epochs, args.hidden, args.batch)
        summary["digits"] = sweep(run, args.digits_lrs, args.seeds, "digits")
    if args.task in ("all", "recall"):
        summary["recall"] = {}
        best = None
        for T in args.T:
            lrs = args.recall_lrs if best is None else None
            print(
                f"recall T = {T}: hidden {args.hidden}, batch 64, {args.steps} steps, noise {args.noise:g}", flush=True
            )

            def run(kind, lr, seed, T=T):
                return run_recall(kind, lr, seed, T, args.steps, args.noise, args.hidden, 64)

            if lrs is None:  # each model at the rate it did best with at the first T
                out = {"results": {m: {best[m]: [run(m, best[m], s) for s in range(args.seeds)]} for m in MODELS}}
                out["lr"] = dict(best)
            else:
                out = sweep(run, lrs, args.seeds, f"recall T={T}")
                best = out["lr"]
            summary["recall"][T] = out
    print_tables(summary, args)
    return summary


def print_tables(summary: dict, args) -> None:
    print()
    if "digits" in summary:
        print(f"Permuted sequential digits (64 steps), hidden {args.hidden}, {args.seeds} seed(s):")
        print("\n".join(digits_table(summary["digits"], args.epochs)))
        print()
    if "recall" in summary:
        setup = f"hidden {args.hidden}, {args.steps} steps, {args.seeds} seed(s)"
        print(f"Recall sign(x_1) after T steps (distractor std {args.noise:g}), {setup}; solved = test acc >= 0.95:")
        print("| T | model | lr | test acc | solved | s/step |\n|---|---|---|---|---|---|")
        for T, out in summary["recall"].items():
            print("\n".join(recall_rows(T, out)))


if __name__ == "__main__":
    main()
