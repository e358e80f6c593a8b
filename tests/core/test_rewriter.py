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


def test_no_pass_rewrites_a_graph_but_through_the_rewriter():
    # the runtime modules (modules.py, recurrent.py) build their own layers; the rest is rewriting
    files = [p for p in PASSES.rglob("*.py") if p.name not in ("modules.py", "recurrent.py")]
    assert [m for p in files for m in _mutations(p)] == []


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
