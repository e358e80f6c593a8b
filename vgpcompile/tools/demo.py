"""``vgpcompile demo``: a deep MLP trained plain and compiled, side by side.

Both arms start from the same weights: orthogonal init with the first layer scaled so the
hidden input sits on the thin shell (||x||^2 = width), as the BSNN paper assumes. Data are
generated two-moons points; the optimizer is the paper's SGD with momentum 0.5.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core.catalogue import DEFAULT
from .probes import layer_grad_norms, measure

__all__ = ["DemoConfig", "accuracy", "deep_mlp", "layer_grad_norms", "moons", "run_demo", "train"]


@dataclass(frozen=True)
class DemoConfig:
    activation: str = "relu"
    depth: int = 50
    width: int = 128
    steps: int = 400
    lr: float = 1e-4
    batch: int = 64
    seed: int = 0
    passes: tuple[str, ...] = ("gpn",)
    plot: str | None = None  # write the step-0 before/after plot (diagnose's gradients figure) here


def moons(n: int, seed: int, noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaved half circles, standardised; generated, so nothing is downloaded."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * math.pi
    label = torch.randint(0, 2, (n,), generator=g)
    x = torch.stack([torch.cos(t), torch.sin(t)], 1)
    x = torch.where(label[:, None] == 1, torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], 1), x)
    x = x + noise * torch.randn(n, 2, generator=g)
    return (x - x.mean(0)) / x.std(0), label


def deep_mlp(activation: str = "relu", depth: int = 50, width: int = 128, d_in: int = 2, d_out: int = 2, seed: int = 0):
    """Linear(d_in, width) + act, ``depth`` x (Linear(width, width, bias=False) + act), Linear(width, d_out)."""
    act = DEFAULT.get(activation)
    module_cls = next(cls for cls, (kind, _) in DEFAULT.modules.items() if kind == act.name)
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(d_in, width), module_cls()]
    for _ in range(depth):
        layers += [nn.Linear(width, width, bias=False), module_cls()]
    layers.append(nn.Linear(width, d_out))
    net = nn.Sequential(*layers)
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.orthogonal_(m.weight, gain=math.sqrt(width / d_in) if m is layers[0] else 1.0)
    return net


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: DemoConfig) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.5)
    g = torch.Generator().manual_seed(cfg.seed)
    losses = []
    for _ in range(cfg.steps):
        idx = torch.randint(0, len(x), (cfg.batch,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item() if math.isfinite(loss.item()) else float("nan"))
    return losses


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def run_demo(cfg: DemoConfig = DemoConfig(), out=print) -> dict[str, float]:
    """Train both arms; print losses and gradient norms side by side; return the headline figures."""
    from ..api import vgpcompile

    x, y = moons(2048, cfg.seed)
    plain = deep_mlp(cfg.activation, cfg.depth, cfg.width, seed=cfg.seed)
    compiled = vgpcompile(copy.deepcopy(plain), passes=list(cfg.passes))
    out(f"vgpcompile demo: {cfg.depth + 2}-layer {cfg.activation} MLP, width {cfg.width}, two-moons data")
    out(
        f"  compiled with passes={list(cfg.passes)}: {compiled.vgp_report.changed_count(cfg.passes[0])} sites rewritten"
    )
    before, after = measure(plain, x[:256], y[:256]), measure(compiled, x[:256], y[:256])
    _print_grads(before.grad_norms(), after.grad_norms(), out)
    if cfg.plot:
        from .plots import layer_figure, save_figure

        title = f"{cfg.depth + 2}-layer {cfg.activation} MLP at step 0: plain vs passes={list(cfg.passes)}"
        out(f"  wrote {save_figure(layer_figure({'plain': before, 'compiled': after}, title), cfg.plot)}")
    t0 = time.perf_counter()
    lp = train(plain, x, y, cfg)
    t1 = time.perf_counter()
    lc = train(compiled, x, y, cfg)
    t2 = time.perf_counter()
    out(f"\n  training: SGD(lr={cfg.lr}, momentum=0.5), batch {cfg.batch}, {cfg.steps} steps")
    out(f"  {'step':>6}  {'plain loss':>12}  {'compiled loss':>14}")
    for step in sorted({0, *range(cfg.steps // 8, cfg.steps, cfg.steps // 8), cfg.steps - 1}):
        out(f"  {step + 1:>6}  {lp[step]:>12.4f}  {lc[step]:>14.4f}")
    result = {
        "plain_final_loss": sum(lp[-20:]) / 20,
        "compiled_final_loss": sum(lc[-20:]) / 20,
        "plain_accuracy": accuracy(plain, x, y),
        "compiled_accuracy": accuracy(compiled, x, y),
    }
    out(
        f"\n  final loss (mean of last 20 steps): plain {result['plain_final_loss']:.4f}, "
        f"compiled {result['compiled_final_loss']:.4f}"
    )
    acc_p, acc_c = result["plain_accuracy"], result["compiled_accuracy"]
    out(f"  accuracy on the 2048 points: plain {acc_p:.3f}, compiled {acc_c:.3f}")
    out(f"  wall time: plain {t1 - t0:.1f}s, compiled {t2 - t1:.1f}s")
    return result


def _print_grads(plain: Sequence[float], compiled: Sequence[float], out) -> None:
    out("\n  per-layer weight-gradient norm at step 0 (layer 1 = input side)")
    out(f"  {'layer':>6}  {'plain':>12}  {'compiled':>12}")
    n = len(plain)
    for i in sorted({0, 1, n // 4, n // 2, 3 * n // 4, n - 2, n - 1}):
        out(f"  {i + 1:>6}  {plain[i]:>12.3e}  {compiled[i]:>12.3e}")
    hidden_p, hidden_c = plain[1:-1], compiled[1:-1]
    out(
        f"  hidden layers, max/min: plain {max(hidden_p) / max(min(hidden_p), 1e-300):.3g}, "
        f"compiled {max(hidden_c) / max(min(hidden_c), 1e-300):.3g}"
    )
