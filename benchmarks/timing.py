"""Timing shared by the benchmarks: interleaved medians, so load drift hits every arm alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(
    fns: dict[str, Callable[[], None]], steps: int, warmup: int = 5, sync: Callable[[], None] = lambda: None
) -> dict[str, float]:
    """Median seconds per call of each function; calls alternate between the functions.

    ``sync`` runs before and after each timed call (``torch.cuda.synchronize`` on a GPU).
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + steps):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}
