"""Small helpers shared by the tests."""

import torch


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()
