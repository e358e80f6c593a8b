"""Registry, options, selectors and the pipeline's contracts."""

import dataclasses
import itertools
import re
from pathlib import Path

import models
import pytest
import torch
from torch import nn

from vgpcompile import PassError, SelectorError, UsageError, VgpWarning, list_passes, plan, run_pass, vgpcompile
from vgpcompile.core.contract import BLOCK, MODEL, Pass
from vgpcompile.core.facts import Fact
from vgpcompile.core.pipeline import format_pipeline
from vgpcompile.core.registry import REGISTRY, get_pass, make_pass, resolve
from vgpcompile.core.runner import lower_order, order
from vgpcompile.core.targets import META_PASS, Block, ModelTarget
from vgpcompile.nn import GPNActivation
from vgpcompile.passes.gpn import GPN


def test_registry_keys_equal_pass_names():
    for name in REGISTRY:
        assert get_pass(name).name == name
    assert ("gpn", GPN.summary) in list_passes()


def test_unknown_pass_lists_close_matches():
    with pytest.raises(UsageError, match="unknown pass 'gnp'. Did you mean 'gpn'"):
        vgpcompile(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), passes=["gnp"])


def test_unknown_option_lists_close_matches():
    with pytest.raises(UsageError, match="pass 'gpn' has no option 'roots'. Did you mean 'root'"):
        vgpcompile(nn.Linear(2, 2), passes=["gpn"], options={"gpn": {"roots": "plus"}})


def test_option_types_are_checked_and_parsed():
    assert make_pass("gpn", {"learnable": "true", "root": "paper"}) == GPN(root="paper", learnable=True)
    with pytest.raises(UsageError, match=r"option 'root' of pass 'gpn' must be one of \['minus', 'plus', 'paper'\]"):
        make_pass("gpn", {"root": "biggest"})
    with pytest.raises(UsageError, match="option 'learnable' of pass 'gpn' must be bool"):
        make_pass("gpn", {"learnable": 1})


def test_pass_given_three_ways():
    net = models.deep_tanh_mlp(depth=2)
    by_name = vgpcompile(net, passes=["gpn"], options={"gpn": {"root": "plus"}})
    by_obj = vgpcompile(net, passes=[GPN(root="plus")])
    x = torch.randn(3, 16)
    assert torch.equal(by_name(x), by_obj(x))
    assert by_obj.vgp_recipe["passes"] == [{"name": "gpn", "options": {"root": "plus", "learnable": False}}]


def test_duplicate_pass_and_stray_options_are_errors():
    with pytest.raises(UsageError, match="listed twice"):
        resolve(["gpn", "gpn"])
    with pytest.raises(UsageError, match="options given for pass 'gpn', which is not in passes"):
        resolve([], {"gpn": {"root": "plus"}})


def test_pass_not_applied_twice_to_the_same_site():
    once = vgpcompile(models.deep_tanh_mlp(depth=2), passes=["gpn"])
    twice = vgpcompile(once, passes=["gpn"])
    rows = [r for r in twice.vgp_report.sites if not r.is_output]
    assert rows and all("already rewritten by 'gpn'" in r.outcomes["gpn"] for r in rows)
    x = torch.randn(3, 16)
    assert torch.equal(once(x), twice(x))


def test_new_nodes_record_their_pass():
    class Fn(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.out = nn.Linear(3, 3), nn.Linear(3, 1)

        def forward(self, x):
            return self.out(torch.tanh(self.fc(x)))

    compiled = vgpcompile(Fn(), passes=["gpn"])
    made = [n for n in compiled.graph.nodes if n.meta.get(META_PASS) == "gpn"]
    assert [n.target for n in made] == ["tanh_gpn"]


def test_failure_inside_a_pass_names_pass_and_node():
    class Broken(Pass):
        name = "gpn"

        def apply(self, site, env):
            raise RuntimeError("boom")

    net = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 1))
    with pytest.raises(PassError, match=r"pass 'gpn' failed at node '_1' .*in region '<root>': RuntimeError: boom"):
        vgpcompile(net, passes=[Broken()])


# --- selectors --------------------------------------------------------------------------------


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.GELU())
        self.conv = nn.Conv1d(1, 1, 3, padding=1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = self.enc(x)
        h = torch.sigmoid(self.conv(h.unsqueeze(1))).squeeze(1)
        return self.head(h)


def changed(model):
    return sorted(r.name for r in model.vgp_report.sites if r.changed.get("gpn"))


@pytest.mark.parametrize(
    "select,ignore,expected",
    [
        (None, None, ["enc.1", "enc.3", "sigmoid()"]),
        (["enc"], None, ["enc.1", "enc.3"]),
        (["enc.1"], None, ["enc.1"]),
        (["re:enc\\.[13]"], None, ["enc.1", "enc.3"]),
        (["type:Conv1d"], None, ["sigmoid()"]),
        (["type:Tanh", "type:_ConvNd"], None, ["enc.1", "sigmoid()"]),
        (["act:gelu"], None, ["enc.3"]),
        (None, ["act:gelu"], ["enc.1", "sigmoid()"]),
        (["enc"], ["enc.3"], ["enc.1"]),
        (None, ["enc.2"], ["enc.1", "sigmoid()"]),  # a producer's name selects its site
    ],
)
def test_selector_grammar(select, ignore, expected):
    assert changed(vgpcompile(Mixed(), passes=["gpn"], select=select, ignore=ignore)) == expected


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"select": ["enc.9"]}, r"select rule 'enc.9' matches no activation site or layer. Did you mean 'enc.3'"),
        ({"ignore": ["type:Conv3d"]}, r"ignore rule 'type:Conv3d' matches no activation site or layer"),
        ({"select": ["act:gleu"]}, r"unknown activation kind 'gleu'. Did you mean 'gelu'"),
        ({"select": ["re:(enc"]}, r"select rule 're:\(enc' is not a valid regex"),
        ({"select": ["kind:tanh"]}, r"unknown prefix 'kind:'; use re:, type:, act: or a module name"),
        ({"select": [""]}, r"non-empty strings"),
    ],
)
def test_selector_errors(kw, message):
    with pytest.raises(SelectorError, match=message):
        vgpcompile(Mixed(), passes=["gpn"], **kw)


# --- the contract: targets, results, ordering, bare graphs ------------------------------------


def test_run_pass_on_a_bare_graph_module_returns_its_result():
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 1))
    gm = torch.fx.symbolic_trace(net)
    result = run_pass(GPN(), gm)
    assert result.pass_name == "gpn" and result.changed == 2
    assert {o.target for o in result.outcomes if o.changed} == {"1", "3"}
    x = torch.randn(5, 3)
    a, b = GPNActivation("tanh").a, GPNActivation("tanh").b
    z = net[2](a * torch.tanh(net[0](x)) + b)
    a2, b2 = GPNActivation("sigmoid").a, GPNActivation("sigmoid").b
    assert torch.allclose(gm(x), net[4](a2 * torch.sigmoid(z) + b2), atol=1e-6)


def test_passes_run_in_the_order_their_reads_and_writes_need():
    from vgpcompile.passes.arp import ARP
    from vgpcompile.passes.orthogonal import Orthogonal

    assert [p.name for p in order([ARP(), GPN()])] == ["gpn", "arp"]  # arp reads the ranges gpn writes
    # arp reads the ranges orthogonal's new weights change; gpn and orthogonal do not depend on
    # each other and run in the registry's order, whatever order they are given in
    for given in itertools.permutations([Orthogonal(), ARP(), GPN()]):
        assert [p.name for p in order(list(given))] == ["gpn", "orthogonal", "arp"]
    # freeze lowers in reverse, but gpn folds into plain layers, which the others' lowerings make
    assert [p.name for p in lower_order([Orthogonal(), GPN()])] == ["orthogonal", "gpn"]
    assert [p.name for p in lower_order([GPN(), ARP()])] == ["arp", "gpn"]


def test_read_write_cycle_is_an_error():
    @dataclasses.dataclass(frozen=True)
    class A(Pass):
        name = "a"
        reads = frozenset({Fact.RANGES})
        writes = frozenset({Fact.WEIGHTS})

    @dataclasses.dataclass(frozen=True)
    class B(Pass):
        name = "b"
        reads = frozenset({Fact.WEIGHTS})
        writes = frozenset({Fact.RANGES})

    with pytest.raises(UsageError, match="read what each other writes"):
        order([A(), B()])


@dataclasses.dataclass(frozen=True)
class BlockProbe(Pass):
    """A test pass that matches blocks and the model, and rewrites nothing."""

    name = "gpn"  # borrows a registered name so resolve() accepts the instance
    matches = (BLOCK, MODEL)

    def check(self, target, env):
        return target.shape_change() if isinstance(target, Block) else None

    def apply(self, target, env):
        return "model seen" if isinstance(target, ModelTarget) else f"block {target.name}"


def test_block_and_model_targets():
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Conv1d(1, 1, 3), nn.Tanh())
    result = run_pass(BlockProbe(), torch.fx.symbolic_trace(net), root=net)
    by = {o.target: (o.changed, o.text) for o in result.outcomes}
    assert by["1"] == (False, "Linear 3 -> 4 is not square")
    assert by["3"] == (True, "block 2")
    assert by["<model>"] == (True, "model seen")
    assert not by["5"][0] and by["5"][1].startswith("model output activation")  # the default rules


def test_pipeline_strings_work_in_the_python_api():
    net = models.deep_tanh_mlp(depth=2)
    by_string = vgpcompile(net, passes="gpn{root=plus}")
    by_obj = vgpcompile(net, passes=[GPN(root="plus")])
    x = torch.randn(3, 16)
    assert torch.equal(by_string(x), by_obj(x))
    assert by_string.vgp_recipe["passes"] == by_obj.vgp_recipe["passes"]
    assert format_pipeline([GPN(root="plus", learnable=True)]) == "gpn{root=plus,learnable=true}"
    with pytest.raises(UsageError, match="unbalanced braces"):
        vgpcompile(net, passes="gpn{root=plus")


def test_misspelled_keywords_are_errors_with_a_suggestion():
    net = models.deep_tanh_mlp(depth=2)
    with pytest.raises(UsageError, match="unexpected keyword 'ignroe'. Did you mean 'ignore'"):
        vgpcompile(net, passes=["gpn"], ignroe=["x"])
    with pytest.raises(UsageError, match="unexpected keyword 'selct'. Did you mean 'select'"):
        plan(net, ["gpn"], selct=["1"])


def test_options_for_a_pass_given_as_an_instance_are_an_error():
    net = models.deep_tanh_mlp(depth=2)
    with pytest.raises(UsageError, match="given as an instance and also in options="):
        vgpcompile(net, passes=[GPN(root="plus")], options={"gpn": {"root": "paper"}})


def test_warnings_reach_python_users_too():
    net = models.deep_tanh_mlp(depth=12)
    with pytest.warns(VgpWarning, match="gpn without orthogonal"):
        report = plan(net, ["gpn"])
    assert any("gpn without orthogonal" in w for w in report.warnings)


def test_safetensors_is_a_runtime_dependency():
    """save() writes safetensors by default, so an install without extras must have it."""
    text = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    runtime = re.search(r"^dependencies = \[(.*?)\]", text, re.M | re.S)[1]
    dev = re.search(r"^dev = \[(.*?)\]", text, re.M | re.S)[1]
    assert '"safetensors' in runtime and '"scipy' in dev
