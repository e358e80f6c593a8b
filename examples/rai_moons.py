"""The RAI seed experiment: a 101-layer sigmoid MLP on two moons, plain vs ``rai``; then the
same with mini-batches and the remedies of research/rai.md §8.

    python examples/rai_moons.py full --seeds 0,1,2,3,4 --log runs.jsonl        # the reference (hours on 1 core)
    python examples/rai_moons.py minibatch --seeds 0,1,2 --log runs.jsonl       # batch 32, n = 1000, remedies
    python examples/rai_moons.py table --log runs.jsonl                         # the tables from the log
    python examples/rai_moons.py ladder --json docs/results/rai_ladder.json     # the plain ladder, same net and data
    python examples/rai_moons.py all --quick                                    # a smoke run, seconds

Full batch (the reference notebook ``rai-grads.ipynb``, research/rai.md §1-§3):
make_moons(100, noise=0.1, random_state=42); widths [2] + [100] * 100 + [1], sigmoid after
every hidden Linear, the output a logit (BCE with logits = the notebook's sigmoid + BCELoss);
PyTorch's default init from ``torch.manual_seed(seed)``; Rprop lr 0.1 over weights, biases
and (for RAI) every table, all 100 examples every step, 10 000 steps. RAI cuts after every
Linear (101 tables). Reported: the chained network's train accuracy and its accuracy on
1 000 fresh moons points (random_state=1000, the same for every seed), which the notebooks
never measured.

Mini-batch (§8): make_moons(1000, noise=0.1, random_state=42), batch 32, Adam lr 1e-3 for
the weights, SparseAdam for the table rows (lazy: unvisited rows never move), 25 epochs
(800 steps). Variants: plain (Adam on the plain network), rai (table lr = weight lr), and
one remedy at a time: table-lr (table lr x n/|B| = 31), lam-growth (lam x 1.2 per epoch,
x 95 at the end), resync (rows set to the chained values every 5 epochs), every10
(block-RAI: a cut every 10 layers, 11 tables), and all four together; then the weight lr
raised to 1e-2 (plain at the same lr, rai, and block-RAI every=10).

Plain ladder (issue: every result against the strongest plain baseline): the same 101-layer
sigmoid net and the same 100 points, full batch, from every standard initialisation and with
the usual architectural fixes (BatchNorm, LayerNorm, residual, LayerNorm + residual;
vgpcompile.tools.baselines), trained with Adam over the lr sweep 1e-3, 3e-3, 1e-2 for
``--steps`` steps (default 1 000 here) over seeds 0-2; each arm's lr is picked on 200
validation points (random_state=7), its accuracy reported on the 1 000 test points. With
``--log`` the full-batch log's arms (plain and rai, Rprop lr 0.1, 5 seeds) join the table at
the same step count.

Each run appends one JSON line to --log, plus one per logged point (10 per run), so a run
stopped early still counts; ``table --at N`` prints the tables at step/epoch N.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import vgpcompile
from vgpcompile import rai
from vgpcompile.tools.baselines import Arm, ArmResult, Comparison, Sweep, ladder, plain_mlp, run_arms, write_json

TEST_SEED = 1000
VAL_SEED = 7
LADDER_LRS = (1e-3, 3e-3, 1e-2)
MINIBATCH_VARIANTS = {
    "plain": {},
    "rai": {},
    "table-lr": {"table_lr_scale": 31.25},
    "lam-growth": {"lam_growth": 1.2},
    "resync": {"resync_every": 5},
    "every10": {"every": 10},
    "all": {"table_lr_scale": 31.25, "lam_growth": 1.2, "resync_every": 5, "every": 10},
    # weight lr 1e-2 (research/rai.md §8.0: Adam's weight steps may be too small), against plain at the same lr
    "plain-lr1e-2": {"lr": 1e-2},
    "lr1e-2": {"lr": 1e-2},
    "every10-lr1e-2": {"every": 10, "lr": 1e-2},
}


def moons(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=n, noise=0.1, random_state=seed)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32).view(-1, 1)


def sigmoid_mlp(depth: int, width: int) -> nn.Sequential:
    """[2] + [width] * depth + [1], sigmoid after every hidden Linear, a logit out."""
    layers: list[nn.Module] = [nn.Linear(2, width), nn.Sigmoid()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.Sigmoid()]
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def train_plain(net, x, y, xt, yt, *, epochs, batch, optimizer, lr, seed, progress=None) -> dict:
    opt = {"rprop": torch.optim.Rprop, "adam": torch.optim.Adam}[optimizer](net.parameters(), lr=lr, foreach=True)
    order = torch.Generator().manual_seed(seed)
    n = len(x)
    every = max(1, epochs // 10)
    for epoch in range(1, epochs + 1):
        net.train()
        ids = torch.arange(n) if batch >= n else torch.randperm(n, generator=order)
        for b in ids.split(batch):
            opt.zero_grad(set_to_none=True)
            F.binary_cross_entropy_with_logits(net(x[b]), y[b]).backward()
            opt.step()
        if progress is not None and (epoch % every == 0 or epoch == epochs):
            progress({"at": epoch, "lifted": math.nan, **_chained(net, x, y, xt, yt)})
    return {"at": epochs, "lifted": math.nan, **_chained(net, x, y, xt, yt)}


def zero_gradient_layers(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """How many Linear layers get an exactly-zero weight gradient at init (underflow, research/rai.md §4)."""
    net.zero_grad()
    F.binary_cross_entropy_with_logits(net(x), y).backward()
    zero = sum(int(not m.weight.grad.any()) for m in net.modules() if isinstance(m, nn.Linear))
    net.zero_grad()
    return zero


def _chained(net, x, y, xt, yt) -> dict:
    train, test = rai.evaluate(net, x, y), rai.evaluate(net, xt, yt)
    return {"chained_loss": train[0], "train_acc": train[1], "test_loss": test[0], "test_acc": test[1]}


def run_full(seed: int, arm: str, steps: int, depth: int, width: int, progress=None) -> dict:
    x, y = moons(100, 42)
    xt, yt = moons(1000, TEST_SEED)
    torch.manual_seed(seed)
    net = sigmoid_mlp(depth, width)
    start = time.perf_counter()
    if arm == "plain":
        zero = zero_gradient_layers(net, x, y)
        out = train_plain(net, x, y, xt, yt, epochs=steps, batch=len(x), optimizer="rprop", lr=0.1, seed=seed,
                          progress=progress)  # fmt: skip
        out["zero_grad_layers_at_init"] = zero
    else:
        lifted = vgpcompile.vgpcompile(net, passes=["rai"], options={"rai": {"num_examples": len(x), "sparse": False}})
        hist = rai.fit(lifted, x, y, epochs=steps, optimizer="rprop", lr=0.1, x_test=xt, y_test=yt,
                       log_every=max(1, steps // 10), callback=_forward(progress))  # fmt: skip
        out = _summary(hist.final)
    return {"experiment": "full", "arm": arm, "seed": seed, "depth": depth,
            "seconds": round(time.perf_counter() - start, 1), **out}  # fmt: skip


def run_minibatch(
    seed: int, variant: str, epochs: int, depth: int, width: int, n: int = 1000, batch: int = 32, progress=None
) -> dict:
    x, y = moons(n, 42)
    xt, yt = moons(1000, TEST_SEED)
    torch.manual_seed(seed)
    net = sigmoid_mlp(depth, width)
    start = time.perf_counter()
    options = dict(MINIBATCH_VARIANTS[variant])
    lr = options.pop("lr", 1e-3)
    if variant.startswith("plain"):
        out = train_plain(net, x, y, xt, yt, epochs=epochs, batch=batch, optimizer="adam", lr=lr, seed=seed,
                          progress=progress)  # fmt: skip
    else:
        lifted = vgpcompile.vgpcompile(net, passes=["rai"], options={"rai": {"num_examples": n, **options}})
        hist = rai.fit(lifted, x, y, epochs=epochs, batch_size=batch, optimizer="adam", lr=lr, x_test=xt,
                       y_test=yt, log_every=max(1, epochs // 10), seed=seed, callback=_forward(progress))  # fmt: skip
        out = _summary(hist.final)
    return {"experiment": "minibatch", "arm": variant, "seed": seed, "depth": depth,
            "seconds": round(time.perf_counter() - start, 1), **out}  # fmt: skip


def logged_arm(rows: list[dict], arm: str, at: int, name: str, kind: str, sweep: Sweep) -> ArmResult | None:
    """An arm of the full-batch log (Rprop lr 0.1) as the ladder's ArmResult, at step ``at``."""
    points = {r["seed"]: r for r in rows if r["experiment"] == "full" and r["arm"] == arm and r["at"] == at}
    if not points:
        return None
    keys = ("test_acc", "train_acc", "test_loss")
    runs = {0.1: [{k: points[seed][k] for k in keys} for seed in sorted(points)]}
    return ArmResult(name, kind, sweep, runs)


def ladder_comparison(steps: int, depth: int, width: int, seeds: list[int], progress=None) -> Comparison:
    """Every plain rung on the reference net and data, full-batch Adam over ``LADDER_LRS``."""
    x, y = moons(100, 42)
    xv, yv = moons(200, VAL_SEED)
    xt, yt = moons(1000, TEST_SEED)

    def train(net: nn.Module, lr: float, seed: int) -> dict:
        train_plain(net, x, y, xt, yt, epochs=steps, batch=len(x), optimizer="adam", lr=lr, seed=seed)
        val = rai.evaluate(net, xv, yv)
        return {"val_loss": val[0], "val_acc": val[1], **_chained(net, x, y, xt, yt)}

    def build(arm: Arm):
        return lambda seed: plain_mlp("sigmoid", depth - 1, width, 2, 1, arm, seed=seed)

    kind = {False: "plain", True: "architectural"}
    builders = {a.name: (kind[bool(a.norm or a.residual)], build(a)) for a in ladder("sigmoid")}
    sweep = Sweep(LADDER_LRS, tuple(seeds), select="val_loss")
    budget = f"full batch (100 points), Adam, {steps} steps, depth {depth}, width {width}"
    arms = run_arms(builders, train, sweep, progress=progress)
    return Comparison("rai moons: the plain ladder", budget, sweep, arms, {"chance accuracy": 0.5},
                      ("test_acc", "train_acc", "test_loss"), {"test_acc": True, "train_acc": True,
                      "test_loss": False}, digits=3)  # fmt: skip


def _summary(r: rai.Record) -> dict:
    return {"at": r.epoch, "lifted": r.lifted, "chained_loss": r.chained_loss, "train_acc": r.chained_acc,
            "test_loss": r.test_loss, "test_acc": r.test_acc, "violation": r.violation}  # fmt: skip


def _forward(progress):
    return None if progress is None else (lambda record: progress(_summary(record)))


def latest(rows: list[dict]) -> list[dict]:
    """One row per (experiment, arm, seed): the final one, else the latest progress row."""
    best: dict[tuple, dict] = {}
    for r in rows:
        key = (r["experiment"], r["arm"], r["seed"])
        if key not in best or best[key].get("progress") or not r.get("progress"):
            best[key] = r
    return list(best.values())


def table(rows: list[dict], experiment: str) -> str:
    rows = latest(rows)
    arms = list(dict.fromkeys(r["arm"] for r in rows if r["experiment"] == experiment))
    unit = "steps" if experiment == "full" else "epochs"
    lines = [
        f"| arm | seeds | {unit} | lifted loss (median) | chained train acc (per seed) | test acc (per seed) "
        "| test acc mean ± sd | ≥ 95 % test |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        runs = sorted((r for r in rows if r["experiment"] == experiment and r["arm"] == arm), key=lambda r: r["seed"])
        tests = [r["test_acc"] for r in runs]
        lifted = [r["lifted"] for r in runs if not math.isnan(r["lifted"])]
        sd = statistics.stdev(tests) if len(tests) > 1 else 0.0
        median = f"{statistics.median(lifted):.2g}" if lifted else "-"
        reached = sorted({r["at"] for r in runs})
        at = str(reached[0]) if len(reached) == 1 else f"{reached[0]}-{reached[-1]}"
        train = " ".join(f"{r['train_acc']:.2f}" for r in runs)
        test = " ".join(f"{t:.3f}" for t in tests)
        lines.append(
            f"| {arm} | {len(runs)} | {at} | {median} | {train} | {test} | {statistics.mean(tests):.3f} ± {sd:.3f} "
            f"| {sum(t >= 0.95 for t in tests)}/{len(tests)} |"
        )
    return "\n".join(lines)


def read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["full", "minibatch", "all", "table", "ladder"])
    p.add_argument("--seeds", help="comma-separated seeds (default: 0-4; ladder 0-2)")
    p.add_argument("--arms", default="", help="comma-separated arms/variants (default: all)")
    p.add_argument("--steps", type=int, help="full-batch steps (default: 10 000; ladder 1 000)")
    p.add_argument("--epochs", type=int, default=25, help="mini-batch epochs (32 steps each)")
    p.add_argument("--at", type=int, help="table: the logged point at this step (full) or epoch (mini-batch)")
    p.add_argument("--depth", type=int, default=100, help="hidden layers")
    p.add_argument("--width", type=int, default=100)
    p.add_argument("--log", type=Path, help="append one JSON line per run here; 'table' reads it")
    p.add_argument("--json", type=Path, help="ladder: write the comparison here")
    p.add_argument("--quick", action="store_true", help="smoke run: depth 6, width 16, 30 steps/2 epochs, 1 seed")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        args.depth, args.width, args.steps, args.epochs, args.seeds = 6, 16, 30, 2, "0"
    seeds = [int(s) for s in (args.seeds or ("0,1,2" if args.what == "ladder" else "0,1,2,3,4")).split(",")]
    args.steps = args.steps or (1000 if args.what == "ladder" else 10_000)
    rows: list[dict] = []
    if args.what == "ladder":
        return _ladder(args, seeds)
    if args.what in ("full", "all"):
        for arm in _arms(args.arms, ["plain", "rai"]):
            for seed in seeds:
                tag = {"experiment": "full", "arm": arm, "seed": seed}
                run = run_full(seed, arm, args.steps, args.depth, args.width, _progress(tag, args.log))
                rows.append(_log(run, args.log))
    if args.what in ("minibatch", "all"):
        for arm in _arms(args.arms, list(MINIBATCH_VARIANTS)):
            for seed in seeds:
                tag = {"experiment": "minibatch", "arm": arm, "seed": seed}
                run = run_minibatch(seed, arm, args.epochs, args.depth, args.width, progress=_progress(tag, args.log))
                rows.append(_log(run, args.log))
    if args.what == "table":
        rows = read_log(args.log)
        if args.at is not None:
            rows = [r for r in rows if r["at"] <= args.at]
    for experiment in ("full", "minibatch"):
        if any(r["experiment"] == experiment for r in rows):
            print(f"\n{experiment}:\n{table(rows, experiment)}")
    return rows


def _ladder(args, seeds: list[int]) -> list[dict]:
    start = time.perf_counter()
    comparison = ladder_comparison(args.steps, args.depth, args.width, seeds, lambda s: print(s, flush=True))
    if args.log is not None:  # the reference arms at the same step budget, from the full-batch log
        logged = read_log(args.log)
        for arm, name, kind in (("plain", "default (Rprop 0.1)", "plain"), ("rai", "rai (Rprop 0.1)", "compiled")):
            result = logged_arm(logged, arm, args.steps, name, kind, comparison.sweep)
            comparison.arms += [result] if result is not None else []
    print(comparison.table())
    if args.json is not None:
        config = {"steps": args.steps, "depth": args.depth, "width": args.width, "seeds": seeds}
        payload = {"example": "rai_ladder", "config": config, "threads": torch.get_num_threads(),
                   "seconds": round(time.perf_counter() - start, 1), "comparison": comparison.to_dict()}  # fmt: skip
        write_json(args.json, payload)
    return [{"arm": a.name, "kind": a.kind, "best_lr": a.best_lr, "test_acc": a.summary("test_acc")[0]}
            for a in comparison.arms]  # fmt: skip


def _arms(text: str, default: list[str]) -> list[str]:
    return [a for a in text.split(",") if a in default] if text else default


def _log(row: dict, path: Path | None) -> dict:
    keys = ("experiment", "arm", "seed", "at", "lifted", "train_acc", "test_acc", "seconds")
    print(" ".join(f"{k}={row[k]:.4g}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in keys if k in row),
          flush=True)  # fmt: skip
    if path is not None:
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")
    return row


def _progress(tag: dict, path: Path | None):
    """Append each logged point of a run to the log (so a run stopped early still counts, marked)."""
    return lambda point: _log({**tag, "progress": True, **point}, path)


if __name__ == "__main__":
    main(sys.argv[1:])
