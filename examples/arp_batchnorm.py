"""Does auto-rotation help a conv -> BatchNorm -> activation CNN? Measured on scikit-learn digits.

    python examples/arp_batchnorm.py               # relu and tanh, 3 seeds, 3 learning rates (~10 min, 1 thread)
    python examples/arp_batchnorm.py --quick       # one activation, one seed, one lr (a smoke run)

The most common CNN block is conv -> BatchNorm -> act, and arp has three things it could do there:

1. rotate the conv, as everywhere else: in training, BatchNorm divides each channel by its
   batch standard deviation, so rho * conv(x) gives exactly the BN output of conv(x). It is a
   no-op (checked here numerically), so there is nothing to measure;
2. rotate the normalized pre-activation ("bn-rotated"): u = rho * BN(conv(x)) with rho from the
   BN-folded affine map, rho = L / (max(|y_Q|, floor*|q|*||W_f||) + eps), y_Q the BN output at
   the pivot x = q*1 under the current (batch or running) statistics, W_f = gamma/sigma * W.
   Folds exactly into BN's gamma and beta for inference;
3. leave it alone (what the pass does), since BatchNorm already sets the pre-activation's scale.

Arms, each with its standard initialisation (Kaiming-normal for relu, Xavier-normal with gain
5/3 for tanh), the same data, batch order and learning-rate sweep; pairs share initial weights:

- ``bn``: the plain conv-BN-act CNN (what arp does to it now: nothing);
- ``bn-rotated``: option 2, calibrated layer by layer on one training batch (q from the
  observed input range of each conv, as the pass calibrates);
- ``plain``: the same CNN without BatchNorm;
- ``arp``: that CNN compiled with ``passes=["arp"]`` and ``example_inputs`` (calibrated), the
  "auto-rotation instead of BatchNorm" claim of the ARNN paper.

Adam, batch 64, 20 epochs; the lr of each arm is chosen on a validation split (1000 train /
437 validation / 360 test), and the test accuracy and loss at that lr is reported as
mean +- sd over seeds.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vgpcompile import vgpcompile

EPS = 1e-5


def digits() -> dict[str, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # 1 x 8 x 8 in [0, 1]
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    x, y = x[perm], y[perm]
    return {"x_train": x[:1000], "y_train": y[:1000], "x_val": x[1000:1437], "y_val": y[1000:1437],
            "x_test": x[1437:], "y_test": y[1437:]}  # fmt: skip


ACTS = {"relu": nn.ReLU, "tanh": nn.Tanh}
WIDTHS = (1, 16, 32, 32, 32)


def cnn(act: str, batchnorm: bool, seed: int) -> nn.Sequential:
    """conv3x3 [-> BN] -> act, four times (a 2x2 max-pool after the second), GAP, linear head."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(zip(WIDTHS, WIDTHS[1:])):
        conv = nn.Conv2d(cin, cout, 3, padding=1)
        if act == "relu":
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        else:
            nn.init.xavier_normal_(conv.weight, gain=nn.init.calculate_gain("tanh"))
        nn.init.zeros_(conv.bias)
        layers += [conv] + ([nn.BatchNorm2d(cout)] if batchnorm else []) + [ACTS[act]()]
        if i == 1:
            layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(WIDTHS[-1], 10))


class BNRotated(nn.Module):
    """u = rho * BN(conv(x)), rho per channel from the BN-folded affine map at the pivot q*1."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, L: float, q: float, floor: float = 0.25) -> None:
        super().__init__()
        self.conv, self.bn, self.L, self.q, self.floor = conv, bn, L, q, floor

    def rho(self, z: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        if self.training:
            mean, var = z.mean((0, 2, 3)), z.var((0, 2, 3), unbiased=False)
        else:
            mean, var = bn.running_mean, bn.running_var
        scale = bn.weight / torch.sqrt(var + bn.eps)
        zq = self.q * self.conv.weight.sum((1, 2, 3)) + self.conv.bias
        yq = scale * (zq - mean) + bn.bias
        spread = self.floor * abs(self.q) * scale.abs() * self.conv.weight.flatten(1).norm(dim=1)
        return self.L / (torch.maximum(yq.abs(), spread) + EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(x)
        return self.bn(z) * self.rho(z).view(1, -1, 1, 1)


def bn_rotated(model: nn.Sequential, x: torch.Tensor, L: float) -> nn.Sequential:
    """Each conv+BN pair of ``model`` wrapped in BNRotated, q calibrated in order on ``x``."""
    mods = list(model)
    out: list[nn.Module] = []
    i = 0
    while i < len(mods):
        if isinstance(mods[i], nn.Conv2d) and i + 1 < len(mods) and isinstance(mods[i + 1], nn.BatchNorm2d):
            with torch.no_grad():
                h = nn.Sequential(*out)(x) if out else x
            q = 2 * float(h.max()) - float(h.min())
            out.append(BNRotated(mods[i], mods[i + 1], L, q))
            i += 2
        else:
            out.append(mods[i])
            i += 1
    return nn.Sequential(*out)


def check_conv_rotation_is_cancelled_by_batchnorm() -> float:
    """Largest |BN(rho * z) - BN(z)| over a random conv output, rho > 0 per channel, train mode."""
    torch.manual_seed(0)
    z = torch.randn(16, 8, 6, 6) * 3 + 1
    rho = torch.rand(8) * 50 + 0.01
    bn = nn.BatchNorm2d(8, eps=1e-12)
    with torch.no_grad():
        return float((bn(z * rho.view(1, -1, 1, 1)) - bn(z)).abs().max())


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(x)
    model.train()
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def train(model: nn.Module, data: dict, lr: float, epochs: int, seed: int) -> dict[str, float]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(data["x_train"]), generator=order).split(64):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(data["x_train"][idx]), data["y_train"][idx]).backward()
            opt.step()
    val_loss, val_acc = evaluate(model, data["x_val"], data["y_val"])
    test_loss, test_acc = evaluate(model, data["x_test"], data["y_test"])
    finite = all(torch.isfinite(p).all() for p in model.parameters())
    return {"val_loss": val_loss if finite else float("inf"), "val_acc": val_acc, "test_loss": test_loss,
            "test_acc": test_acc}  # fmt: skip


def build(arm: str, act: str, seed: int, data: dict) -> nn.Module:
    calib = data["x_train"][:256]
    if arm == "bn":
        return cnn(act, True, seed)
    if arm == "bn-rotated":
        return bn_rotated(cnn(act, True, seed), calib, L=4.0 if act == "relu" else 2.0)
    if arm == "plain":
        return cnn(act, False, seed)
    return vgpcompile(cnn(act, False, seed), ["arp"], example_inputs=(calib,))


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} +- {sd:.4f}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3, 1e-2, 3e-2])
    ap.add_argument("--acts", nargs="+", default=list(ACTS), choices=list(ACTS))
    ap.add_argument("--arms", nargs="+", default=["bn", "bn-rotated", "plain", "arp"])
    ap.add_argument("--quick", action="store_true", help="relu, 1 seed, lr 3e-3, 2 epochs")
    ap.add_argument("--json", type=Path, default=None, help="write every run's figures here")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.lrs, args.acts = 1, 2, [3e-3], ["relu"]
    torch.set_num_threads(1)
    data = digits()
    cancelled = check_conv_rotation_is_cancelled_by_batchnorm()
    print(f"conv rotation before BatchNorm, largest change of the BN output: {cancelled:.2e}")
    start = time.perf_counter()
    runs: list[dict] = []
    for act in args.acts:
        for arm in args.arms:
            for lr in args.lrs:
                for seed in range(args.seeds):
                    model = build(arm, act, seed, data)
                    runs.append({"act": act, "arm": arm, "lr": lr, "seed": seed,
                                 **train(copy.deepcopy(model), data, lr, args.epochs, seed)})  # fmt: skip
    print(f"digits, {args.epochs} epochs, {args.seeds} seeds, lr chosen on validation from {args.lrs}; "
          f"chance accuracy 0.10 ({time.perf_counter() - start:.0f} s)")  # fmt: skip
    print(f"{'act':<5} {'arm':<11} {'lr':>7}  {'test acc':>17}  {'test loss':>17}")
    table = {}
    for act in args.acts:
        for arm in args.arms:
            by_lr = {lr: [r for r in runs if (r["act"], r["arm"], r["lr"]) == (act, arm, lr)] for lr in args.lrs}
            best = min(args.lrs, key=lambda lr: statistics.fmean(r["val_loss"] for r in by_lr[lr]))
            chosen = by_lr[best]
            acc, loss = [r["test_acc"] for r in chosen], [r["test_loss"] for r in chosen]
            table[f"{act}/{arm}"] = {"lr": best, "test_acc": acc, "test_loss": loss}
            print(f"{act:<5} {arm:<11} {best:>7g}  {mean_sd(acc):>17}  {mean_sd(loss):>17}")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "table": table}, indent=1))
    return {"runs": runs, "table": table}


if __name__ == "__main__":
    main()
