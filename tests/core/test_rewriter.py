"""The rewriter is the only way a pass changes a graph; the site index is found once and
found again only where the rewriter changed something."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import fx, nn

import vgpcompile
from vgpcompile.core.catalogue import DEFAULT
from vgpcompile.core.index import SiteIndex
from vgpcompile.core.rewriter import Rewriter
from vgpcompile.core.targets import META_PASS
from vgpcompile.errors import PassError
from vgpcompile.passes.gpn.modules import GPNActivation

PASSES = Path(vgpcompile.__file__).parent / "passes"
# graph and module mutations a pass must leave to the rewriter
MUTATIONS = {"erase_node", "create_node", "inserting_after", "inserting_before", "call_module", "call_function",
             "placeholder", "replace_all_uses_with", "replace_input_with", "set_submodule", "add_submodule"}


def _mutations(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATIONS:
            if isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "graph" or node.func.attr in (
                "replace_all_uses_with", "replace_input_with", "set_submodule", "add_submodule", "erase_node"
            ):
                found.append(f"{path.relative_to(PASSES)}:{node.lineno} {node.func.attr}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "__setattr__":
            found.append(f"{path.relative_to(PASSES)}:{node.lineno} object.__setattr__")
    return found


# what a pass must not read of a graph: it asks the rewriter (core/rewriter.py's queries: module_of,
# nodes, placeholders, outputs, input_of, call_counts, sites, shapes) and the site index instead
GRAPH_READS = {"graph", "owning_module"}
NODE_READS = {"args", "kwargs"}  # site.node.args: the rewriter's input_of(site) knows formulas and rewrites


def _graph_reads(path: Path, root: Path = PASSES) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Attribute):
            continue
        chained = isinstance(node.value, ast.Attribute) and node.value.attr == "node"
        if node.attr in GRAPH_READS or (node.attr in NODE_READS and chained):
            found.append(f"{path.relative_to(root)}:{node.lineno} .{node.attr}")
        if node.attr in ("delete_all_unused_submodules", "delete_submodule"):
            found.append(f"{path.relative_to(root)}:{node.lineno} {node.attr}")
    return found


def _rewriting_files() -> list[Path]:
    # the runtime modules (modules.py, recurrent.py) build their own layers; the rest is rewriting
    return [p for p in PASSES.rglob("*.py") if p.name not in ("modules.py", "recurrent.py")]


def test_no_pass_rewrites_a_graph_but_through_the_rewriter():
    assert [m for p in _rewriting_files() for m in _mutations(p)] == []


def test_no_pass_reads_a_graph_but_through_the_rewriter_and_the_index():
    assert [m for p in _rewriting_files() for m in _graph_reads(p)] == []


def test_the_graph_read_check_sees_what_it_forbids(tmp_path):
    path = tmp_path / "p.py"
    path.write_text("gm = site.node.graph.owning_module\nx = site.node.args[0]\nfor n in gm.graph.nodes: pass\n"
                    "y = fx.node.map_arg(n.args, f)\ngm.delete_all_unused_submodules()\n")
    reads = [r.split(" ")[1] for r in _graph_reads(path, tmp_path)]
    assert sorted(reads) == [".args", ".graph", ".graph", ".owning_module", "delete_all_unused_submodules"]


def _net():
    return fx.symbolic_trace(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1)))


def test_the_rewriter_stamps_records_and_invalidates_only_the_region_it_changed():
    a, b = _net(), _net()
    index = SiteIndex({"": a, "b.": b}, DEFAULT)
    first = index.sites("")
    index.sites("b.")
    assert index.computed == 2
    rewriter = Rewriter("gpn", index)
    new = rewriter.replace_activation(first[0], GPNActivation("tanh"), "gpn")
    assert index.sites("")[0].applied == {"gpn"} and index.computed == 3  # found again: it changed
    index.sites("b.")
    assert index.computed == 3  # the other region was not
    assert rewriter.inserted[0].target == first[0].name and rewriter.changed_regions == {""}
    relu = rewriter.insert_after(new, "call_function", torch.relu, (new,))
    assert relu.meta[META_PASS] == "gpn"


def test_the_rewriter_never_erases_a_node_in_use():
    gm = _net()
    node = next(n for n in gm.graph.nodes if n.op == "call_module")
    with pytest.raises(PassError, match="still has users"):
        Rewriter("x").erase(node)


def test_the_report_and_the_passes_share_one_index(monkeypatch):
    from vgpcompile.core import index as index_module

    calls = []
    original = index_module.find_sites
    monkeypatch.setattr(index_module, "find_sites", lambda *a: calls.append(a[1]) or original(*a))
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    vgpcompile.vgpcompile(net, ["orthogonal", "gpn"])
    assert calls == [""]  # once, for the report; orthogonal changed no site, gpn read the same index


class _Formula(nn.Module):  # GPT-2's written-out GELU: its input is used three times
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)

    def forward(self, x):
        h = self.a(x)
        return 0.5 * h * (1.0 + torch.tanh(0.7978845608028654 * (h + 0.044715 * torch.pow(h, 3.0))))


def test_the_rewriters_queries_answer_what_passes_used_to_read_off_the_graph():
    gm = fx.symbolic_trace(_Formula())
    index = SiteIndex({"": gm}, DEFAULT)
    rewriter = Rewriter("x", index)
    (site,) = rewriter.sites(gm, DEFAULT)
    assert site is index.sites("")[0] and site.spelling == "formula"  # the index's own site, not found again
    assert rewriter.input_of(site).target == "a"  # the formula's x, not the first argument of its last node
    assert rewriter.module_of(site.node) is gm and [p.name for p in rewriter.placeholders(gm)] == ["x"]
    assert [n.name for n in rewriter.nodes(gm)] == [n.name for n in gm.graph.nodes]
    assert rewriter.outputs(gm) == {site.node}
    shapes = rewriter.shapes(gm, (torch.randn(5, 3),))
    assert shapes[site.node] == (5, 4) and all("tensor_meta" not in n.meta for n in gm.graph.nodes)
    bare = fx.symbolic_trace(_Formula())  # outside a compile: found on the bare graph, by the same rules
    assert [s.kind for s in Rewriter("x").sites(bare, DEFAULT)] == [site.kind]
