"""What the roaf filter costs in a training step, and against writing it by hand.

    python benchmarks/step_overhead_roaf.py [--steps 30] [--batch 64,256] [--depth 100] [--width 256]
                                            [--rnn-steps 20] [--threads N]

1. MLP: a depth-100 width-256 tanh MLP (square Linear layers, then a readout), one
   training step (forward, cross-entropy, backward, SGD momentum 0.5) of
   - plain: the model itself;
   - roaf: the model compiled with ``passes=["roaf"]`` (one filter per block);
   - hand: a hand-written loop ``h = alpha * h @ O.T + beta * tanh(h @ W.T + b)`` over the
     same weights and the same O matrices, the obvious way to write ROAF by hand.
   All three run interleaved in one process (load drift hits them alike), medians of
   ``--steps`` steps after 5 warm-up steps. A plain block costs three B x n x n matmuls
   per step (forward, and backward to the input and to W); the filter adds two (forward,
   and backward to the input: O has no gradient), so roaf / plain is about 5/3 in flops.
   The target is roaf / hand <= 1: the compiled model must cost no more than the same
   arithmetic written by hand.
2. RNN: a ROAF RNN (hidden 128, 100 steps, batch 64) against nn.RNN and against the same
   update written as a per-step Python loop with two matmuls.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from timing import interleaved
from torch import nn

from vgpcompile import vgpcompile
from vgpcompile.nn import ROAFRNN, ROAFFilter


def mlp(depth: int, width: int, out: int = 10) -> nn.Sequential:
    torch.manual_seed(0)
    blocks = [m for _ in range(depth) for m in (nn.Linear(width, width), nn.Tanh())]
    return nn.Sequential(*blocks, nn.Linear(width, out))


class HandROAF(nn.Module):
    """ROAF as a person would write it: a loop over (W, b, O) with alpha * h @ O.T + beta * tanh(h @ W.T + b)."""

    def __init__(self, net: nn.Sequential, mats: list[torch.Tensor], alpha: float, beta: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(m for m in list(net)[:-1] if isinstance(m, nn.Linear))
        self.readout = list(net)[-1]
        for k, o in enumerate(mats):
            self.register_buffer(f"O{k}", o)
        self.alpha, self.beta = alpha, beta

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for k, layer in enumerate(self.layers):
            o = getattr(self, f"O{k}")
            h = self.alpha * h @ o.T + self.beta * torch.tanh(h @ layer.weight.T + layer.bias)
        return self.readout(h)


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.5)

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def mlp_section(batch: int, steps: int, depth: int, width: int) -> dict[str, float]:
    x, y = torch.randn(batch, width), torch.randint(0, 10, (batch,))
    plain = mlp(depth, width)
    compiled = vgpcompile(mlp(depth, width), passes=["roaf"], select=["re:.*"])  # every block, the last one too
    filters = [m for m in compiled.modules() if isinstance(m, ROAFFilter)]
    assert len(filters) == depth
    hand = HandROAF(mlp(depth, width), [f.O.clone() for f in filters], filters[0].alpha, filters[0].beta)
    with torch.no_grad():
        err = (hand(x) - compiled(x)).abs().max().item()
    t = interleaved({"plain": train_step(plain, x, y), "roaf": train_step(compiled, x, y),
                     "hand": train_step(hand, x, y)}, steps)  # fmt: skip
    print(f"roaf, depth {depth} width {width} tanh MLP, batch {batch}, median of {steps} training steps "
          f"(hand vs compiled outputs: max abs diff {err:.1e}):")  # fmt: skip
    print(f"  plain {1e3 * t['plain']:.2f} ms   roaf-compiled {1e3 * t['roaf']:.2f} ms   hand {1e3 * t['hand']:.2f} ms")
    print(f"  roaf / plain = {t['roaf'] / t['plain']:.3f}x (matmul flops 5/3 = 1.67x)   "
          f"roaf / hand = {t['roaf'] / t['hand']:.3f}x (target <= 1)")  # fmt: skip
    return t


class HandRNN(nn.Module):
    def __init__(self, rnn: ROAFRNN) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (T, B, 1)
        r = self.rnn
        w_ih, w_hh, b_ih, b_hh, o = r.layer_weights(0)
        h = x.new_zeros(x.shape[1], r.hidden_size)
        for t in range(x.shape[0]):
            h = r.alpha * h @ o.T + r.beta * torch.tanh(x[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh)
        return h


def rnn_section(steps: int, hidden: int = 128, T: int = 100, batch: int = 64) -> dict[str, float]:
    x = torch.randn(T, batch, 1)
    plain = nn.RNN(1, hidden)
    roaf = ROAFRNN(1, hidden, beta=1 / T)
    hand = HandRNN(ROAFRNN(1, hidden, beta=1 / T))

    def step(fn: Callable[[], torch.Tensor], params) -> Callable[[], None]:
        def run() -> None:
            grads = torch.autograd.grad(fn().square().sum(), list(params))
            del grads

        return run

    t = interleaved({
        "nn.RNN": step(lambda: plain(x)[1], list(plain.parameters())),
        "ROAFRNN": step(lambda: roaf(x)[1], list(roaf.parameters())),
        "hand": step(lambda: hand(x), list(hand.parameters())),
    }, steps)  # fmt: skip
    print(f"roaf RNN, hidden {hidden}, {T} steps, batch {batch}, forward + backward, median of {steps}:")
    print("  " + "   ".join(f"{k} {1e3 * v:.1f} ms" for k, v in t.items()))
    print(f"  ROAFRNN / nn.RNN = {t['ROAFRNN'] / t['nn.RNN']:.2f}x   ROAFRNN / hand = {t['ROAFRNN'] / t['hand']:.2f}x")
    return t


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=lambda s: [int(v) for v in s.split(",")], default=[64, 256])
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--rnn-steps", type=int, default=20)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for batch in args.batch:
        mlp_section(batch, args.steps, args.depth, args.width)
    if args.rnn_steps:
        rnn_section(args.rnn_steps)


if __name__ == "__main__":
    main()
