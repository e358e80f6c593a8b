"""Seeded draws by code that takes no generator (torch's parametrizations, the dks package)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """torch's global generator for ``device`` seeded with ``seed`` inside; the caller's random
    stream is as it was after. A CPU weight seeds the CPU generator only: torch.manual_seed also
    queues a seed, with a stack trace taken, for every accelerator backend (~0.2 ms a layer,
    half of tat's compile)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if device.type == "cpu":
            torch.default_generator.manual_seed(seed)
        else:
            torch.manual_seed(seed)
        yield
