"""Small helpers shared by the tests."""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist


@contextmanager
def gloo_worker(rank: int, world: int, store: str) -> Iterator[None]:
    """The process group of one mp.spawn'ed worker, over gloo and a file store, one thread.

    A worker that finishes meets the other ranks at a barrier (none tears gloo down while
    another still talks to it), destroys the group and ends with os._exit(0): no interpreter
    teardown, where a gloo thread still joinable aborts the process (SIGABRT, "terminate called
    without an active exception", seen once in a CI run). One that fails destroys the group and
    raises, so that mp.spawn reports it."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        yield
    except BaseException:
        dist.destroy_process_group()
        raise
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def inflating(path, claimed=2 * 2**30):
    """A real torch.save file whose zip directory says its data entry inflates to ``claimed`` bytes."""
    torch.save({"w": torch.zeros(2**19)}, path)  # a 2 MiB entry
    data = bytearray(path.read_bytes())
    pos = 0
    while (pos := data.find(b"PK\x01\x02", pos)) >= 0:  # central directory entries
        name_len = struct.unpack_from("<H", data, pos + 28)[0]
        name = bytes(data[pos + 46 : pos + 46 + name_len])
        if name.endswith(b"/data/0"):
            struct.pack_into("<I", data, pos + 24, claimed)  # uncompressed size
        pos += 4
    path.write_bytes(bytes(data))
    assert sum(i.file_size for i in zipfile.ZipFile(path).infolist()) > claimed
    return path


# ---- what ran: calls to what the passes inserted -------------------------------------------
#
# Independent of how the core finds sites or names what it inserts: a module a pass inserted
# declares ``vgp_pass`` (core/protocol.py); a function a pass inserted into a graph is defined
# in ``vgpcompile.passes.<name>``. Forward hooks count the modules' calls (an eager call the
# core intercepts and redirects reaches its replacement module through ``__call__`` too);
# the functions are counted by wrapping the graph nodes that call them, on a copy.


def _pass_of_function(target) -> str | None:
    module = getattr(target, "__module__", None) or ""
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["vgpcompile", "passes"] else None


class Runs:
    """A copy of a compiled model with counters: calls per module name, and calls to what each
    pass inserted (modules declaring ``vgp_pass``: key their qualified name; graph nodes calling
    a function of ``vgpcompile.passes``: key ``region:node``)."""

    def __init__(self, model: torch.nn.Module) -> None:
        import copy

        from torch import fx

        self.model = copy.deepcopy(model)
        self.owner: dict[str, str] = {}  # inserted thing -> its pass
        self.counts: dict[str, int] = {}  # inserted thing -> calls
        self.modules: dict[str, int] = {}  # every module -> calls
        for name, module in self.model.named_modules():
            module.register_forward_pre_hook(self._seen(name))
            p = getattr(module, "vgp_pass", None)
            if isinstance(p, str):
                self.owner[name] = p
            if isinstance(module, fx.GraphModule):
                self._wrap_functions(name, module)
        self.reset()

    def _seen(self, name: str):
        def hook(module, args):
            self.modules[name] = self.modules.get(name, 0) + 1
            if name in self.counts:
                self.counts[name] += 1

        return hook

    def _wrap_functions(self, name: str, module) -> None:
        changed = False
        for node in module.graph.nodes:
            p = _pass_of_function(node.target) if node.op == "call_function" else None
            if p is not None:
                key = f"{name}:{node.name}"
                self.owner[key] = p
                node.target = _Counted(node.target, key, self)
                changed = True
        if changed:
            module.recompile()

    def reset(self) -> None:
        self.counts = dict.fromkeys(self.owner, 0)
        self.modules = {}

    def forward(self, *inputs, training: bool = False, seed: int = 0) -> None:
        self.reset()
        self.model.train(training)
        torch.manual_seed(seed)
        with torch.no_grad():
            self.model(*inputs)

    def per_pass(self) -> dict[str, tuple[int, int, int]]:
        """pass -> (things it inserted, how many of them ran, calls in all) since the last reset."""
        out: dict[str, tuple[int, int, int]] = {}
        for key, p in self.owner.items():
            n, ran, calls = out.get(p, (0, 0, 0))
            out[p] = (n + 1, ran + (self.counts[key] > 0), calls + self.counts[key])
        return out


class _Counted:
    def __init__(self, fn, key: str, runs: Runs) -> None:
        self.fn, self.key, self.runs = fn, key, runs
        self.__name__ = getattr(fn, "__name__", "fn")

    def __call__(self, *args, **kwargs):
        self.runs.counts[self.key] += 1
        return self.fn(*args, **kwargs)


def activation_rows(report, pass_name: str) -> list[str]:
    """Names of the activation sites (not layer, cut or model rows) the report says ``pass_name`` changed."""
    return [r.name for r in report.sites if r.changed.get(pass_name) and not r.spelling.endswith("layer")
            and r.spelling not in ("model", "cut")]


def check_changes_ran(model: torch.nn.Module, *inputs, passes=None) -> list[str]:
    """What the report claims against what ran, on one forward in each mode; the list of
    disagreements (empty when the report tells the truth).

    Checks, per pass: everything it inserted ran; a site pass (gpn, arp, roaf) made one
    inserted call per changed activation site (each site of the models checked runs once per
    forward: no site in a loop); rai made one cut call per changed cut. A layer changed in
    place (orthogonal) is not checked: a model may use its weight without calling it
    (transformers' Mamba passes ``conv1d.weight`` to a function)."""
    report = model.vgp_report
    runs = Runs(model)
    recurrent = any(isinstance(m, torch.nn.RNNBase) for m in model.modules())
    problems = []
    for training in (False, True):
        if training and "rai" in report.passes:
            continue  # the lifted model takes (x, idx) in training mode
        runs.forward(*inputs, training=training)
        per = runs.per_pass()
        mode = "train" if training else "eval"
        for p in passes or report.passes:
            n, ran, calls = per.get(p, (0, 0, 0))
            if ran != n:
                never = sorted(k for k, q in runs.owner.items() if q == p and not runs.counts[k])
                problems.append(f"{p} ({mode}): {n - ran} of the {n} things it inserted never ran: {never}")
            rows = activation_rows(report, p)
            if p in ("gpn", "roaf") or (p == "arp" and not recurrent):
                if calls != len(rows):
                    problems.append(f"{p} ({mode}): report says {len(rows)} sites changed {rows}, "
                                    f"inserted code ran {calls} times")
            if p == "rai":
                cuts = [r.name for r in report.sites if r.changed.get(p) and r.spelling == "cut"]
                calls = sum(runs.counts[k] for k, q in runs.owner.items()  # the cuts; the idx guard runs once more
                            if q == p and type(_module_or_none(runs.model, k)).__name__ == "RAICut")
                if calls != len(cuts):
                    problems.append(f"rai ({mode}): {len(cuts)} cuts changed, cut modules ran {calls} times")
    return problems


def _module_or_none(model: torch.nn.Module, name: str):
    try:
        return model.get_submodule(name)
    except AttributeError:  # a function node's key ("region:node")
        return None
