"""Misuse of the API and corrupt recipes: one typed error naming the argument or the recipe field (issue #9)."""

import time
from collections import OrderedDict

import pytest
import torch
from torch import nn

from vgpcompile import LoadError, SelectorError, UsageError, vgpcompile
from vgpcompile.core import recipe as recipes
from vgpcompile.core import select


def net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


NAN = torch.full((2, 4), float("nan"))
INF = torch.full((2, 4), float("inf"))


def test_arp_leaves_a_site_whose_only_range_is_infinite_with_that_reason():
    """Inf is a legitimate input (attention masks); arp cannot take a pivot from it and says so."""
    report = vgpcompile(net(), passes=["arp"], example_inputs=(INF,)).vgp_report
    (row,) = [r for r in report.sites if "arp" in r.outcomes and not r.is_output]
    assert not row.changed["arp"] and "example_inputs[0] holds NaN or Inf values" in row.outcomes["arp"]
    assert "xmin=0.0" not in row.outcomes["arp"]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"passes": None}, "passes must be a list of pass names or Pass instances (or a pipeline string), got None"),
        ({"passes": 42}, "got int 42"),
        ({"passes": b"gpn"}, "got bytes b'gpn'"),
        ({"passes": [b"gpn"]}, "got bytes b'gpn' in the list"),
        ({"passes": ["gpn"], "options": {"gpn": "paper"}}, "options['gpn'] must be a dict of option values"),
        ({"passes": ["gpn"], "options": ["gpn"]}, "options must be a dict"),
        ({"example_inputs": 3}, "example_inputs= must be a tuple of the model's inputs (or one tensor), got int"),
        ({"example_inputs": "x"}, "example_inputs= must be a tuple"),
        ({"example_inputs": (NAN,)}, "example_inputs[0] contains NaN"),
        ({"passes": ["arp"], "example_inputs": (torch.randn(0, 4),)}, "example_inputs[0] is empty (shape (0, 4))"),
        ({"input_range": "01"}, "input_range= must be a pair (lo, hi) of numbers, got '01'"),
        ({"input_range": (0, 1, 2)}, "input_range= must be a pair"),
        ({"input_range": (True, 2)}, "input_range= must be a pair"),
        ({"input_range": (1, -1)}, "input_range= must be finite with lo <= hi"),
        ({"input_range": (0, float("inf"))}, "input_range= must be finite"),
        ({"select": 42}, "select= must be a rule string or a list of them, got int"),
        ({"leaf": 42}, "leaf= must be a rule string or a list of them"),
        ({"ignore": {"a": 1}}, "ignore= must be a rule string"),
        ({"inplace": "yes"}, "inplace= must be True or False"),
        ({"catalogue": "default"}, "catalogue= must be a vgpcompile Catalogue"),
        ({"passes": ["gpn"], "opitons": {}}, "unexpected keyword 'opitons'. Did you mean 'options'"),
    ],
)
def test_api_misuse_is_a_usage_error_naming_the_argument(kwargs, message):
    with pytest.raises(UsageError) as err:
        vgpcompile(net(), **kwargs)
    assert message in str(err.value)
    assert "arp pivot q" not in str(err.value).lower() and "xmin=0.0" not in str(err.value)


def test_a_bare_tensor_is_one_example_input():
    model = vgpcompile(net(), passes=["arp"], example_inputs=torch.rand(3, 4))
    assert model.vgp_recipe["input_range"] is not None


def test_meta_device_model_is_refused_before_any_work():
    model = nn.Sequential(nn.Linear(4, 4, device="meta"), nn.Tanh())
    with pytest.raises(UsageError, match="'0.weight' is on the 'meta' device"):
        vgpcompile(model, passes=["gpn"])


def test_pathological_selector_regex_is_bounded(monkeypatch):
    """re:(\\w|\\w\\w)*\\d backtracks exponentially in the name length; Python's re took minutes."""
    monkeypatch.setattr(select, "REGEX_BUDGET_S", 0.2)
    names = [("block" * 8) + str(i) for i in range(3)]
    model = nn.Sequential(*[nn.Sequential(nn.Linear(4, 4), nn.Tanh()) for _ in range(3)])
    model = nn.Sequential(OrderedDict(zip(names, model)))
    start = time.perf_counter()
    with pytest.raises(SelectorError, match=r"took more than 0.2 s to match .* backtrack exponentially"):
        vgpcompile(model, passes=["gpn"], select=[r"re:(\w|\w\w)*\d"])
    assert time.perf_counter() - start < 10


def test_ordinary_regexes_still_select():
    model = vgpcompile(net(), passes=["gpn"], select=[r"re:1|3"])
    assert model.vgp_report.changed_count("gpn") == 1


def good_recipe() -> dict:
    return vgpcompile(net(), passes=["gpn", "arp"], input_range=(0, 1)).vgp_recipe


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("passes", "gpn", "field 'passes' must be a list, got str"),
        ("passes", [{"name": "gnp", "options": {}}], "field 'passes[0].name': unknown pass 'gnp'. Did you mean 'gpn'"),
        ("passes", [{"name": "gpn", "options": []}], "field 'passes[0].options' must be an object, got list"),
        ("passes", [{"name": "gpn", "options": {"root": "sideways"}}], "field 'passes[0].options': option 'root'"),
        ("passes", [{"name": "gpn", "options": {"rot": "plus"}}], "has no option 'rot'"),
        ("passes", [{"name": "arp", "options": {"L": -4.0}}], "L must be a positive finite number"),
        ("passes", [{"name": "arp", "options": {"eps": float("nan")}}], "options.eps' has an absurd value nan"),
        ("passes", [{"name": "orthogonal", "options": {"seed": 10**30}}], "options.seed' has an absurd value"),
        ("passes", [{"name": "gpn"}, {"name": "gpn"}], "field 'passes[1]': pass 'gpn' is listed twice"),
        ("passes", [3], "field 'passes[0]' must be"),
        ("select", "fc1", "field 'select' must be a list of strings"),
        ("ignore", [1], "field 'ignore' must be a list of strings"),
        ("input_range", [1, -1], "field 'input_range' must be [lo, hi] with finite lo <= hi"),
        ("input_range", "0,1", "field 'input_range' must be"),
        ("weights", "../x.safetensors", "field 'weights' must name the weights file inside the checkpoint"),
        ("weights", ["model.pt"], "field 'weights' must name the weights file"),
        ("form", "trained", "field 'form' must be one of ['training', 'frozen']"),
        ("changed", {"gpn": "1"}, "field 'changed' must map pass names"),
        ("versions", ["0.1"], "field 'versions' must map package names"),
        ("weights_digest", 5, "field 'weights_digest' must be a string"),
    ],
)
def test_corrupt_recipe_fields_name_the_file_and_the_field(field, value, message):
    recipe = {**good_recipe(), field: value}
    with pytest.raises(LoadError) as err:
        recipes.validate(recipe, "ck/recipe.json")
    assert str(err.value).startswith("ck/recipe.json") and message in str(err.value)


def test_a_good_recipe_validates():
    recipe = good_recipe()
    assert recipes.validate(recipe) is recipe
