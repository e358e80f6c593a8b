"""What auto-rotation costs: training-step and inference time, compiled or frozen against plain.

    python benchmarks/step_overhead_arp.py [--device cuda] [--steps 30] [--threads 2]

Every ratio is a median over ``--steps`` measured steps (after warm-up), with the models
run interleaved in one process so that load changes hit them alike:

- train, MLP: depth-20 width-256 sigmoid MLP, arp-compiled / plain        (target <= 1.10)
- train, MLP: arp-compiled / a straightforward hand-written rotated Linear (target <= 1.05)
- train, CNN: a small sigmoid CNN, arp-compiled / plain                   (target <= 1.10)
- infer: frozen / plain, MLP and CNN                                      (target <= 1.02)
- LSTM: AutoRotLSTM / nn.LSTM forward+backward, batch 64, hidden 128, 100 steps (aim <= 3)
- with --torch-compile: both MLPs under torch.compile, arp / plain
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from timing import interleaved
from torch import nn

from vgpcompile import freeze, vgpcompile
from vgpcompile.nn import AutoRotLSTM


class HandRotLinear(nn.Linear):
    """The obvious way to write an auto-rotated Linear: rho from the weights, times the output."""

    def __init__(self, linear: nn.Linear, L: float = 4.0, q: float = 2.0) -> None:
        super().__init__(linear.in_features, linear.out_features, device=linear.weight.device)
        self.load_state_dict(linear.state_dict())
        self.L, self.q = L, q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rho = self.L / ((self.q * self.weight.sum(1) + self.bias).abs() + 1e-5)
        return F.linear(x, self.weight, self.bias) * rho


def sigmoid_mlp(depth: int = 20, width: int = 256) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def small_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.Sigmoid(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.Sigmoid(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.Sigmoid(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 8 * 8, 128),
        nn.Sigmoid(),
        nn.Linear(128, 10),
    )


def hand_rotated(mlp: nn.Sequential) -> nn.Sequential:
    layers = list(copy.deepcopy(mlp))
    for i, layer in enumerate(layers[:-1]):
        if isinstance(layer, nn.Linear):
            layers[i] = HandRotLinear(layer)
    return nn.Sequential(*layers)


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def infer_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    model.eval()

    def step() -> None:
        with torch.inference_mode():
            model(x)

    return step


def lstm_step(lstm: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        out, _ = lstm(x)
        out.square().mean().backward()

    return step


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=30, help="measured steps per model (at least 20)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--torch-compile", action="store_true", help="also time both MLPs under torch.compile")
    args = ap.parse_args(argv)
    args.steps = max(args.steps, 20)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    print(f"device {dev}, torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.steps} steps")
    mlps = bench_mlp(args, dev, sync)
    cnns = bench_cnn(args, dev, sync)
    bench_inference(args, mlps, cnns, sync)
    bench_lstm(args, dev, sync)


def bench_mlp(args, dev: torch.device, sync) -> tuple:
    mlp = sigmoid_mlp().to(dev)
    arp_mlp = vgpcompile(mlp, ["arp"], input_range=(0.0, 1.0))
    hand_mlp = hand_rotated(mlp)
    x, y = torch.rand(args.batch, 256, device=dev), torch.randint(0, 10, (args.batch,), device=dev)
    steps = {"plain": train_step(mlp, x, y), "arp": train_step(arp_mlp, x, y), "hand": train_step(hand_mlp, x, y)}
    t = interleaved(steps, args.steps, args.warmup, sync)
    report("train MLP 20x256  arp / plain", t["arp"], t["plain"], 1.10)
    report("train MLP 20x256  arp / hand-written", t["arp"], t["hand"], 1.05)
    if args.torch_compile:
        steps = {"plain": train_step(torch.compile(mlp), x, y), "arp": train_step(torch.compile(arp_mlp), x, y)}
        t = interleaved(steps, args.steps, args.warmup + 3, sync)
        report("train MLP, torch.compile  arp / plain", t["arp"], t["plain"], 1.10)
    return mlp, arp_mlp, x


def bench_cnn(args, dev: torch.device, sync) -> tuple:
    cnn = small_cnn().to(dev)
    arp_cnn = vgpcompile(cnn, ["arp"], input_range=(0.0, 1.0))
    img, lab = torch.rand(64, 3, 32, 32, device=dev), torch.randint(0, 10, (64,), device=dev)
    t = interleaved(
        {"plain": train_step(cnn, img, lab), "arp": train_step(arp_cnn, img, lab)}, args.steps, args.warmup, sync
    )
    report("train CNN         arp / plain", t["arp"], t["plain"], 1.10)
    return cnn, arp_cnn, img


def bench_inference(args, mlps: tuple, cnns: tuple, sync) -> None:
    (mlp, arp_mlp, x), (cnn, arp_cnn, img) = mlps, cnns
    steps = {
        "plain": infer_step(mlp, x),
        "frozen": infer_step(freeze(arp_mlp), x),
        "plain_cnn": infer_step(cnn, img),
        "frozen_cnn": infer_step(freeze(arp_cnn), img),
    }
    t = interleaved(steps, args.steps * 4, args.warmup, sync)
    report("infer MLP         frozen / plain", t["frozen"], t["plain"], 1.02)
    report("infer CNN         frozen / plain", t["frozen_cnn"], t["plain_cnn"], 1.02)


def bench_lstm(args, dev: torch.device, sync) -> None:
    lstm = nn.LSTM(128, 128).to(dev)
    arp_lstm = AutoRotLSTM.from_module(lstm, q=2.0)
    seq = torch.rand(100, 64, 128, device=dev)  # 100 steps, batch 64
    t = interleaved({"plain": lstm_step(lstm, seq), "arp": lstm_step(arp_lstm, seq)}, args.steps, 2, sync)
    report("LSTM fwd+bwd      AutoRotLSTM / nn.LSTM", t["arp"], t["plain"], 3.0)


def report(what: str, ours: float, base: float, target: float) -> None:
    ratio = ours / base
    verdict = "ok" if ratio <= target else "ABOVE TARGET"
    print(f"{what:42s} {ratio:6.3f}x   ({ours * 1e3:8.2f} ms vs {base * 1e3:8.2f} ms; target <= {target:g}: {verdict})")


if __name__ == "__main__":
    main()
