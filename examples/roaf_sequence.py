"""ROAF on recurrent nets (research/roaf.md §4): a single-layer Elman RNN compiled with ``roaf``
against the recurrent baselines a practitioner would try at the same width and budget.

    python examples/roaf_sequence.py                    # both tasks, 3 seeds, lr sweep; ~40 min of one core
    python examples/roaf_sequence.py --task digits      # permuted sequential digits only
    python examples/roaf_sequence.py --json docs/results/roaf_sequence.json   # the results page's Comparisons
    python examples/roaf_sequence.py --quick            # tiny budgets: a smoke test

Side by side on a shared machine: ``--task digits`` and ``--task recall --T 100`` at once, then
``--task recall --T 1000 --rates-from "recall T=100" --models roaf rnn`` (and the other arms in
other processes) with the same ``--json``: the file ends up what the one command writes.

Tasks (ours: the paper's psMNIST setup and its long-dependency task are not known in detail):

- Permuted sequential digits: scikit-learn's 8x8 digits read one pixel per step (64 steps,
  pixels / 16) under one fixed random permutation; 10 classes; 1797 images split 1149
  train / 288 validation / 360 test (stratified, seeded). The readout sees the last state.
  Accuracy on the test set after epoch 1 and after the last epoch (10).
- Long-delay recall: x_1 ~ N(0, 1), then T - 1 more inputs (zeros by default; N(0, noise²)
  with --noise); the target is the sign of x_1, read from the state after step T. Fresh
  batches every step; 1000 validation and 1000 test sequences. T = 100 and 1000.

Models (``MODELS``), all with the same hidden width and a Linear readout of the last state:

- ``roaf``: ``nn.RNN(tanh)`` with PyTorch's default init compiled with ``passes=["roaf"]``
  (horizon = the sequence length, so beta = 1/T and alpha = 1 - beta);
- ``rnn``: the same ``nn.RNN(tanh)``, PyTorch's default init;
- ``rnn-orthogonal``: the same, with W_hh orthogonal (gain 1; W_ih and biases default);
- ``lstm``: ``nn.LSTM``, PyTorch's default init;
- ``lstm-fb1``: ``nn.LSTM`` with forget-gate bias 1: PyTorch adds two biases per gate, so
  b_ih's forget slice is set to 1 and b_hh's to 0 (their sum, the effective bias, is 1);
- ``gru``: ``nn.GRU``, PyTorch's default init.

Adam, gradient norm clipped at 1 for every model. The learning rate is swept over the same
values for every model (digits: 1e-3 ... 3e-1, roaf's nonlinear branch is scaled by
beta = 1/64 and its best rates are larger than the others'; recall: 1e-3 ... 1e-1) and
chosen per model by mean final validation accuracy; each figure is mean +- sd over the
seeds at that rate. At T = 1000 (10x the cost per step) each model uses the rate it did
best with at T = 100. ``--json`` writes one ``vgpcompile.tools.baselines.Comparison`` per
task (kinds: roaf compiled, the RNNs plain, LSTM and GRU architectural), every run's
metrics, the configuration, wall time and threads.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vgpcompile import vgpcompile
from vgpcompile.tools.baselines import ArmResult, Comparison, Sweep, write_json

MODELS = ("roaf", "rnn", "rnn-orthogonal", "lstm", "lstm-fb1", "gru")
KIND = {"roaf": "compiled", "rnn": "plain", "rnn-orthogonal": "plain", "lstm": "architectural",
        "lstm-fb1": "architectural", "gru": "architectural"}  # fmt: skip
LAYER = {"lstm": nn.LSTM, "gru": nn.GRU}


class SeqClassifier(nn.Module):
    def __init__(self, cell: str, d_in: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.rnn = LAYER.get(cell, nn.RNN)(d_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@torch.no_grad()
def forget_bias_one(lstm: nn.LSTM) -> None:
    """Effective forget-gate bias 1: b_ih[f] = 1, b_hh[f] = 0 (torch's gate order is i, f, g, o)."""
    h = lstm.hidden_size
    lstm.bias_ih_l0[h : 2 * h] = 1.0
    lstm.bias_hh_l0[h : 2 * h] = 0.0


def make_model(kind: str, d_in: int, hidden: int, classes: int, horizon: int, seed: int) -> nn.Module:
    if kind not in KIND:
        raise ValueError(f"unknown model {kind!r}; use one of {MODELS}")
    torch.manual_seed(seed)
    net = SeqClassifier(kind.split("-")[0], d_in, hidden, classes)
    if kind == "rnn-orthogonal":
        with torch.no_grad():
            nn.init.orthogonal_(net.rnn.weight_hh_l0)
    elif kind == "lstm-fb1":
        forget_bias_one(net.rnn)
    elif kind == "roaf":
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
    test, val, losses = [], [], []
    for _ in range(epochs):
        model.train()
        losses = [
            step(model, opt, data["x_train"][idx], data["y_train"][idx])
            for idx in torch.randperm(n, generator=g).split(batch)
        ]
        model.eval()
        test.append(accuracy(model, data["x_test"], data["y_test"]))
        val.append(accuracy(model, data["x_val"], data["y_val"]))
    loss = statistics.mean(losses) if losses else float("nan")  # the last epoch's mean training loss
    return {"val_acc": val[-1], "test_acc": test[-1], "test_acc_epoch1": test[0], "train_loss": loss,
            "val_curve": val, "test_curve": test}  # fmt: skip


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
    losses = [step(model, opt, *recall_batch(batch, T, noise, g)) for _ in range(steps)]
    seconds = (time.perf_counter() - start) / max(steps, 1)
    tail = losses[-max(1, steps // 10) :]  # the last tenth of training
    return {"val_acc": accuracy(model, x_val, y_val), "test_acc": accuracy(model, x_test, y_test),
            "train_loss": statistics.mean(tail) if tail else float("nan"), "step_s": seconds}  # fmt: skip


# ---- the protocol -----------------------------------------------------------------------------------

SOLVED = 0.95  # recall: a seed "solves" the task at this test accuracy


def sweep(run: Callable[[str, float, int], dict], lrs: list[float], seeds: int, label: str,
          fixed: dict[str, float] | None = None, models: tuple[str, ...] = MODELS) -> list[ArmResult]:  # fmt: skip
    """Every model at every rate and seed (or only at its own ``fixed`` rate, picked from the same
    ``lrs`` at another T); the rate is chosen by mean final validation accuracy (``Comparison``'s
    rule, ties to the smaller rate)."""
    arms = []
    for kind in models:
        start, runs = time.perf_counter(), {}
        for lr in [fixed[kind]] if fixed else lrs:
            runs[lr] = [run(kind, lr, s) for s in range(seeds)]
            print(f"  {label} {kind:14s} lr {lr:g}: val acc {fmt([r['val_acc'] for r in runs[lr]])}", flush=True)
        arms.append(ArmResult(kind, KIND[kind], Sweep(tuple(lrs), tuple(range(seeds)), "val_acc", True), runs,
                              time.perf_counter() - start))  # fmt: skip
    return arms


def comparison(title: str, budget: str, arms: list[ArmResult], chance: float, reported: tuple[str, ...]) -> Comparison:
    return Comparison(title, budget, arms[0].sweep, arms, {"chance accuracy": chance}, reported,
                      {"test_acc": True, "val_acc": True, "test_acc_epoch1": True, "train_loss": False},
                      digits=3)  # fmt: skip


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def solved(arm: ArmResult) -> str:
    acc = arm.values("test_acc")
    return f"{sum(a >= SOLVED for a in acc)}/{len(acc)}"


def recall_rows(T: int, comp: Comparison) -> list[str]:
    return [f"| {T} | {a.name} | {a.best_lr:g} | {fmt(a.values('test_acc'))} | {solved(a)} | "
            f"{statistics.mean(a.values('step_s')):.3f} |" for a in comp.arms]  # fmt: skip


def digits_table(comp: Comparison, epochs: int) -> list[str]:
    lines = [f"| model | lr | test acc after epoch 1 | test acc after epoch {epochs} |", "|---|---|---|---|"]
    for a in comp.arms:
        lines.append(f"| {a.name} | {a.best_lr:g} | {fmt(a.values('test_acc_epoch1'))} | {fmt(a.values('test_acc'))} |")
    return lines


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["all", "digits", "recall"], default="all")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--digits-lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1])
    parser.add_argument("--recall-lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2, 3e-2, 1e-1])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32, help="digits batch (recall uses 64)")
    parser.add_argument("--T", type=int, nargs="+", default=[100, 1000], help="recall delays; the first is swept")
    parser.add_argument("--steps", type=int, default=200, help="recall training steps")
    parser.add_argument("--noise", type=float, default=0.0, help="recall distractor std (0: zeros after x_1)")
    parser.add_argument("--json", help="write the Comparisons here (tasks not run are kept from an existing file)")
    parser.add_argument("--rates-from", metavar="TASK",
                        help='recall: each T at the rates chosen in this task of --json ("recall T=100")')  # fmt: skip
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS),
                        help="a subset: --json merges its arms into the saved tasks' (parallel runs)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 lr, 2 epochs, T = 20 and 40, 10 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.T, args.steps, args.hidden = 1, 2, [20, 40], 10, 16
        args.digits_lrs = args.recall_lrs = [3e-3]
    return args


def run_tasks(args: argparse.Namespace):
    """Yield (task, {"comparison": Comparison, "seconds": wall time}) as each task ends; tasks
    "digits", "recall T=<T>"."""
    if args.task in ("all", "digits"):
        data, start = digit_sequences(), time.perf_counter()
        print(f"permuted sequential digits: hidden {args.hidden}, batch {args.batch}, {args.epochs} epochs", flush=True)
        run = lambda kind, lr, seed: run_digits(kind, lr, seed, data, args.epochs, args.hidden, args.batch)
        arms = sweep(run, args.digits_lrs, args.seeds, "digits", models=args.models)
        title = f"permuted sequential digits (64 steps of one pixel), hidden {args.hidden}"
        budget = f"Adam, clip 1, batch {args.batch}, {args.epochs} epochs"
        comp = comparison(title, budget, arms, 0.1, ("test_acc", "test_acc_epoch1", "val_acc", "train_loss"))
        yield "digits", {"comparison": comp, "seconds": time.perf_counter() - start}
    if args.task in ("all", "recall"):
        best, source = saved_rates(args) if args.rates_from else (None, f"recall T={args.T[0]}")
        for T in [T for T in args.T if f"recall T={T}" != args.rates_from]:
            start = time.perf_counter()
            print(
                f"recall T = {T}: hidden {args.hidden}, batch 64, {args.steps} steps, noise {args.noise:g}", flush=True
            )
            run = lambda kind, lr, seed, T=T: run_recall(kind, lr, seed, T, args.steps, args.noise, args.hidden, 64)
            arms = sweep(run, args.recall_lrs, args.seeds, f"recall T={T}", fixed=best, models=args.models)
            fixed = best is not None
            best = best or {a.name: a.best_lr for a in arms}  # later T: each model at its rate of the first
            title = f"recall sign(x_1) after T = {T} steps (distractor std {args.noise:g}), hidden {args.hidden}"
            budget = f"Adam, clip 1, batch 64, {args.steps} steps" + (
                f"; each arm at its best rate in {source}, not swept" if fixed else ""
            )
            comp = comparison(title, budget, arms, 0.5, ("test_acc", "val_acc", "train_loss"))
            yield f"recall T={T}", {"comparison": comp, "seconds": time.perf_counter() - start}


def saved_rates(args: argparse.Namespace) -> tuple[dict[str, float], str]:
    """Each model's chosen rate in the --json file's ``--rates-from`` task (e.g. T = 1000 run
    later, at the rates of a saved T = 100 sweep)."""
    saved = json.loads(Path(args.json).read_text()) if args.json and Path(args.json).is_file() else {}
    raw = saved.get("comparisons", {}).get(args.rates_from)
    if raw is None:
        raise SystemExit(f"--rates-from {args.rates_from!r}: no such task in --json {args.json}")
    comp = Comparison.from_dict(raw)
    if tuple(args.recall_lrs) != comp.sweep.lrs:
        raise SystemExit(f"--rates-from {args.rates_from!r} swept {list(comp.sweep.lrs)}; give them as --recall-lrs")
    return {a.name: a.best_lr for a in comp.arms}, args.rates_from


def main(argv: list[str] | None = None) -> dict[str, dict]:
    args = parse(argv)
    torch.set_num_threads(1)
    tasks = {}
    for name, entry in run_tasks(args):
        tasks[name] = entry
        if args.json:  # after every task: a later one cut short keeps the earlier ones
            save(args.json, {name: entry}, args, argv)
    print_tables(tasks, args)
    return tasks


def save(path: str, tasks: dict[str, dict], args: argparse.Namespace, argv: list[str] | None) -> None:
    """Write the results page's JSON: one Comparison per task under "comparisons". An existing
    file's other tasks, and a task's arms that ``--models`` left out, are kept, so ``--task
    digits`` and ``--task recall`` (or disjoint ``--models``), run side by side, together
    write what the default command writes."""
    import fcntl
    import tempfile
    import zlib

    lock = Path(tempfile.gettempdir()) / f"roaf_sequence.{zlib.crc32(str(Path(path).resolve()).encode())}.lock"
    with open(lock, "w") as handle:  # parallel writers: one read-modify-write at a time
        fcntl.flock(handle, fcntl.LOCK_EX)
        old = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
        config = {k: v for k, v in vars(args).items() if k not in ("json", "task", "models")}
        command = shlex.join(["python", "examples/roaf_sequence.py", *(sys.argv[1:] if argv is None else argv)])
        comparisons, runs = old.get("comparisons", {}), old.get("runs", {})
        for name, t in tasks.items():
            new = t["comparison"].to_dict()
            kept = [a for a in comparisons.get(name, {}).get("arms", []) if a["name"] not in args.models]
            new["arms"] = sorted(kept + new["arms"], key=lambda a: MODELS.index(a["name"]))
            comparisons[name] = new
            key = name if tuple(args.models) == MODELS else f"{name} ({' '.join(args.models)})"
            runs[key] = {"command": command, "config": config, "seconds": round(t["seconds"], 1)}
        payload = {"example": "roaf_sequence", "config": config, "kinds": KIND, "threads": torch.get_num_threads(),
                   "seconds": round(sum(r["seconds"] for r in runs.values()), 1), "runs": runs,
                   "comparisons": comparisons}  # fmt: skip
        write_json(path, payload)


def print_tables(tasks: dict[str, dict], args) -> None:
    print()
    if "digits" in tasks:
        print(f"Permuted sequential digits (64 steps), hidden {args.hidden}, {args.seeds} seed(s):")
        print("\n".join(digits_table(tasks["digits"]["comparison"], args.epochs)))
        print()
    recall = {int(name.split("=")[1]): t["comparison"] for name, t in tasks.items() if name.startswith("recall")}
    if recall:
        setup = f"hidden {args.hidden}, {args.steps} steps, {args.seeds} seed(s)"
        print(
            f"Recall sign(x_1) after T steps (distractor std {args.noise:g}), {setup}; solved = test acc >= {SOLVED}:"
        )
        print("| T | model | lr | test acc | solved | s/step |\n|---|---|---|---|---|---|")
        for T, comp in recall.items():
            print("\n".join(recall_rows(T, comp)))


if __name__ == "__main__":
    main()
