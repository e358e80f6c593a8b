"""What was reported is what runs: after the passes, count the calls of every module they
inserted on one run of the example inputs.

Every change goes through the rewriter, which records the module it put in for which report
row (``Inserted``). With example inputs the compiled model runs them once (no gradients, the
random number generators forked, every buffer restored) with a forward hook on each of those
modules. A call in eager code whose replacement never ran was not intercepted: the row says
it was not changed, and why. A module in a traced graph that never ran sits on a path the
example inputs do not take: the row keeps its change, with a note. Without example inputs
the rows of eager rewrites say they are unverified.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .report import Report
from .rewriter import Inserted

NOT_RUN_EAGER = (
    "not changed: the replacement never ran on example_inputs (the call was not intercepted: it runs "
    "outside its module's forward, or from code the interception cannot see)"
)
NOT_REACHED = "its replacement did not run on example_inputs (a path they do not take)"
UNVERIFIED = "eager rewrite unverified: without example_inputs whether the intercepted call runs is not checked"


def count_calls(root: nn.Module, modules: Sequence[nn.Module], example_inputs: tuple) -> dict[int, int]:
    """id(module) -> how many times it ran when ``root(*example_inputs)`` ran once."""
    counts = {id(m): 0 for m in modules}
    seen: set[int] = set()
    handles = []
    for module in modules:
        if id(module) in seen:
            continue
        seen.add(id(module))
        handles.append(module.register_forward_pre_hook(lambda m, args: counts.__setitem__(id(m), counts[id(m)] + 1)))
    buffers = [(b, b.detach().clone()) for b in root.buffers()]
    devices = sorted({t.device.index for t in example_inputs if isinstance(t, torch.Tensor) and t.is_cuda})
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            root(*example_inputs)
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    return counts


def check(report: Report, root: nn.Module, inserted: Sequence[Inserted], example_inputs: tuple | None) -> None:
    """Correct ``report``: each reported change whose module never ran is said so (see the module doc)."""
    rows = {rec.name: rec for rec in report.sites}
    kept = [i for i in inserted if i.target in rows and rows[i.target].changed.get(i.pass_name)]
    if example_inputs is None:
        for item in kept:
            if item.eager and UNVERIFIED not in rows[item.target].notes:
                rows[item.target].notes.append(UNVERIFIED)
        return
    if not kept:
        return
    counts = count_calls(root, [i.module for i in kept], example_inputs)
    for item in kept:
        if counts[id(item.module)]:
            continue
        row = rows[item.target]
        if item.eager:
            report.record(item.target, item.pass_name, False, NOT_RUN_EAGER)
        elif NOT_REACHED not in row.notes:
            row.notes.append(NOT_REACHED)
