"""Model factories for the CLI and the tests: ``vgpcompile plan --model examples/models.py:NAME``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def deep_tanh_mlp(depth: int = 20, width: int = 64) -> nn.Module:
    """Linear + nn.Tanh blocks ending in a sigmoid output: the output activation is left alone."""
    layers: list[nn.Module] = [nn.Linear(16, width), nn.Tanh()]
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Tanh()]
    layers += [nn.Linear(width, 1), nn.Sigmoid()]
    return nn.Sequential(*layers)


def issue_gelu_mlp() -> nn.Module:
    """The foundation issue's example: 64 -> 256, 50 x (Linear 256 + GELU), -> 10."""
    blocks = [m for _ in range(50) for m in (nn.Linear(256, 256), nn.GELU())]
    return nn.Sequential(nn.Linear(64, 256), nn.GELU(), *blocks, nn.Linear(256, 10))


class Block(nn.Module):
    """A pre-norm MLP block written with functional activations."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x)), approximate="tanh"))


class TinyTransformer(nn.Module):
    """A top-level forward that checks the sequence length against a stored mask, so
    torch.fx cannot trace it; every block inside is traceable."""

    def __init__(self, dim: int = 32, depth: int = 4, max_len: int = 16) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))
        self.head = nn.Linear(dim, 4)
        self.register_buffer("mask", torch.ones(max_len, dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.mask.shape[0]:
            raise ValueError("sequence too long")
        h = torch.tanh(self.embed(x))
        for block in self.blocks:
            h = block(h)
        return self.head(h.mean(1))


def tiny_transformer() -> nn.Module:
    return TinyTransformer()


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = self.conv2(x).relu_()
        return self.fc(torch.flatten(self.pool(x), 1))


def small_cnn() -> nn.Module:
    return SmallCNN()


class LSTMStack(nn.Module):
    """A language-model-like stack: embedding, LSTM + projection blocks, head (its forward
    signal collapses over the blocks; the LSTM gates are inside the fused kernel)."""

    def __init__(self, blocks: int = 3, width: int = 32, vocab: int = 50) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.rnns = nn.ModuleList([nn.LSTM(width, width, batch_first=True) for _ in range(blocks)])
        self.proj = nn.ModuleList([nn.Linear(width, width) for _ in range(blocks)])
        self.head = nn.Linear(width, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.emb(x)
        for rnn, proj in zip(self.rnns, self.proj):
            x = proj(rnn(x)[0])
        return self.head(x)
