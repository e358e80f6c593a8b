"""``vgpcompile demo``: a deep MLP compiled with ``gpn`` (and ``tat``), against the plain baseline ladder.

The regime was found by measurement (docs/results.md): a 52-layer GELU MLP trained with SGD
and momentum. GELU shrinks the signal at every layer under every standard initialisation
(Kaiming, LeCun, Xavier, orthogonal with the activation's gain, PyTorch's default), so
their hidden-layer weight gradients start 3 to 28 orders of magnitude below the compiled
arm's, and with SGD they stay far from fitting; the same architecture compiled with
``gpn`` from an orthogonal gain-1 init starts with gradients of order 1 and fits.
Changing the architecture instead (LayerNorm and a residual connection in every block)
fits as well and at more learning rates; with Adam, Kaiming init also fits this task
(``--optimizer adam``).

Every arm gets the same loop, steps, learning-rate sweep and seeds; each arm's rate is the
one with the lowest mean validation loss; the test accuracy is reported at that rate, next
to chance (0.5).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ..core.report import VgpWarning
from .baselines import (
    ORTHOGONAL1,
    Arm,
    Comparison,
    Sweep,
    ladder,
    plain_mlp,
    run_arms,
    seeded_passes,
    standard_inits,
)
from .probes import layer_grad_norms, measure

CHANCE = 0.5


@dataclass(frozen=True)
class DemoConfig:
    activation: str = "gelu"
    depth: int = 50
    width: int = 64
    steps: int = 300
    batch: int = 64
    optimizer: str = "sgd"  # "sgd" (momentum 0.9) or "adam"
    lrs: tuple[float, ...] | None = None  # default: 1e-3, 1e-2, 1e-1 for SGD; 3e-4, 1e-3, 3e-3 for Adam
    seeds: int = 1
    full: bool = False  # the whole ladder (every init and every architectural fix), not the short one
    passes: tuple[str, ...] = ("gpn",)
    # other compiled arms, each a pass list compiled from PyTorch's default init (tat sets its own init);
    # an arm whose extra is not installed is left out with a line saying which
    rivals: tuple[str, ...] = ("tat",)
    plot: str | None = None  # write the step-0 before/after plot (diagnose's gradients figure) here

    @property
    def sweep_lrs(self) -> tuple[float, ...]:
        if self.lrs:
            return tuple(self.lrs)
        return (1e-3, 1e-2, 1e-1) if self.optimizer == "sgd" else (3e-4, 1e-3, 3e-3)


def moons(n: int, seed: int, noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaved half circles, standardised; generated, so nothing is downloaded."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * math.pi
    label = torch.randint(0, 2, (n,), generator=g)
    x = torch.stack([torch.cos(t), torch.sin(t)], 1)
    x = torch.where(label[:, None] == 1, torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], 1), x)
    x = x + noise * torch.randn(n, 2, generator=g)
    return (x - x.mean(0)) / x.std(0), label


def data(seed: int) -> dict[str, torch.Tensor]:
    """2048 training points, 512 validation, 512 test; seeded per run."""
    x, y = moons(3072, 100 + seed)
    return {"x_train": x[:2048], "y_train": y[:2048], "x_val": x[2048:2560], "y_val": y[2048:2560],
            "x_test": x[2560:], "y_test": y[2560:]}  # fmt: skip


def train(model: nn.Module, lr: float, seed: int, cfg: DemoConfig) -> dict[str, float]:
    """The one loop every arm gets; a run whose loss stops being finite is reported as diverged."""
    return fit(model, data(seed), lr, seed, cfg)


def fit(
    model: nn.Module, d: dict[str, torch.Tensor], lr: float, seed: int, cfg: DemoConfig,
    losses: tuple[str, ...] = ("val", "test", "train"),
) -> dict[str, float]:
    """:func:`train`'s loop on any split dict ``d`` (``x_train``, ``y_train``, ... as :func:`data`
    gives them): the final loss on each split of ``losses`` and the test accuracy."""
    params = model.parameters()
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9) if cfg.optimizer == "sgd" else torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(cfg.steps):
        idx = torch.randint(0, len(d["x_train"]), (cfg.batch,), generator=g)
        loss = nn.functional.cross_entropy(model(d["x_train"][idx]), d["y_train"][idx])
        if not torch.isfinite(loss):
            return {**{f"{s}_loss": math.nan for s in losses}, "test_acc": math.nan}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out = {f"{s}_loss": nn.functional.cross_entropy(model(d[f"x_{s}"]), d[f"y_{s}"]).item() for s in losses}
        out["test_acc"] = accuracy(model, d["x_test"], d["y_test"])
    return out


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def compiled(seed: int, cfg: DemoConfig) -> nn.Module:
    """The compiled arm: the plain architecture from an orthogonal gain-1 init, compiled."""
    from ..api import vgpcompile

    net = plain_mlp(cfg.activation, cfg.depth, cfg.width, 2, 2, Arm(ORTHOGONAL1), seed=seed)
    with warnings.catch_warnings():  # "gpn without orthogonal": the weights are orthogonal already
        warnings.simplefilter("ignore", VgpWarning)
        return vgpcompile(net, passes=seeded_passes(list(cfg.passes), seed))


def arms(cfg: DemoConfig) -> dict[str, tuple[str, Callable[[int], nn.Module]]]:
    """The ladder rungs (the short one: the standard init, orthogonal with the activation's
    gain, the compiled arm's own init, LayerNorm + residual) and the compiled arm."""
    standard = standard_inits(cfg.activation)[0]
    if cfg.full:
        rungs = ladder(cfg.activation)
        rungs.insert(len(standard_inits(cfg.activation)), Arm(ORTHOGONAL1))
    else:
        rungs = [Arm(standard), Arm("orthogonal"), Arm(ORTHOGONAL1), Arm(standard, norm="layer", residual=True)]
    out = {}
    for arm in rungs:
        kind = "architectural" if arm.norm or arm.residual else "plain"
        out[arm.name] = (kind, partial(plain_mlp, cfg.activation, cfg.depth, cfg.width, 2, 2, arm))
    out["+".join(cfg.passes)] = ("compiled", partial(compiled, cfg=cfg))
    for rival in available(cfg.rivals):
        out[rival] = ("compiled", partial(compiled_rival, cfg=cfg, passes=rival))
    return {name: (kind, _seeded(build)) for name, (kind, build) in out.items()}


def available(rivals: Sequence[str]) -> list[str]:
    """The rival arms whose extras are installed (tat needs the dks package)."""
    import importlib.util

    return [r for r in rivals if r != "tat" or importlib.util.find_spec("dks") is not None]


def compiled_rival(seed: int, cfg: DemoConfig, passes: str) -> nn.Module:
    """A rival compiled arm: the plain architecture (PyTorch's default init) compiled with
    ``passes``, whose own random draws (tat's init) come from ``seed`` too."""
    from ..api import vgpcompile

    net = plain_mlp(cfg.activation, cfg.depth, cfg.width, 2, 2, Arm("default"), seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VgpWarning)
        return vgpcompile(net, passes=seeded_passes(passes, seed))


def _seeded(build):
    return lambda seed: build(seed=seed)


def gradient_table(cfg: DemoConfig, seeds: Sequence[int] = (0, 1, 2)) -> list[dict]:
    """Per arm (each init of the same architecture, and the compiled arm): the hidden-layer
    weight-gradient norms at step 0 on a batch of 256, in float64 so that vanished gradients
    are measured rather than flushed to 0. Like with like: ``orthogonal1`` is the compiled
    arm's own init without the pass."""
    inits = standard_inits(cfg.activation) + [ORTHOGONAL1]
    builders = {i: partial(plain_mlp, cfg.activation, cfg.depth, cfg.width, 2, 2, Arm(i)) for i in inits}
    builders["+".join(cfg.passes) + " (on orthogonal1)"] = partial(compiled, cfg=cfg)
    rows = []
    for name, build in builders.items():
        per_seed = []
        for seed in seeds:
            x, y = moons(256, seed)
            norms = layer_grad_norms(build(seed=seed).double(), x.double(), y)[1:-1]
            per_seed.append({"ratio": max(norms) / max(min(norms), 1e-300), "min": min(norms), "max": max(norms)})
        rows.append({"arm": name, "seeds": per_seed})
    return rows


def format_gradients(rows: list[dict]) -> str:
    lines = ["| arm | max/min over hidden layers | smallest norm | largest norm |", "|---|---|---|---|"]
    for row in rows:
        cells = [" ".join(f"{s[k]:.2g}" for s in row["seeds"]) for k in ("ratio", "min", "max")]
        lines.append(f"| {row['arm']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


LABELS = {"plain": "the best plain init of the same architecture", "architectural": "the best architectural fix"}
WORDS = {"wins": "wins against", "loses": "loses to", "ties": "ties with"}


def verdict(comparison: Comparison) -> list[str]:
    """What the table says, in words computed from it."""
    key = "test_acc"
    lines = [f"  {v['compiled']} {WORDS[v['word']]} {LABELS[v['kind']]}: test accuracy "
             f"{v['compiled_mean']:.3f} (lr {v['compiled_lr']:g}) vs {v['other_mean']:.3f} ({v['other']}, lr "
             f"{v['other_lr']:g}); chance {CHANCE}" for v in comparison.verdict(key)]  # fmt: skip
    for arm in comparison.arms:
        ok = [lr for lr in comparison.sweep.lrs if arm.summary(key, lr)[0] > 0.9]
        lines.append(f"  {arm.name:<28} learns (test accuracy > 0.9) at {len(ok)} of {len(comparison.sweep.lrs)} "
                     f"rates {[float(v) for v in ok]}")  # fmt: skip
    return lines


def write_plot(cfg: DemoConfig):
    """diagnose's per-layer figure at step 0: the standard init of the plain net vs the compiled arm."""
    from .plots import layer_figure, save_figure

    x, y = moons(256, 0)
    standard = standard_inits(cfg.activation)[0]
    plain = plain_mlp(cfg.activation, cfg.depth, cfg.width, 2, 2, Arm(standard), seed=0)
    named = {f"plain ({standard})": measure(plain, x, y), "+".join(cfg.passes): measure(compiled(0, cfg), x, y)}
    title = f"{cfg.depth + 2}-layer {cfg.activation} MLP at step 0"
    return save_figure(layer_figure(named, title), cfg.plot)


@dataclass
class DemoResult:
    comparison: Comparison
    gradients: list[dict]
    seconds: float


def run_demo(cfg: DemoConfig = DemoConfig(), out=print) -> DemoResult:
    """Gradient norms at step 0, then every arm trained by the same loop."""
    start = time.perf_counter()
    # vanished signals in the plain arms reach float32's subnormal range, 3-10x slower on
    # x86; flushing them to zero changes nothing above 1e-38 and keeps the arms' times comparable
    torch.set_flush_denormal(True)
    out(f"vgpcompile demo: {cfg.depth + 2}-layer {cfg.activation} MLP, width {cfg.width}, two-moons data "
        f"(chance accuracy {CHANCE}, loss at chance ln 2 = {math.log(2):.3f})")  # fmt: skip
    out(f"\nhidden-layer weight-gradient norms at step 0 (3 seeds each, float64; like with like: "
        f"{ORTHOGONAL1} = the compiled arm's own init without the pass)")  # fmt: skip
    gradients = gradient_table(cfg)
    out(format_gradients(gradients))
    if cfg.plot:
        out(f"  wrote {write_plot(cfg)}")
    sweep = Sweep(cfg.sweep_lrs, tuple(range(cfg.seeds)), select="val_loss")
    opt = "SGD momentum 0.9" if cfg.optimizer == "sgd" else "Adam"
    budget = f"{opt}, batch {cfg.batch}, {cfg.steps} steps"
    out(f"\ntraining every arm: {budget}, lrs {list(sweep.lrs)}, seeds {list(sweep.seeds)}")
    for rival in sorted(set(cfg.rivals) - set(available(cfg.rivals))):
        out(f"  ({rival} arm left out: pip install 'vgpcompile[{rival}]')")
    results = run_arms(arms(cfg), lambda m, lr, seed: train(m, lr, seed, cfg), sweep, progress=out)
    comparison = Comparison(
        f"demo: {cfg.depth + 2}-layer {cfg.activation} MLP, width {cfg.width}, two moons", budget, sweep, results,
        {"chance accuracy": CHANCE, "loss at chance": math.log(2)}, ("test_acc", "test_loss", "train_loss"),
        {"test_acc": True}, digits=3,
    )  # fmt: skip
    out("\n" + comparison.table() + "\n\n" + comparison.lr_table("test_acc") + "\n")
    for line in verdict(comparison):
        out(line)
    if not cfg.full or cfg.seeds < 3:
        out("\n  (short run: --seeds 3 for mean ± sd, --full for every init and architectural fix; the full "
            "3-seed ladder is in docs/results.md)")  # fmt: skip
    seconds = time.perf_counter() - start
    out(f"  wall time {seconds:.0f}s")
    return DemoResult(comparison, gradients, seconds)
