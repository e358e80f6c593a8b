"""The plain baseline ladder: what a practitioner would use instead of a pass.

Every comparison of a compiled model against a plain one takes the plain arm from here, so
the demo, the examples and ``diagnose`` compare against the same, strongest standard
practice: for each activation its standard initialisation (Kaiming for the ReLU family,
LeCun for SELU, Xavier/Glorot with the activation's gain for tanh and sigmoid, orthogonal
with the activation's gain, PyTorch's default), and the usual architectural fixes
(BatchNorm or LayerNorm after each hidden Linear, residual connections).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.catalogue import DEFAULT

RELU_FAMILY = ("relu", "leaky_relu", "relu6")
# torch.nn.init.calculate_gain knows these; the others get the gain of their closest kin
_GAIN_NAME = {"tanh": "tanh", "sigmoid": "sigmoid", "relu": "relu", "leaky_relu": "leaky_relu", "selu": "selu"}
_GAIN_KIN = {"relu6": "relu", "gelu": "relu", "silu": "relu", "mish": "relu", "elu": "relu", "celu": "relu"}


def gain(activation: str, negative_slope: float = 0.01) -> float:
    """The gain torch recommends for ``activation`` (its closest kin where torch has none)."""
    name = _GAIN_NAME.get(activation) or _GAIN_KIN.get(activation)
    if name is None:
        return 1.0
    if name == "leaky_relu":
        return nn.init.calculate_gain(name, negative_slope)
    return nn.init.calculate_gain(name)


def standard_inits(activation: str) -> list[str]:
    """The initialisations a practitioner would try for ``activation``, the standard one first."""
    if activation in RELU_FAMILY or activation in _GAIN_KIN:
        first = "kaiming"
    elif activation == "selu":
        first = "lecun"
    else:
        first = "xavier"
    return [first] + [i for i in ("kaiming", "xavier", "lecun", "orthogonal", "default") if i != first]


# Not a practitioner's rung: the BSNN recipe's init (orthogonal, gain 1; plain_mlp scales the
# input layer so the hidden signal sits on the thin shell). The like-with-like reference for
# a compiled arm that starts from it.
ORTHOGONAL1 = "orthogonal1"


@torch.no_grad()
def init_linear(layer: nn.Linear, init: str, activation: str) -> None:
    """Initialise one Linear (biases to 0, except for 'default', which keeps torch's)."""
    w = layer.weight
    if init == "default":
        layer.reset_parameters()
        return
    if init == ORTHOGONAL1:
        nn.init.orthogonal_(w)
    elif init == "kaiming":
        slope = 0.01 if activation == "leaky_relu" else 0.0
        kind = "leaky_relu" if activation == "leaky_relu" else "relu"
        nn.init.kaiming_normal_(w, a=slope, nonlinearity=kind)
    elif init == "lecun":
        nn.init.normal_(w, 0.0, 1.0 / math.sqrt(w.shape[1]))
    elif init == "xavier":
        nn.init.xavier_normal_(w, gain=gain(activation))
    elif init == "orthogonal":
        nn.init.orthogonal_(w, gain=gain(activation))
    else:
        raise ValueError(f"unknown init {init!r}; use one of {[*standard_inits(activation), ORTHOGONAL1]}")
    if layer.bias is not None:
        layer.bias.zero_()


class Residual(nn.Module):
    """x + f(x)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.inner(x)


@dataclass(frozen=True)
class Arm:
    """One plain baseline: an initialisation and optionally an architectural fix."""

    init: str
    norm: str | None = None  # None, "batch" or "layer"
    residual: bool = False

    @property
    def name(self) -> str:
        extras = [self.norm + "norm"] if self.norm else []
        extras += ["residual"] if self.residual else []
        return "+".join([self.init, *extras])


def ladder(activation: str, architectural: bool = True) -> list[Arm]:
    """The plain arms for ``activation``: every standard init, then the standard one with the
    usual architectural fixes (BatchNorm, LayerNorm, a residual connection, and LayerNorm
    with a residual connection: the fix deep MLPs get in practice)."""
    arms = [Arm(init) for init in standard_inits(activation)]
    if architectural:
        first = standard_inits(activation)[0]
        arms += [Arm(first, norm="batch"), Arm(first, norm="layer"), Arm(first, residual=True),
                 Arm(first, norm="layer", residual=True)]  # fmt: skip
    return arms


def plain_mlp(
    activation: str, depth: int, width: int, d_in: int, d_out: int, arm: Arm = Arm("default"), seed: int = 0
) -> nn.Sequential:
    """Linear(d_in, width) + act, ``depth`` hidden blocks (Linear(width, width) [+ norm] + act,
    optionally residual), Linear(width, d_out); initialised as ``arm`` says."""
    act_cls = _module_class(activation)
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(d_in, width), act_cls()]
    for _ in range(depth):
        block: list[nn.Module] = [nn.Linear(width, width)]
        if arm.norm == "batch":
            block.append(nn.BatchNorm1d(width))
        elif arm.norm == "layer":
            block.append(nn.LayerNorm(width))
        block.append(act_cls())
        layers.append(Residual(nn.Sequential(*block)) if arm.residual else nn.Sequential(*block))
    layers.append(nn.Linear(width, d_out))
    net = nn.Sequential(*layers)
    for m in net.modules():
        if isinstance(m, nn.Linear):
            init_linear(m, arm.init, activation)
    if arm.init == ORTHOGONAL1:  # ||W x||^2 = width for standardized inputs (||x||^2 ~ d_in)
        with torch.no_grad():
            layers[0].weight.mul_(math.sqrt(width / d_in))
    return net


def seeded_passes(passes, seed: int) -> list:
    """``passes`` (names, pipeline strings or instances) as instances, each pass that draws
    random values (a ``seed`` option: orthogonal, roaf, tat) drawing them from ``seed``.

    A comparison's seeds must differ in everything a run draws: left at its default (0), such
    a pass would give every seed of an arm the same init, and its sd would only measure data
    and batch order."""
    import dataclasses

    from ..core.registry import resolve

    seeds = lambda p: "seed" in {f.name for f in dataclasses.fields(p)}  # noqa: E731
    return [dataclasses.replace(p, seed=seed) if seeds(p) else p for p in resolve(passes)]


def _module_class(activation: str) -> Callable[[], nn.Module]:
    kind = DEFAULT.get(activation).name
    return next(cls for cls, (k, _) in DEFAULT.modules.items() if k == kind)


# ---------------------------------------------------------------------------------------
# The shared comparison: every arm (plain ladder rungs and compiled arms) trained by the
# same loop under the same budget, over the same learning-rate sweep and seeds.

Metrics = dict[str, float]


@dataclass(frozen=True)
class Sweep:
    """The learning rates and seeds every arm gets; ``select`` names the metric that picks
    an arm's learning rate (a validation metric: the reported ones are measured elsewhere)."""

    lrs: tuple[float, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    select: str = "val_loss"
    higher_is_better: bool = False


@dataclass
class ArmResult:
    """One arm's runs: for each learning rate, one Metrics per seed."""

    name: str
    kind: str  # "plain" (same architecture), "architectural" (a plain fix that changes it) or "compiled"
    sweep: Sweep
    runs: dict[float, list[Metrics]]
    seconds: float = 0.0

    def score(self, lr: float) -> float:
        """The mean of the selection metric at ``lr``; a diverged seed makes it the worst."""
        if len(self.runs) == 1 and all(self.sweep.select not in m for m in self.runs[lr]):
            return 0.0  # an arm run at one fixed rate (a logged reference run): nothing to select
        values = [_number(m.get(self.sweep.select)) for m in self.runs[lr]]
        if not values or any(not math.isfinite(v) for v in values):
            return -math.inf if self.sweep.higher_is_better else math.inf
        return sum(values) / len(values)

    @property
    def best_lr(self) -> float:
        pick = max if self.sweep.higher_is_better else min
        return pick(self.runs, key=lambda lr: (self.score(lr), -lr))

    def values(self, key: str, lr: float | None = None) -> list[float]:
        return [_number(m.get(key)) for m in self.runs[self.best_lr if lr is None else lr]]

    def summary(self, key: str, lr: float | None = None) -> tuple[float, float, int]:
        """(mean, sample standard deviation, diverged seeds) of ``key`` at ``lr`` (default: best)."""
        values = self.values(key, lr)
        finite = [v for v in values if math.isfinite(v)]
        if not finite:
            return math.nan, math.nan, len(values)
        mean = sum(finite) / len(finite)
        sd = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else 0.0
        return mean, sd, len(values) - len(finite)

    def cell(self, key: str, lr: float | None = None, digits: int = 4) -> str:
        mean, sd, bad = self.summary(key, lr)
        if not math.isfinite(mean):
            return "diverged"
        text = f"{mean:.{digits}f} ± {sd:.{digits}f}"
        return text + (f" ({bad} diverged)" if bad else "")

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "best_lr": self.best_lr,
            "seconds": round(self.seconds, 2),
            "runs": {repr(lr): runs for lr, runs in self.runs.items()},
        }


@dataclass
class Comparison:
    """Arms side by side, with the reference levels ("chance accuracy", "target variance",
    ...) that say what a number means: a loss at the target variance has learnt nothing."""

    title: str
    budget: str
    sweep: Sweep
    arms: list[ArmResult]
    reference: dict[str, float]
    reported: tuple[str, ...]  # the metrics the table shows, at each arm's best lr
    better: dict[str, bool]  # metric -> higher is better
    digits: int = 4  # decimals in the tables

    def best(self, kinds: tuple[str, ...], key: str) -> ArmResult | None:
        """The arm of ``kinds`` with the best mean ``key`` at its own best lr."""
        pool = [a for a in self.arms if a.kind in kinds and math.isfinite(a.summary(key)[0])]
        if not pool:
            return None
        sign = 1 if self.better.get(key, False) else -1
        return max(pool, key=lambda a: sign * a.summary(key)[0])

    def verdict(self, key: str, kinds: tuple[str, ...] = ("plain", "architectural")) -> list[dict]:
        """The best compiled arm against the best arm of each of ``kinds`` on ``key``: "wins"
        or "loses" when the means differ by more than the two sds together (and 1% of the
        larger), else "ties"."""
        comp = self.best(("compiled",), key)
        out = []
        for kind in kinds:
            other = self.best((kind,), key)
            if comp is None or other is None:
                continue
            (c, c_sd, _), (o, o_sd, _) = comp.summary(key), other.summary(key)
            margin = max(c_sd + o_sd, 0.01 * max(abs(c), abs(o)))
            better = c > o if self.better.get(key, False) else c < o
            word = "ties" if abs(c - o) <= margin else "wins" if better else "loses"
            out.append({"kind": kind, "word": word, "compiled": comp.name, "compiled_mean": c, "compiled_sd": c_sd,
                        "compiled_lr": comp.best_lr, "other": other.name, "other_mean": o, "other_sd": o_sd,
                        "other_lr": other.best_lr})  # fmt: skip
        return out

    def table(self) -> str:
        """Markdown: one row per arm (best lr, each reported metric mean ± sd over seeds)."""
        refs = ", ".join(f"{k} {v:.4g}" for k, v in self.reference.items())
        head = ["arm", "kind", "best lr", *self.reported]
        lines = [f"{self.title}. {self.budget}; mean ± sd over seeds {list(self.sweep.seeds)}, lr picked by "
                 f"{'max' if self.sweep.higher_is_better else 'min'} mean {self.sweep.select} over "
                 f"{[float(lr) for lr in self.sweep.lrs]}. Reference: {refs}.", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
        for arm in self.arms:
            lr = f"{arm.best_lr:g}" if math.isfinite(arm.score(arm.best_lr)) else "—"  # every rate diverged
            cells = [arm.name, arm.kind, lr, *(arm.cell(k, digits=self.digits) for k in self.reported)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def lr_table(self, key: str | None = None) -> str:
        """Markdown: the mean ``key`` (default: the selection metric) of every arm at every lr,
        so robustness across learning rates is visible, not only each arm's best."""
        key = key or self.sweep.select
        head = ["arm", *(f"lr {lr:g}" for lr in self.sweep.lrs)]
        lines = [f"mean {key} per learning rate", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for arm in self.arms:
            digits = max(1, self.digits - 1)
            cells = [arm.cell(key, lr, digits) if lr in arm.runs else "not run" for lr in self.sweep.lrs]
            lines.append("| " + " | ".join([arm.name, *cells]) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "title": self.title,
            "budget": self.budget,
            "sweep": {"lrs": list(self.sweep.lrs), "seeds": list(self.sweep.seeds), "select": self.sweep.select,
                      "higher_is_better": self.sweep.higher_is_better},
            "reference": self.reference,
            "reported": list(self.reported),
            "better": self.better,
            "digits": self.digits,
            "arms": [a.to_dict() for a in self.arms],
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict) -> Comparison:
        sweep = Sweep(tuple(data["sweep"]["lrs"]), tuple(data["sweep"]["seeds"]), data["sweep"]["select"],
                      data["sweep"]["higher_is_better"])  # fmt: skip
        arms = [
            ArmResult(a["name"], a["kind"], sweep, {float(lr): runs for lr, runs in a["runs"].items()}, a["seconds"])
            for a in data["arms"]
        ]
        return cls(data["title"], data["budget"], sweep, arms, data["reference"], tuple(data["reported"]),
                   data["better"], data.get("digits", 4))  # fmt: skip


def run_arms(
    builders: dict[str, tuple[str, Callable[[int], nn.Module]]],
    train: Callable[[nn.Module, float, int], Metrics],
    sweep: Sweep,
    progress: Callable[[str], None] | None = None,
) -> list[ArmResult]:
    """Train every arm at every lr and seed with the same ``train(model, lr, seed)`` loop.

    ``builders`` maps an arm's name to (kind, build(seed) -> fresh model); each run builds
    its model anew, so no state leaks between runs.
    """
    results = []
    for name, (kind, build) in builders.items():
        start = time.perf_counter()
        runs: dict[float, list[Metrics]] = {}
        for lr in sweep.lrs:
            runs[lr] = [train(build(seed), lr, seed) for seed in sweep.seeds]
        results.append(ArmResult(name, kind, sweep, runs, time.perf_counter() - start))
        if progress:
            arm = results[-1]
            progress(f"  {name:<28} best lr {arm.best_lr:<8g} {sweep.select} {arm.cell(sweep.select)}  "
                     f"({arm.seconds:.0f}s)")  # fmt: skip
    return results


def write_json(path: str | os.PathLike, payload: dict) -> None:
    """Write ``payload`` as JSON through a temporary name, so a failed run leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_finite(payload), indent=1, allow_nan=False) + "\n")
    tmp.replace(path)


def _finite(value):
    """NaN and infinities as null: strict JSON (a diverged run has no loss)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _number(value) -> float:
    return math.nan if value is None else float(value)
