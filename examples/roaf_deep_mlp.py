"""The ROAF seed experiment (research/roaf.md §4): a 10 000-layer tanh MLP trains once compiled with ``roaf``.

    python examples/roaf_deep_mlp.py                    # depth 10 000, width 32: roaf vs plain, ~10 min on 2 cores
    python examples/roaf_deep_mlp.py --depth 50000      # compile + one training step; time and peak memory
    python examples/roaf_deep_mlp.py --quick            # depth 200, a few steps (the smoke test)
    python examples/roaf_deep_mlp.py --arms plain plain-xavier roaf --json docs/results/roaf_deep_mlp.json
    python examples/roaf_deep_mlp.py --arms roaf-hadamard --merge docs/results/roaf_deep_mlp.json  # one more arm

Protocol (the paper's task and optimiser are unknown; ours):

- Data: scikit-learn's 8x8 digits, 64 pixels standardised, 1437 train / 360 test (seeded split).
- Model: Linear(64, 32) + tanh, then ``depth`` x (Linear(32, 32) + tanh), then Linear(32, 10);
  PyTorch's default init. The plain arm is that model; the roaf arm is the same weights
  compiled with ``passes=["roaf"]`` (beta = c / depth = 1 / depth, alpha = 1 - beta);
  ``--arms plain-xavier`` adds the plain net with tanh's standard init (Glorot, gain 5/3).
- Adam (lr 1e-3), batch 64, cross-entropy, the same batch order for both arms.
- At initialisation: the gradient norm ||dL/dW_l|| of every block's weight on one batch;
  "early/late" is the mean over the first 10 blocks over the mean over the last 10.
- Printed: compile time and seconds per training step (wall and process CPU time: on a
  shared machine the CPU time is the figure that does not depend on the load), the loss
  every tenth of the run, test accuracy, and the process's peak resident memory.
- ``--json``: the configuration, wall time, threads and per arm these figures (the gradient
  norms of blocks 1, depth/2 and depth and of every depth/100-th block, the loss of every
  step) for the results page.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vgpcompile import vgpcompile
from vgpcompile.tools.baselines import write_json


def digits(seed: int = 0) -> dict[str, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=360, random_state=seed, stratify=y)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-6
    t = lambda a: torch.tensor(a, dtype=torch.float32)
    return {
        "x_train": t((x_tr - mean) / std), "y_train": torch.tensor(y_tr), "x_test": t((x_te - mean) / std),
        "y_test": torch.tensor(y_te),
    }  # fmt: skip


def deep_mlp(depth: int, width: int = 32, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(64, width), nn.Tanh()]
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def block_names(depth: int) -> list[str]:
    """Names of the block Linears in the Sequential (and in the compiled model)."""
    return [str(2 + 2 * k) for k in range(depth)]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gradient_norms(model: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor) -> list[float]:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    norms = [model.get_submodule(n).weight.grad.norm().item() for n in names]
    model.zero_grad(set_to_none=True)
    return norms


def train(model: nn.Module, data: dict, steps: int, lr: float, batch: int, seed: int) -> dict:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    n = data["x_train"].shape[0]
    losses, times = [], []
    for _ in range(steps):
        idx = torch.randint(0, n, (batch,), generator=g)
        start, cpu = time.perf_counter(), time.process_time()
        loss = F.cross_entropy(model(data["x_train"][idx]), data["y_train"][idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append((time.perf_counter() - start, time.process_time() - cpu))
        losses.append(loss.item())
    with torch.no_grad():
        acc = (model(data["x_test"]).argmax(1) == data["y_test"]).float().mean().item()
    wall, cpu = (statistics.median(t[i] for t in times) if times else 0.0 for i in (0, 1))
    return {"losses": losses, "step_s": wall, "step_cpu_s": cpu, "test_acc": acc}


def xavier_tanh(net: nn.Sequential) -> nn.Sequential:
    """The standard init for tanh: Glorot uniform with gain 5/3, zero biases."""
    for m in net:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain("tanh"))
            nn.init.zeros_(m.bias)
    return net


def arm(name: str, depth: int, args, data: dict) -> dict:
    net = deep_mlp(depth, args.width, args.seed)
    if name == "plain-xavier":
        net = xavier_tanh(net)
    out: dict = {"name": name}
    if name.startswith("roaf"):  # roaf-hadamard: the structured filter
        start, cpu = time.perf_counter(), time.process_time()
        options = {"roaf": {"seed": args.seed, **({"filter": "hadamard"} if name == "roaf-hadamard" else {})}}
        net = vgpcompile(net, passes=["roaf"], options=options, inplace=True)
        out["compile_s"], out["compile_cpu_s"] = time.perf_counter() - start, time.process_time() - cpu
        out["stats"] = net.vgp_report.stats["roaf"]
    names = block_names(depth)
    x, y = data["x_train"][: args.batch], data["y_train"][: args.batch]
    norms = gradient_norms(net, names, x, y)
    k = min(10, max(1, depth // 4))
    early, late = statistics.mean(norms[:k]), statistics.mean(norms[-k:])
    out.update(norms=norms, early=early, late=late, ratio=early / late if late else float("nan"))
    out.update(train(net, data, args.steps, args.lr, args.batch, args.seed))
    out["peak_mb"] = peak_mb()
    return out


def report(results: list[dict], depth: int, args) -> None:
    setup = f"Adam lr {args.lr:g}, batch {args.batch}, {args.steps} steps"
    print(f"\ndepth {depth}, width {args.width}, tanh; digits; {setup}")
    cols = [r["name"] for r in results]
    print(f"{'':34s}" + "".join(f"{c:>14s}" for c in cols))

    def row(label: str, fmt, key) -> None:
        print(f"{label:34s}" + "".join(f"{fmt(key(r)):>14s}" for r in results))

    row(
        "compile s (wall / cpu)",
        str,
        lambda r: f"{r['compile_s']:.1f} / {r['compile_cpu_s']:.1f}" if "compile_s" in r else "-",
    )
    row("train step s (median wall / cpu)", str, lambda r: f"{r['step_s']:.2f} / {r['step_cpu_s']:.2f}")
    for label, pick in (("block 1", 0), (f"block {depth // 2}", depth // 2 - 1), (f"block {depth}", depth - 1)):
        row(f"||dL/dW|| {label}", lambda v: f"{v:.2e}", lambda r, p=pick: r["norms"][p])
    row("early/late gradient ratio", lambda v: f"{v:.3g}", lambda r: r["ratio"])
    if args.steps:
        tenth = max(1, args.steps // 10)
        for s in range(0, args.steps, tenth):
            window = lambda r, s=s: statistics.mean(r["losses"][s : s + tenth])
            row(f"loss, steps {s + 1}-{min(s + tenth, args.steps)}", lambda v: f"{v:.3f}", window)
        row("test accuracy", lambda v: f"{v:.3f}", lambda r: r["test_acc"])
    row("peak RSS MB (process, so far)", lambda v: f"{v:.0f}", lambda r: r["peak_mb"])
    for r in results:
        if "stats" in r:
            print(f"roaf: {r['stats']}")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=10_000)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None, help="default 100; 1 for depths above 20 000")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", nargs="+", choices=["plain", "plain-xavier", "roaf", "roaf-hadamard"], default=None,
                        help="default: plain and roaf up to depth 20 000, roaf alone above; plain-xavier is the "
                        "plain net with tanh's standard init (Glorot, gain 5/3)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="depth 200, 8 steps: a smoke test")
    parser.add_argument("--json", type=Path, help="write the configuration and every arm's figures here")
    parser.add_argument("--merge", type=Path, help="run --arms and put them into this saved --json (the same "
                        "configuration; an arm of that name is replaced, the others kept, not rerun)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.merge and not args.arms:
        parser.error("--merge needs --arms: the arms to run and add to the saved JSON")
    if args.merge and args.json:
        parser.error("--merge rewrites its file in place: give --merge or --json, not both")
    if args.quick:
        args.depth, args.steps = 200, args.steps or 8
    big = args.depth > 20_000
    args.steps = args.steps if args.steps is not None else (1 if big else 100)
    arms = args.arms or (["roaf"] if big else ["plain", "roaf"])
    torch.set_num_threads(1)
    config = {k: v for k, v in vars(args).items() if k not in ("json", "quick", "merge")} | {"arms": arms}
    if args.merge:
        same_experiment(args.merge, config)  # before minutes of training, not after
    data = digits(args.seed)
    start = time.perf_counter()
    results = [arm(name, args.depth, args, data) for name in arms]
    report(results, args.depth, args)
    seconds = round(time.perf_counter() - start, 1)
    if args.json:
        write_json(args.json, {"example": "roaf_deep_mlp", "config": config, "threads": torch.get_num_threads(),
                               "seconds": seconds, "arms": [summary(r, args.depth) for r in results]})  # fmt: skip
    if args.merge:
        merge(args.merge, config, seconds, [summary(r, args.depth) for r in results], argv)
    return results


def merge(path: Path, config: dict, seconds: float, new: list[dict], argv: list[str] | None) -> None:
    """Put the arms just run into the saved JSON at ``path``; ``added`` records the command that
    ran each (the results page says so)."""
    data = same_experiment(path, config)
    names = [a["name"] for a in new]
    arms = [a for a in data["arms"] if a["name"] not in names] + new
    command = "python examples/roaf_deep_mlp.py " + " ".join(sys.argv[1:] if argv is None else argv)
    data["arms"], data["config"]["arms"] = arms, [a["name"] for a in arms]
    for name in names:
        data.setdefault("added", {})[name] = {"command": command, "seconds": seconds}
    write_json(path, data)


def same_experiment(path: Path, config: dict) -> dict:
    """The saved JSON at ``path``, if it was run with this configuration (arms aside)."""
    data = json.loads(path.read_text())
    saved = {k: v for k, v in data["config"].items() if k != "arms"}
    mine = {k: v for k, v in config.items() if k != "arms"}
    if saved != mine:
        raise SystemExit(f"roaf_deep_mlp --merge: {path} was run with {saved}, this run with {mine}; "
                         "give the same --depth/--width/--steps/--lr/--batch/--seed")  # fmt: skip
    return data


def summary(result: dict, depth: int) -> dict:
    """One arm's figures for the JSON: every norm would be ``depth`` numbers, so blocks 1,
    depth/2, depth and every depth/100-th block."""
    every = max(1, depth // 100)
    out = {k: v for k, v in result.items() if k != "norms"}
    norms = result["norms"]
    out["norm_first"], out["norm_mid"], out["norm_last"] = norms[0], norms[depth // 2 - 1], norms[-1]
    out["norms_every"], out["norms_blocks"] = norms[::every], list(range(1, depth + 1, every))
    return out


if __name__ == "__main__":
    main()
