"""Inputs that used to be accepted and should not be (issue #20), through the API; the CLI rows
are in tests/cli/test_cli_errors.py. One typed error naming the input, before any harm."""

import json
import os
import stat
import time
import warnings

import pytest
import torch
from helpers import inflating
from torch import nn

from vgpcompile import LoadError, UsageError, diagnose, freeze, load, save, vgpcompile
from vgpcompile.core.registry import resolve
from vgpcompile.core.report import VgpWarning
from vgpcompile.io import checkpoint
from vgpcompile.io.checkpoint import fit_state_dict, read_state_dict


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))


# ---- weights whose values a cast would corrupt ---------------------------------------------


@pytest.mark.parametrize(
    "dtype,message",
    [
        (torch.int8, "holds int8 values for a float32 parameter (a quantized checkpoint?)"),
        (torch.uint8, "holds uint8 values"),
        (torch.int32, "holds int32 values"),
        (torch.complex64, "holds complex64 values for a float32 parameter: loading would drop the imaginary part"),
    ],
)
def test_integer_and_complex_weights_are_refused(dtype, message):
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: v.to(dtype) if v.dim() == 2 else v for k, v in model.state_dict().items()}
    with pytest.raises(LoadError) as err:
        fit_state_dict(model, state, "w.pt")
    assert message in str(err.value) and "'0.weight'" in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing was loaded


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_load_with_a_note(dtype):
    model = mlp()
    state = {k: v.to(dtype) for k, v in mlp().state_dict().items()}
    with pytest.warns(VgpWarning, match=f"holds {str(dtype)[6:]} weights for a model in float32: loaded"):
        fit_state_dict(model, state, "w.pt")
    assert torch.equal(model[0].weight, state["0.weight"].float())


def test_integer_buffers_still_load():
    """num_batches_tracked is int64 in the model too: only floating parameters are checked."""
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    fit_state_dict(model, nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).state_dict(), "w.pt")


# ---- a .pt that inflates -------------------------------------------------------------------


def test_a_pt_that_would_inflate_past_the_limit_is_refused_before_reading(tmp_path, monkeypatch):
    file = inflating(tmp_path / "bomb.pt")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load ran"))
    with pytest.raises(LoadError) as err:
        read_state_dict(file)
    assert "would inflate to 2 GiB from a 2 MiB file, over the limit of 1 GiB" in str(err.value)
    assert "max_unzipped_bytes=" in str(err.value)


def test_the_limit_can_be_raised_and_lowered(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(mlp().state_dict(), good)
    assert set(read_state_dict(good)) == set(mlp().state_dict())
    with pytest.raises(LoadError, match="over the limit"):
        read_state_dict(good, max_unzipped_bytes=100)
    # raised past the claim, the directory check passes; torch then reads (and rejects) the forged entry
    with pytest.raises(LoadError, match="cannot read checkpoint"):
        read_state_dict(inflating(tmp_path / "bomb.pt"), max_unzipped_bytes=3 * 2**30)


# ---- pipeline strings ----------------------------------------------------------------------


def _timed(n: int) -> float:
    start = time.perf_counter()
    with pytest.raises(UsageError, match="pass 'gpn' is listed twice"):
        resolve("gpn," * n)
    return time.perf_counter() - start


def test_a_megabyte_pipeline_string_is_parsed_in_linear_time():
    small = min(_timed(25_000) for _ in range(2))
    large = _timed(250_000)  # 1 MB: took more than 120 s
    assert large < 30 and large / max(small, 1e-3) < 40  # linear: ~10x; quadratic: ~100x


def test_a_long_pipeline_error_is_one_short_line():
    with pytest.raises(UsageError) as err:
        resolve("gpn," * 50_000 + "}")
    assert "'}' without '{'" in str(err.value) and len(str(err.value)) < 300


# ---- option precedence: one rule -----------------------------------------------------------


def test_an_option_given_twice_is_an_error_naming_both():
    with pytest.raises(UsageError) as err:
        vgpcompile(mlp(), passes="gpn{root=paper}", options={"gpn": {"root": "plus"}})
    assert "option 'root' of pass 'gpn' is given twice: 'plus' in options= and 'paper' in the pipeline string" in str(
        err.value
    )
    with pytest.raises(UsageError, match="given twice"):
        vgpcompile(mlp(), passes="gpn{root=paper,root=plus}")
    same = vgpcompile(mlp(), passes="gpn{root=paper}", options={"gpn": {"root": "paper"}})  # no conflict
    assert same.vgp_recipe["passes"][0]["options"]["root"] == "paper"


# ---- deep nesting --------------------------------------------------------------------------


def nested(depth: int) -> nn.Module:
    net = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    for _ in range(depth):
        net = nn.Sequential(net)
    return net


@pytest.mark.parametrize("depth", [150, 200])
def test_200_nested_modules_compile(depth):
    net, x = nested(depth), torch.randn(2, 4)
    plain = vgpcompile(net, example_inputs=x)
    assert torch.equal(plain(x), net(x))
    assert vgpcompile(net, passes=["gpn"], example_inputs=x).vgp_report.changed_count("gpn") == 1


def test_fx_code_too_deep_for_python_leaves_the_module_eager_with_the_reason():
    report = vgpcompile(nested(200), passes=["gpn"]).vgp_report
    assert report.eager[0].name == "<root>"
    assert "its modules nest 201 levels deep, more than the 190 torch.fx's generated code" in report.eager[0].reason


def test_a_thousand_nested_modules_compile_in_linear_time():
    start = time.perf_counter()
    model = vgpcompile(nested(990), passes=["gpn"])  # was: one trace per level, minutes
    assert time.perf_counter() - start < 60 and model.vgp_report.changed_count("gpn") == 1


def test_absurd_nesting_is_one_line(monkeypatch):
    from vgpcompile import api

    monkeypatch.setattr(api, "MAX_NESTING", 50)
    with pytest.raises(UsageError, match="nests modules 60 deep, more than the 50 levels"):
        vgpcompile(nested(59), passes=["gpn"])


# ---- inf and NaN in example inputs: one rule -----------------------------------------------


def test_inf_is_kept_with_a_warning_nan_refused_in_compile_and_diagnose():
    inf = torch.full((2, 4), float("inf"))
    with pytest.warns(VgpWarning, match=r"example_inputs\[0\] holds inf values: kept"):
        vgpcompile(mlp(), passes=["gpn"], example_inputs=inf)
    with pytest.warns(VgpWarning, match=r"example_inputs\[0\] holds inf values: kept"):
        diagnose(mlp(), inf)
    for call in (lambda x: vgpcompile(mlp(), example_inputs=x), lambda x: diagnose(mlp(), x)):
        with pytest.raises(UsageError, match=r"example_inputs\[0\] contains NaN"):
            call(torch.full((2, 4), float("nan")))


# ---- recipes edited: load answers with the recipe error ------------------------------------


def edited(path, **options):
    """The checkpoint at ``path`` with options of its first pass replaced and the digest recomputed."""
    file = path / "recipe.json"
    recipe = json.loads(file.read_text())
    recipe["passes"][0]["options"].update(options)
    recipe[checkpoint.DIGEST] = checkpoint.digest(recipe, path / "model.safetensors")
    file.write_text(json.dumps(recipe))
    return path


@pytest.mark.parametrize("value", [2**62, 10**9, 1e9])
def test_absurd_rai_num_examples_is_a_recipe_error(tmp_path, value):
    lifted = vgpcompile(mlp(), passes=["rai"], options={"rai": {"num_examples": 16}}, example_inputs=torch.randn(3, 4))
    save(lifted, tmp_path / "ck")
    with pytest.raises(LoadError) as err:
        load(mlp, edited(tmp_path / "ck", num_examples=value))
    assert str(err.value).startswith(f"{tmp_path / 'ck' / 'recipe.json'}: field 'passes[0].options'")
    assert "num_examples" in str(err.value) or "tables would hold" in str(err.value)


def test_roaf_records_its_sharing_decision_and_an_edited_limit_cannot_change_the_model(tmp_path):
    model = vgpcompile(mlp(), passes=["roaf"])
    assert model.vgp_recipe["passes"][0]["options"]["shared"] is False  # the decision, not only the limit
    save(model, tmp_path / "ck")
    x = torch.randn(3, 4)
    assert torch.equal(load(mlp, edited(tmp_path / "ck", max_buffer_mb=1e9))(x), model(x))
    with pytest.raises(LoadError, match=r"recipe.json: field 'passes\[0\].options'.*max_buffer_mb"):
        load(mlp, edited(tmp_path / "ck", max_buffer_mb=1e-9))  # was: a shared filter, outputs 0.26 away


@pytest.mark.parametrize(
    "passes,options",
    [
        ("gpn", {}),
        ("arp", {}),
        ("orthogonal", {}),
        ("roaf", {}),
        ("rai", {"rai": {"num_examples": 8}}),
    ],
)
def test_no_limit_option_edited_in_a_recipe_loads_a_different_model(tmp_path, passes, options):
    """Every pass: set each numeric limit option (max_*) to a tiny and a huge value, digest recomputed:
    load gives the saved model bitwise, or a LoadError naming recipe.json; never other outputs."""
    x = torch.rand(3, 4)
    model = vgpcompile(mlp(), passes=passes, options=options, example_inputs=x).eval()
    want = model(x)
    save(model, tmp_path / "ck")
    limits = [k for k, v in model.vgp_recipe["passes"][0]["options"].items() if k.startswith("max_")]
    for key in limits:
        for value in (1e-9, 1e9):
            ck = tmp_path / f"{key}-{value}"
            ck.mkdir()
            for name in ("recipe.json", "model.safetensors"):
                (ck / name).write_bytes((tmp_path / "ck" / name).read_bytes())
            try:
                got = load(mlp, edited(ck, **{key: value})).eval()(x)
            except LoadError as err:
                assert "recipe.json: field 'passes[0].options'" in str(err)
            else:
                assert torch.equal(got, want), (key, value)


# ---- files follow the umask ----------------------------------------------------------------


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_model_safetensors_follows_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        save(vgpcompile(mlp(), passes=["gpn"]), tmp_path / "ck")
    finally:
        os.umask(old)
    for name in ("model.safetensors", "recipe.json"):
        assert stat.S_IMODE((tmp_path / "ck" / name).stat().st_mode) == mode, name


# ---- rai: a training call without idx is refused before any module runs ---------------------


def test_rai_training_call_without_idx_leaves_batchnorm_untouched():
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    lifted = vgpcompile(net, passes=["rai"], options={"rai": {"num_examples": 16}}, example_inputs=torch.randn(3, 4))
    bn = next(m for m in lifted.modules() if isinstance(m, nn.BatchNorm1d))
    before = [t.clone() for t in (bn.running_mean, bn.running_var, bn.num_batches_tracked)]
    with pytest.raises(UsageError, match=r"rai: in training mode the lifted model takes \(x, idx\).*before any layer"):
        lifted.train()(torch.randn(5, 4))
    assert all(torch.equal(a, b) for a, b in zip(before, (bn.running_mean, bn.running_var, bn.num_batches_tracked)))
    assert lifted(torch.randn(5, 4), torch.arange(5)).shape == (5, 2)  # with idx it trains
    frozen = freeze(lifted)  # the guard goes with the idx input
    assert not [m for m in frozen.modules() if type(m).__name__ == "RAIGuard"]
    again = vgpcompile(lifted, passes=["gpn"])  # a lifted model compiles again: the guard is a leaf
    with pytest.raises(UsageError, match="before any layer ran"):
        again.train()(torch.randn(5, 4))
    assert frozen(torch.randn(5, 4)).shape == (5, 2)


# ---- roaf's messages name what the user gave ------------------------------------------------


def test_roaf_beta_above_one_names_beta():
    with pytest.raises(UsageError) as err:
        vgpcompile(mlp(), passes="roaf{beta=2}")
    text = str(err.value)
    assert text.startswith("option 'beta' of pass 'roaf' must be at most 1 when alpha is not given") and "-1" in text
    assert vgpcompile(mlp(), passes="roaf{beta=2,alpha=0.5}").vgp_report.changed_count("roaf") > 0


def test_a_bidirectional_rnn_left_alone_says_why():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vgpcompile(nn.Sequential(nn.RNN(4, 4, bidirectional=True)), passes=["roaf"])
    text = " ".join(str(w.message) for w in caught)
    assert "no nn.RNN it can swap: '0' (bidirectional nn.RNN is not supported by ROAFRNN)" in text
