"""``rai``: lift a model into relaxed-activation-identity training form (Mertens, seed 002;
research/rai.md).

    h_t = f_t(input)  ->  RAICut_t(h_t, idx): Z_t[idx] in training (+ a local loss), h_t in eval

The pass cuts the traced top-level graph at selected boundaries: by default the input of
every activation (the pre-activation: the output of the affine layer feeding it, which is
what the reference relaxes) and the output of an affine layer that produces the model
output (the logit layer, which the reference also wraps). At each cut t it keeps a
per-example table Z_t (``num_examples`` rows). The lifted model's forward gains an ``idx``
input (default None): in training mode it must be given (the batch's example ids) and the
model computes the lifted forward; in eval mode it is the plain chained network. The local
losses are read with ``vgpcompile.rai.loss(model)``; ``vgpcompile.rai.fit`` trains.

Options:
- num_examples: rows per table, one per training example (required to compile; ``plan``
  without it reports the floats per example).
- every: lift only every k-th cut, counted back from the output (the output cut is always
  lifted): block-RAI, gradient paths of at most k blocks, k times less table memory.
- lam: weight of every local loss (the reference: 1, on torch's mean-reduced MSE).
- lam_growth: multiply every lam by this after each epoch of ``fit`` (quadratic-penalty
  continuation, research/rai.md §8.1; 1 = constant).
- table_lr_scale: ``fit``'s table learning rate is the weight learning rate times this
  (rows are visited once per epoch, weights every step: §8.1 suggests about n/|B|).
- resync_every: every k epochs ``fit`` overwrites all rows with the chained forward values
  (in place; 0 = never).
- sparse: tables get row-sparse gradients for ``torch.optim.SparseAdam`` (default; rows
  outside the batch never move); false gives dense gradients, zero outside the batch, for
  full-batch training with any optimiser (the reference's Rprop).
- shapes: each cut's per-example shape, ``"100;100;1"`` (``8x5x5`` for several dims).
  Normally inferred: from ``example_inputs`` when given (batch on dim 0), else from a
  Linear's ``out_features``; the compile records the inferred value in the recipe so
  ``load`` rebuilds the same tables.
- max_table_mb: refuse to allocate tables larger than this (the tables hold
  num_examples x sum_t d_t floats; ``plan`` reports the size without allocating).

The pass changes the model's inputs (``changes_inputs``): it runs after every other pass
and is lowered first. Lowering removes the cuts, the tables and the ``idx`` input: the
frozen model is the plain network with the trained weights under their original names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import fx, nn

from ...core.contract import MODEL, Env, Pass, PassResult
from ...core.modes import in_mode
from ...core.rewrite import mutation_free
from ...core.rewriter import active
from ...core.select import target_of
from ...core.targets import AFFINE_FUNCTIONS, AFFINE_MODULES, ModelTarget, site_name
from ...errors import UsageError
from .guard import RAIGuard
from .lower import lower as lower_model
from .modules import PASS, RAICut, Settings

NO_ROOT_GRAPH = (
    "pass 'rai' needs the model's top-level forward traced by torch.fx (it adds the idx input there); "
    "the root stayed eager (see the report's eager list)"
)


@dataclass
class Cut:
    """One boundary the pass may lift."""

    name: str
    node: fx.Node
    kind: str  # the producer's class ("Linear"), or the node's op for other values
    module: nn.Module | None
    names: tuple[str, ...]  # what select/ignore rules see
    objects: tuple[Any, ...]
    activation: str | None = None
    shape: tuple[int, ...] = ()
    dtype: torch.dtype = torch.float32
    reason: str = ""  # why it is not lifted

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class RAI(Pass):
    name: ClassVar[str] = PASS
    summary: ClassVar[str] = "lift the model: per-example tables Z_t at cuts, local losses, (x, idx) in training"
    matches: ClassVar[tuple[str, ...]] = (MODEL,)
    changes_inputs: ClassVar[bool] = True
    # cuts run through the whole forward: capture inlines the modules it would split off for the
    # class's other methods (core/region.py), which then run them eagerly, with the same layers
    one_graph: ClassVar[bool] = True

    num_examples: int | None = None
    every: int = 1
    lam: float = 1.0
    lam_growth: float = 1.0
    table_lr_scale: float = 1.0
    resync_every: int = 0
    sparse: bool = True
    shapes: str | None = None
    max_table_mb: float = 1024.0

    def __post_init__(self) -> None:
        if self.num_examples is not None and self.num_examples < 1:
            raise UsageError(f"option 'num_examples' of pass 'rai' must be >= 1, got {self.num_examples!r}")
        if self.every < 1:
            raise UsageError(f"option 'every' of pass 'rai' must be >= 1, got {self.every!r}")
        for key in ("lam", "lam_growth", "table_lr_scale", "max_table_mb"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise UsageError(f"option {key!r} of pass 'rai' must be a positive number, got {value!r}")
        if self.resync_every < 0:
            raise UsageError(f"option 'resync_every' of pass 'rai' must be >= 0, got {self.resync_every!r}")
        if self.shapes is not None:
            parse_shapes(self.shapes)

    def prepare(self, targets: list, env: Env) -> PassResult:
        result = PassResult(self.name)
        model = next((t for t in targets if isinstance(t, ModelTarget)), None)
        if model is None:
            result.warnings.append("rai: no model target (run it through vgpcompile or on a GraphModule)")
            return result
        if model.root_graph is None:
            raise UsageError(NO_ROOT_GRAPH)
        if lifted(model.root_graph):
            return result
        found = self._cuts(model.root_graph, env)
        if env.state is not None:  # apply lifts these: found once per compile
            env.state.cuts = found
        numbers = {id(c): t for t, c in enumerate((c for c in found if not c.reason), 1)}  # one walk, not one per cut
        for cut in found:
            result.record(cut.name, not cut.reason, cut.reason or self._describe(cut, numbers), cut.kind, "cut")
        kept = [c for c in found if not c.reason]
        per_example = sum(c.size for c in kept)
        itemsize = max((torch.empty((), dtype=c.dtype).element_size() for c in kept), default=4)
        result.stats.update({"cuts": len(kept), "floats_per_example": per_example})
        if self.shapes is None:
            result.resolved["shapes"] = format_shapes([c.shape for c in kept])
        if self.num_examples is None:
            if env.planning:
                result.warnings.append(_needs_num_examples())
                return result
            raise UsageError(_needs_num_examples())
        floats = self.num_examples * per_example
        mb = floats * itemsize / 2**20
        result.stats.update({"table_floats": floats, "table_mb": round(mb, 3)})
        if mb > self.max_table_mb:
            raise UsageError(
                f"pass 'rai': the tables would hold {self.num_examples} x {per_example} = {floats} floats "
                f"({mb:.1f} MB), over option 'max_table_mb' = {self.max_table_mb:g}; raise 'max_table_mb', lift "
                "fewer boundaries ('every', select=/ignore=), or use fewer examples"
            )
        return result

    def check(self, target: ModelTarget, env: Env) -> str | None:
        if target.root_graph is None:
            return NO_ROOT_GRAPH
        if lifted(target.root_graph):
            return "already lifted by 'rai'; a model is lifted once"
        return None

    def apply(self, target: ModelTarget, env: Env) -> str:
        gm = target.root_graph
        found = getattr(env.state, "cuts", None)
        kept = [c for c in (found if found is not None else self._cuts(gm, env)) if not c.reason]
        n = self.num_examples or 1  # only a plan gets here without it, and allocates nothing
        rewriter = active()
        placeholders = rewriter.placeholders(gm)
        taken = {p.target for p in placeholders} | {node.name for node in rewriter.nodes(gm)}
        idx_name = next(c for c in ("idx", "rai_idx", *(f"rai_idx{i}" for i in range(1, 100))) if c not in taken)
        shared = Settings(idx_name, self.table_lr_scale, self.resync_every, self.lam_growth)
        # idx goes right after the required inputs, so lifted(x, idx) works when forward has optional
        # arguments too (timm's ViT: forward(x, attn_mask=None)); after a *args, at the end
        required = [p for p in placeholders if not p.args and not str(p.target).startswith("*")]
        starred = any(str(p.target).startswith("*") for p in placeholders)
        anchor = required[-1] if required and not starred else placeholders[-1]
        placeholder = rewriter.insert_placeholder(gm, idx_name, after=anchor)
        guard = rewriter.add_module(gm, "rai_guard", RAIGuard(n))
        idx = rewriter.insert_after(placeholder, "call_module", guard, (placeholder,))  # nothing runs before it
        for i, cut in enumerate(kept):
            device = torch.device("meta") if env.planning else _device(cut, gm)
            module = RAICut(n, cut.shape, lam=self.lam, sparse=self.sparse, label=cut.name, position=i,
                            settings=shared, dtype=cut.dtype, device=device)  # fmt: skip
            name = rewriter.add_module(gm, f"rai_cut_{i}", module)
            new = rewriter.insert_after(cut.node, "call_module", name, (cut.node, idx))
            rewriter.replace_uses(cut.node, new)
            module.copy_out = not mutation_free(new, gm)
        per_example = sum(c.size for c in kept)
        return (
            f"lifted {len(kept)} boundaries ({per_example} floats per example, {self.num_examples or 'n'} examples); "
            f"forward(..., {idx_name}) in training"
        )

    def lower(self, model: nn.Module) -> None:
        lower_model(model)

    # --- finding the cuts ---------------------------------------------------------------

    def _cuts(self, gm: fx.GraphModule, env: Env) -> list[Cut]:
        found = candidates(gm, env)
        for cut in found:
            cut.reason = env.selection.decide(target_of(cut.names, cut.objects, cut.activation)) or ""
        selected = [c for c in found if not c.reason]
        for back, cut in enumerate(reversed(selected)):
            if back % self.every:
                cut.reason = f"not lifted: every={self.every} keeps every {self.every}-th cut from the output"
        kept = [c for c in found if not c.reason]
        if not kept:
            raise UsageError(
                "pass 'rai' found no boundary to lift: it cuts at activation inputs and at an affine layer that "
                "produces the model output" + (" (all were excluded by select=/ignore=)" if found else "")
            )
        for cut, (shape, dtype) in zip(kept, self._shapes(gm, kept, env)):
            cut.shape, cut.dtype = shape, dtype
        return found

    def _shapes(self, gm: fx.GraphModule, kept: list[Cut], env: Env) -> list[tuple[tuple[int, ...], torch.dtype]]:
        dtypes = [_dtype(c, gm) for c in kept]
        if self.shapes is not None:
            shapes = parse_shapes(self.shapes)
            if len(shapes) != len(kept):
                raise UsageError(
                    f"option 'shapes' of pass 'rai' gives {len(shapes)} shapes for {len(kept)} cuts "
                    f"({', '.join(c.name for c in kept[:6])}{', ...' if len(kept) > 6 else ''})"
                )
            return list(zip(shapes, dtypes))
        if env.example_inputs is not None:
            return propagate_shapes(gm, [c.node for c in kept], env.example_inputs)
        out = []
        for cut, dtype in zip(kept, dtypes):
            features = _out_features(cut, gm)
            if features is None:
                raise UsageError(
                    f"pass 'rai': cannot tell the per-example shape at cut {cut.name!r} ({cut.kind}) without an "
                    "example: pass example_inputs= (or option 'shapes')"
                )
            out.append(((features,), dtype))
        return out

    def _describe(self, cut: Cut, numbers: dict[int, int]) -> str:
        """``numbers``: id() of each kept cut -> its number, from 1."""
        t = numbers[id(cut)]
        n = self.num_examples
        rows = f"{n} x " if n is not None else "n x "
        size = f", {human_bytes(_mb(n * cut.size, cut.dtype) * 2**20)}" if n is not None else ""
        return f"cut {t}/{len(numbers)}: Z {rows}{'x'.join(map(str, cut.shape))}{size}"


def _needs_num_examples() -> str:
    return (
        "pass 'rai' needs option 'num_examples' (the number of training examples: one table row each): "
        "options={'rai': {'num_examples': n}}, or --option rai.num_examples=N on the command line"
    )


def lifted(gm: fx.GraphModule) -> bool:
    return any(isinstance(m, RAICut) for m in gm.modules())


def candidates(gm: fx.GraphModule, env: Env) -> list[Cut]:
    """Every value the pass may cut, in graph order: the input of each activation site (not a
    graph input), and the output of an affine layer that is (a reshaped form of) a model output."""
    by_node: dict[fx.Node, Cut] = {}
    calls: dict[str, int] = {}
    queries = active()
    nodes = queries.nodes(gm)
    for node in nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    nth: dict[str, int] = {}
    for site in queries.sites(gm, env.catalogue):
        src = queries.input_of(site.node)
        if site.unusable or not isinstance(src, fx.Node) or src.op in ("placeholder", "get_attr"):
            continue
        cut = by_node.get(src) or _cut(src, gm, calls, nth)
        cut.names += (site.name,) + ((site.module_name,) if site.module_name else ())
        if site.module_name:
            cut.objects += (gm.get_submodule(str(site.node.target)),)
        cut.activation = cut.activation or site.activation.name
        by_node[src] = cut
    for node in queries.outputs(gm):
        if node not in by_node and _affine(node, gm):
            by_node[node] = _cut(node, gm, calls, nth)
    order = {node: i for i, node in enumerate(nodes)}
    return sorted(by_node.values(), key=lambda c: order[c.node])



def _cut(node: fx.Node, gm: fx.GraphModule, calls: dict[str, int], nth: dict[str, int]) -> Cut:
    if node.op == "call_module":
        target = str(node.target)
        module = gm.get_submodule(target)
        name = target
        if calls[target] > 1:  # one module called several times: each call is its own cut
            nth[target] = nth.get(target, 0) + 1
            name = f"{target}#{nth[target]}"
        return Cut(name, node, type(module).__name__, module, (target,), (module,))
    name = site_name(node, "")
    kind = AFFINE_FUNCTIONS.get(node.target, node.op) if node.op == "call_function" else node.op
    return Cut(name, node, kind, None, (name,), ())


def _affine(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), AFFINE_MODULES)
    return node.op == "call_function" and node.target in AFFINE_FUNCTIONS


def _out_features(cut: Cut, gm: fx.GraphModule) -> int | None:
    """A Linear's output width (the per-example shape for a (batch, features) input)."""
    if isinstance(cut.module, nn.Linear):
        return cut.module.out_features
    node = cut.node
    if node.op == "call_function" and node.target is torch.nn.functional.linear and len(node.args) > 1:
        weight = node.args[1]
        if isinstance(weight, fx.Node) and weight.op == "get_attr":
            return _attr(gm, str(weight.target)).shape[0]
    return None


def _dtype(cut: Cut, gm: fx.GraphModule) -> torch.dtype:
    weight = getattr(cut.module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.is_floating_point():
        return weight.dtype
    return next((p.dtype for p in gm.parameters() if p.is_floating_point()), torch.get_default_dtype())


def _device(cut: Cut, gm: fx.GraphModule) -> torch.device:
    weight = getattr(cut.module, "weight", None)
    if isinstance(weight, torch.Tensor):
        return weight.device
    return next((p.device for p in gm.parameters()), torch.device("cpu"))


def _attr(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _mb(floats: int, dtype: torch.dtype) -> float:
    return floats * torch.empty((), dtype=dtype).element_size() / 2**20


def propagate_shapes(
    gm: fx.GraphModule, nodes: list[fx.Node], example_inputs: tuple
) -> list[tuple[tuple[int, ...], torch.dtype]]:
    """Per-example shape (batch on dim 0) and dtype of each node's value on the example
    inputs. Run in eval mode without gradients, so no running statistic changes."""
    recorder = _ValueShapes(gm, set(nodes))
    try:
        with in_mode(gm, False), torch.no_grad():
            recorder.run(*example_inputs)
    except Exception as err:
        raise UsageError(f"pass 'rai': the model does not run on example_inputs: {type(err).__name__}: {err}") from err
    out = []
    for node in nodes:
        shape, dtype = recorder.seen.get(node, (None, None))
        if shape is None or len(shape) < 1:
            raise UsageError(f"pass 'rai': the value at {node.name!r} is not a tensor with a batch dimension")
        out.append((tuple(int(s) for s in shape[1:]), dtype))
    return out


class _ValueShapes(fx.Interpreter):
    """Runs the graph, keeping (shape, dtype) of the wanted nodes' tensor values: what rai read
    from ShapeProp, whose metadata of every node (strides, memory format, quantization) made up
    half of the run (1000-layer MLP: 54 -> 28 ms)."""

    def __init__(self, gm: fx.GraphModule, wanted: set[fx.Node]) -> None:
        super().__init__(gm)
        self.wanted = wanted
        self.seen: dict[fx.Node, tuple[torch.Size, torch.dtype]] = {}

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        if n in self.wanted and isinstance(value, torch.Tensor):
            self.seen[n] = value.shape, value.dtype
        return value


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.3g} {unit}"
        size /= 1024
    return f"{size:.3g} GB"


def parse_shapes(text: str) -> list[tuple[int, ...]]:
    """``"100;100;8x5x5;()"`` -> [(100,), (100,), (8, 5, 5), ()]; ``()`` is one number per example."""
    try:
        shapes = [() if part.strip() == "()" else tuple(int(v) for v in part.split("x")) for part in text.split(";")]
    except ValueError:
        shapes = []
    if not shapes or any(any(v < 1 for v in s) for s in shapes):
        raise UsageError(f"option 'shapes' of pass 'rai' must be per-cut shapes like '100;100;8x5x5', got {text!r}")
    return shapes


def format_shapes(shapes: list[tuple[int, ...]]) -> str:
    return ";".join("x".join(str(v) for v in s) or "()" for s in shapes)
