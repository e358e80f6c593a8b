"""load() rebuilds exactly what was saved, or refuses naming the difference."""

import pytest
import torch
from torch import nn

from vgpcompile import Catalogue, LoadError, load, register_activation, save, vgpcompile


def bent(x):
    return (torch.sqrt(x * x + 1) - 1) / 2 + x


class Bent(nn.Module):
    def forward(self, x):
        return bent(x)


def factory():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), Bent(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))


def test_user_activation_must_be_registered_again_before_load(tmp_path):
    cat = Catalogue()
    register_activation("bent", bent, modules=[Bent], catalogue=cat)
    compiled = vgpcompile(factory(), passes=["gpn"], catalogue=cat)
    assert compiled.vgp_report.changed_count("gpn") == 2
    save(compiled, tmp_path / "ck")
    assert compiled.vgp_recipe["activations"] == ["bent"]
    with pytest.raises(LoadError, match=r"uses activation\(s\) \['bent'\], which are not registered"):
        load(factory, tmp_path / "ck")
    back = load(factory, tmp_path / "ck", catalogue=cat)
    x = torch.randn(4, 3)
    assert torch.equal(back(x), compiled(x))


def test_a_rebuild_that_rewrites_other_sites_is_refused(tmp_path):
    compiled = vgpcompile(factory(), passes=["gpn"])  # Bent is not an activation here: 1 site
    save(compiled, tmp_path / "ck")

    def other():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 2))

    with pytest.raises(LoadError, match=r"does not reproduce the saved model \(rewritten now only: \['1'\]\)"):
        load(other, tmp_path / "ck")


def test_recipe_fields_are_validated_in_one_place(tmp_path):
    compiled = vgpcompile(factory(), passes=["gpn"])
    save(compiled, tmp_path / "ck")
    recipe = tmp_path / "ck" / "recipe.json"
    recipe.write_text(recipe.read_text().replace('"select": []', '"select": "1"'))
    with pytest.raises(LoadError, match=r"recipe.json: field 'select' must be a list of strings"):
        load(factory, tmp_path / "ck")
