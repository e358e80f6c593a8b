"""What a pass can match: activation sites, layers, blocks and the whole model.

- A :class:`Site` is one activation call in a traced region, with the affine layer feeding it.
- A :class:`Layer` is one module of chosen types (Linear, Conv, RNN, ...) called in a region.
- A :class:`Block` is a chain ``x -> affine -> activation -> y`` found on the graph (a site
  whose producer is an affine module), with whether y has x's shape.
- :class:`ModelTarget` is the whole captured model: its root and every traced region.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from . import protocol
from .affine import TORCH_AFFINE, is_affine
from .catalogue import Activation, Catalogue
from .formulas import analyse
from .lookup import submodule

AFFINE_MODULES: tuple[type[nn.Module], ...] = TORCH_AFFINE  # declared layers of other libraries: core.affine
AFFINE_FUNCTIONS: dict[Any, str] = {
    F.linear: "F.linear",
    F.conv1d: "F.conv1d",
    F.conv2d: "F.conv2d",
    F.conv3d: "F.conv3d",
    F.conv_transpose1d: "F.conv_transpose1d",
    F.conv_transpose2d: "F.conv_transpose2d",
    F.conv_transpose3d: "F.conv_transpose3d",
}
# Ops through which a tensor is still "the model output" for the final-activation rule.
_PASSTHROUGH_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "contiguous"}
_PASSTHROUGH_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, F.dropout}
_PASSTHROUGH_MODULES = (nn.Identity, nn.Flatten, nn.Dropout, nn.Unflatten)
# In-place results aliasing one of these cannot be rewired safely (the base would change too).
_VIEW_METHODS = {"view", "reshape", "transpose", "permute", "narrow", "select", "expand", "t", "unflatten", "flatten"}

META_PASS = "vgp.pass"  # which pass created a node
META_APPLIED = "vgp.applied"  # passes already applied to the site at this node
META_SITE = "vgp.site"  # the stable site name, carried to replacement nodes


@dataclass
class Site:
    """One activation call: in a traced region (``node`` is its graph node), or in eager code
    (``node`` is None and ``eager`` says where: see core.eager).

    ``input`` is the activation's input node; for a formula (``spelling == "formula"``) it is
    the formula's x and ``nodes`` are the formula's nodes, ``node`` its output.
    """

    name: str
    region: str
    node: fx.Node | None
    activation: Activation
    params: dict[str, Any]
    spelling: str
    inplace: bool
    module_name: str | None
    producer: fx.Node | None
    producer_kind: str | None
    producer_name: str | None
    producer_module: nn.Module | None
    producer_shared: bool
    is_output: bool
    module_calls: int = 1  # how many nodes call this site's activation module
    producer_calls: int = 1  # how many nodes call the producer module (1 for functional producers)
    applied: frozenset[str] = frozenset()
    unusable: str = ""  # why no pass can touch it (e.g. a run-time parameter)
    notes: list[str] = field(default_factory=list)
    input: fx.Node | None = None
    nodes: tuple[fx.Node, ...] = ()
    module: nn.Module | None = None  # the activation module (module spelling)
    eager: Any = None  # core.eager.EagerCall for a site in eager code

    @property
    def kind(self) -> str:
        return self.activation.describe(self.params)


def _owner(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def site_name(node: fx.Node, region: str) -> str:
    """Module FQN for module spellings; ``owner.nodename()`` for function and method calls."""
    if META_SITE in node.meta:
        return node.meta[META_SITE]
    if node.op == "call_module":
        return region + str(node.target)
    owner = _owner(node)
    return f"{region}{owner + '.' if owner else ''}{node.name}()"


def _producer(node: fx.Node, gm: fx.GraphModule) -> tuple[str | None, str | None, nn.Module | None]:
    """(kind, name, module) of the affine layer computing ``node``, or Nones."""
    if node.op == "call_module":
        mod = submodule(gm, str(node.target))
        if is_affine(mod):
            return type(mod).__name__, str(node.target), mod
        return None, None, None
    if node.op == "call_function" and node.target in AFFINE_FUNCTIONS:
        return AFFINE_FUNCTIONS[node.target], node.name + "()", None
    return None, None, None


MODEL_OUTPUT = "vgp.model_output"  # GraphModule.meta: this region's outputs are the model's


def output_nodes(graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose value is (a reshaped or dropped-out form of) a model output."""
    out = next(n for n in reversed(graph.nodes) if n.op == "output")
    found: set[fx.Node] = set()
    fx.node.map_arg(out.args, found.add)
    frontier = list(found)
    while frontier:
        node = frontier.pop()
        if is_passthrough(node) and isinstance(node.args[0], fx.Node) and node.args[0] not in found:
            found.add(node.args[0])
            frontier.append(node.args[0])
    return found


def is_passthrough(node: fx.Node) -> bool:
    if not node.args:
        return False
    if node.op == "call_method":
        return node.target in _PASSTHROUGH_METHODS
    if node.op == "call_function":
        return node.target in _PASSTHROUGH_FUNCTIONS
    if node.op == "call_module":
        return isinstance(submodule(node.graph.owning_module, node.target), _PASSTHROUGH_MODULES)
    return False


def is_view(node: Any) -> bool:
    if not isinstance(node, fx.Node):
        return False
    return (node.op == "call_method" and node.target in _VIEW_METHODS) or (
        node.op == "call_function" and node.target is operator.getitem
    )


def call_counts(gm: fx.GraphModule) -> dict[str, int]:
    """How many call_module nodes call each module target of ``gm``."""
    counts: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            counts[node.target] = counts.get(node.target, 0) + 1
    return counts


def find_sites(gm: fx.GraphModule, region: str, catalogue: Catalogue) -> list[Site]:
    """Every activation site in ``gm``: activation calls applied to a pre-activation, formulas
    recognised as one activation (core.formulas), and modules that declare they wrap one
    (``vgp_activation``, e.g. GPN's), which carry the passes already applied."""
    outputs = output_nodes(gm.graph)
    counts = call_counts(gm)
    analysis = analyse(gm, catalogue)
    formulas = {f.output: f for f in analysis.formulas}
    in_formula = {n for f in formulas.values() for n in f.nodes}
    sites, nth = [], dict.fromkeys(counts, 0)
    for node in gm.graph.nodes:
        if node in formulas:
            f = formulas[node]
            if analysis.nonlinear(f.input):
                continue  # a formula applied to an activation's output: not a pre-activation
            act = catalogue.get(f.kind)
            params = {**act.defaults, **f.params}
            site = _build(node, gm, region, act, params, "formula", False, "", frozenset(), outputs, f.input)
            site.nodes = f.nodes
            # the formula uses its input several times (GPT-2's GELU: 3): those uses are the site's own
            site.producer_shared = any(u not in f.nodes for u in f.input.users)
            sites.append(site)
            continue
        if node in in_formula or analysis.inside_formula(node):
            continue  # a piece of a formula, not applied to a pre-activation
        site = _site_at(node, gm, region, catalogue, outputs)
        if site is None:
            continue
        if node.op == "call_module":
            site.module_calls = counts[node.target]
        if site.producer is not None and site.producer.op == "call_module":
            site.producer_calls = counts[site.producer.target]
        if site.module_calls > 1:
            # one module, several calls: each call is its own site, named <module>#<k>
            nth[node.target] += 1
            site.notes.append(f"module {site.module_name} is called {counts[node.target]} times")
            if META_SITE not in node.meta:
                site.name = f"{site.name}#{nth[node.target]}"
        sites.append(site)
    return sites


def _site_at(node, gm, region, catalogue, outputs) -> Site | None:
    match = catalogue.match_node(node, gm)
    applied = frozenset(node.meta.get(META_APPLIED, ()))
    if match is None and node.op == "call_module":
        mod = submodule(gm, str(node.target))
        wrapped = protocol.wrapped_activation(mod)
        if wrapped is not None:
            applied |= frozenset(protocol.applied(mod))
            return _build(node, gm, region, *wrapped, "module", False, "", applied, outputs)
    if match is None:
        return None
    return _build(node, gm, region, match.activation, match.params, match.spelling, match.inplace, match.reason,
                  applied, outputs)


def _build(node, gm, region, act, params, spelling, inplace, unusable, applied, outputs, src=None) -> Site:
    if src is None:
        src = node.args[0] if node.args else None
    kind = name = module = None
    shared = False
    if isinstance(src, fx.Node):
        kind, name, module = _producer(src, gm)
        shared = len(src.users) > 1
    if inplace and is_view(src):
        unusable = "in-place activation on a view of another tensor (rewriting it would not update the base tensor)"
    return Site(
        name=site_name(node, region),
        region=region,
        node=node,
        activation=act,
        params=params,
        spelling=spelling,
        inplace=inplace,
        module_name=region + str(node.target) if node.op == "call_module" else None,
        producer=src if kind else None,
        producer_kind=kind,
        producer_name=(region + name) if name else None,
        producer_module=module,
        producer_shared=shared,
        # only the root graph's outputs are the model's; a sub-region's output feeds eager code,
        # unless the region is one the root graph returns (core/capture.py marks it: MODEL_OUTPUT)
        is_output=node in outputs and (region == "" or gm.meta.get(MODEL_OUTPUT, False)),
        applied=applied,
        unusable=unusable,
        input=src if isinstance(src, fx.Node) else None,
        module=submodule(gm, str(node.target)) if node.op == "call_module" else None,
    )


@dataclass
class Layer:
    """One module of a pass's ``layer_types`` called in a region (visited once per module)."""

    name: str  # relative to the region
    region: str
    node: fx.Node  # its first call
    module: nn.Module
    calls: int = 1

    @property
    def full_name(self) -> str:
        return self.region + self.name

    @property
    def gm(self) -> fx.GraphModule:
        return self.node.graph.owning_module


def find_layers(gm: fx.GraphModule, region: str, types: tuple[type, ...]) -> list[Layer]:
    """Each distinct module of ``types`` called in ``gm``, in graph order."""
    counts = call_counts(gm)
    layers: dict[str, Layer] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target not in layers:
            module = submodule(gm, str(node.target))
            if isinstance(module, types):
                layers[node.target] = Layer(str(node.target), region, node, module, counts[node.target])
    return list(layers.values())


@dataclass
class Block:
    """``x -> affine -> activation -> y``: an activation site fed by an affine module."""

    site: Site

    @property
    def name(self) -> str:
        return self.site.producer_name or self.site.name

    @property
    def affine(self) -> nn.Module:
        return self.site.producer_module

    def shape_change(self) -> str | None:
        """None when y has x's shape for every input, else what changes it."""
        return shape_change(self.affine)


def find_blocks(sites: list[Site]) -> list[Block]:
    """The sites fed by an affine module, as blocks."""
    return [Block(s) for s in sites if s.producer_module is not None]


def shape_change(layer: nn.Module) -> str | None:
    """Why ``layer``'s output can differ in shape from its input (None: it never does)."""
    if isinstance(layer, nn.Linear):
        if layer.in_features != layer.out_features:
            return f"Linear {layer.in_features} -> {layer.out_features} is not square"
        return None
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        return "a transposed convolution changes the spatial shape"
    if isinstance(layer, nn.modules.conv._ConvNd):
        if layer.in_channels != layer.out_channels:
            return f"{type(layer).__name__} maps {layer.in_channels} -> {layer.out_channels} channels"
        if any(s != 1 for s in layer.stride):
            return f"stride {tuple(layer.stride)} changes the spatial shape"
        if not _same_padding(layer):
            return f"padding {layer.padding!r} is not 'same' for kernel {tuple(layer.kernel_size)}"
        return None
    return f"{type(layer).__name__} is not a Linear or a convolution"


def _same_padding(conv: nn.Module) -> bool:
    if isinstance(conv.padding, str):
        return conv.padding == "same"
    return all(2 * p == d * (k - 1) for p, d, k in zip(conv.padding, conv.dilation, conv.kernel_size))


@dataclass
class ModelTarget:
    """The whole captured model, for passes that match the model itself."""

    root: nn.Module
    regions: dict[str, fx.GraphModule]

    @property
    def root_graph(self) -> fx.GraphModule | None:
        """The root's GraphModule when the top-level forward was traced."""
        return self.regions.get("")
