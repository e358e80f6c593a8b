"""Hugging Face models compiled: still the user's model, save_pretrained / from_pretrained, Trainer.

Tiny configs from zoo_models (hidden 32, 2 layers), random weights, no downloads.
"""

from __future__ import annotations

import json

import pytest
import torch
import zoo_models
from zoo_models import main_output

import vgpcompile
from vgpcompile import freeze
from vgpcompile.freeze import unfolded
from vgpcompile.nn import GPNActivation

pytestmark = pytest.mark.zoo
T = pytest.importorskip("transformers")

PASSES = ((), ("gpn",), ("orthogonal",), ("arp",), ("roaf",), ("bsnn",))
# (model, passes) whose freeze folds everything: the original architecture with other weights.
# Not plain: BERT's GELU feeds another region (BertIntermediate -> BertOutput) and its pooler's
# tanh is an output, T5's ReLU reaches `wo` through a Dropout, BERT's pooler keeps roaf's filter.
NOT_PLAIN = {("bert", "gpn"), ("bert", "bsnn"), ("bert", "roaf"), ("t5", "gpn"), ("t5", "bsnn")}
STOCK_REFUSAL = "vgpcompile.from_pretrained"


def _inputs(name: str) -> tuple:
    return zoo_models._t5_inputs() if name == "t5" else zoo_models._ids()


def _out(model, inputs, training: bool = False) -> torch.Tensor:
    model.train(training)
    torch.manual_seed(0)
    with torch.no_grad():
        return main_output(model(*inputs))


def test_gpt2_stays_a_gpt2():
    net = zoo_models.gpt2().eval()
    (ids,) = zoo_models._ids()
    plain = vgpcompile.vgpcompile(net, [], example_inputs=(ids,)).eval()
    assert isinstance(plain, T.GPT2LMHeadModel)
    greedy = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(plain.generate(ids, **greedy), net.generate(ids, **greedy))

    model = vgpcompile.vgpcompile(net, ["gpn"], example_inputs=(ids,)).eval()
    assert isinstance(model, T.GPT2LMHeadModel) and model.config.n_embd == 32
    assert model.get_input_embeddings() is model.transformer.wte
    assert model.generate(ids, **greedy).shape == (2, ids.shape[1] + 4)
    model.resize_token_embeddings(zoo_models.VOCAB + 6)
    assert _out(model, (ids,)).shape[-1] == zoo_models.VOCAB + 6
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied


def test_frozen_gpn_gpt2_is_a_stock_gpt2():
    net = zoo_models.gpt2()
    (ids,) = zoo_models._ids()
    model = vgpcompile.vgpcompile(net, ["gpn"], example_inputs=(ids,))
    frozen = freeze(model).eval()
    assert not any(isinstance(m, GPNActivation) for m in frozen.modules()) and unfolded(frozen) == {}
    fresh = zoo_models.gpt2()
    fresh.load_state_dict(frozen.state_dict(), strict=True)
    assert torch.allclose(_out(fresh, (ids,)), _out(model, (ids,)), atol=1e-6)


@pytest.mark.parametrize("passes", PASSES, ids=lambda p: "+".join(p) or "none")
@pytest.mark.parametrize("name", ["gpt2", "bert", "t5"])
def test_frozen_save_pretrained_round_trips(name, passes, tmp_path):
    net, inputs = getattr(zoo_models, name)(), _inputs(name)
    frozen = freeze(vgpcompile.vgpcompile(net, list(passes), example_inputs=inputs)).eval()
    frozen.save_pretrained(tmp_path)
    plain = not unfolded(frozen)
    assert plain == (not any((name, p) in NOT_PLAIN for p in passes))
    if plain:  # the stock class loads it: the same weights, the same function
        stock = type(net).from_pretrained(tmp_path).eval()
        own, back = frozen.state_dict(), stock.state_dict()
        assert own.keys() == back.keys() and all(torch.equal(own[k], back[k]) for k in own)
        assert torch.allclose(_out(stock, inputs), _out(frozen, inputs), atol=1e-6)
    else:
        with pytest.raises(ValueError, match=STOCK_REFUSAL):
            type(net).from_pretrained(tmp_path)
    again = vgpcompile.from_pretrained(type(net), tmp_path)
    assert type(again) is type(frozen) and torch.equal(_out(again, inputs), _out(frozen, inputs))


def test_training_form_save_pretrained(tmp_path):
    net = zoo_models.gpt2()
    (ids,) = zoo_models._ids()
    model = vgpcompile.vgpcompile(net, ["gpn"], example_inputs=(ids,))
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["vgpcompile"] == {"form": "training", "passes": ["gpn"], "recipe": "recipe.json"}
    for cls in (T.GPT2LMHeadModel, T.AutoModelForCausalLM):  # never the original architecture, silently
        with pytest.raises(ValueError, match=STOCK_REFUSAL):
            cls.from_pretrained(tmp_path)
    for cls in (T.GPT2LMHeadModel, T.AutoModelForCausalLM):
        back = vgpcompile.from_pretrained(cls, tmp_path)
        assert isinstance(back, T.GPT2LMHeadModel) and not back.training
        assert not hasattr(back.config, "transformers_weights") and not hasattr(back.config, "vgpcompile")
        for training in (True, False):
            assert torch.equal(_out(back, (ids,), training), _out(model, (ids,), training))
    # saved again from the reloaded model, and then frozen: a stock checkpoint in the same directory
    freeze(back).save_pretrained(tmp_path)
    assert "vgpcompile" not in json.loads((tmp_path / "config.json").read_text())
    assert torch.allclose(_out(T.GPT2LMHeadModel.from_pretrained(tmp_path), (ids,)), _out(model, (ids,)), atol=1e-6)


def test_stock_directory_is_not_a_vgpcompile_one(tmp_path):
    zoo_models.gpt2().save_pretrained(tmp_path)
    with pytest.raises(vgpcompile.LoadError, match="GPT2LMHeadModel.from_pretrained"):
        vgpcompile.from_pretrained(T.GPT2LMHeadModel, tmp_path)


class _Tokens(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.ids = torch.randint(0, zoo_models.VOCAB, (16, 8), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _trainer(model, out, **kwargs):
    args = T.TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=4, max_steps=4, save_steps=2, report_to=[], use_cpu=True,
        seed=0, disable_tqdm=True, logging_steps=1, learning_rate=1e-3, **kwargs
    )  # fmt: skip
    return T.Trainer(model=model, args=args, train_dataset=_Tokens())


def _counting(checkpoint, calls: list):
    def counted(*args, **kwargs):
        calls.append(1)
        return checkpoint(*args, **kwargs)

    return counted


def _compiled_gpt2():
    return vgpcompile.vgpcompile(zoo_models.gpt2(), ["gpn"], example_inputs=zoo_models._ids())


def test_trainer_trains_checkpoints_and_resumes(tmp_path):
    model = _compiled_gpt2()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.gradient_checkpointing_enable()
    checkpointed = []  # transformers' checkpoint function runs each block (2) at each step (4)
    for block in model.transformer.h:
        block._gradient_checkpointing_func = _counting(block._gradient_checkpointing_func, checkpointed)
    result = _trainer(model, tmp_path).train()
    assert result.global_step == 4 and torch.isfinite(torch.tensor(result.training_loss))
    assert len(checkpointed) == 8
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)

    resumed = _compiled_gpt2()
    resumed.gradient_checkpointing_enable()
    _trainer(resumed, tmp_path).train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert all(torch.equal(resumed.state_dict()[k], after[k]) for k in after)

    back = vgpcompile.from_pretrained(T.GPT2LMHeadModel, tmp_path / "checkpoint-4")
    (ids,) = zoo_models._ids()
    assert torch.equal(_out(back, (ids,)), _out(model, (ids,)))
    with pytest.raises(ValueError, match=STOCK_REFUSAL):
        T.GPT2LMHeadModel.from_pretrained(tmp_path / "checkpoint-4")


def test_traced_pretrained_model_saves_and_pickles(tmp_path):
    """A transformers model whose root traces: a region of its class, save_pretrained guarded."""

    class TinyConfig(T.PretrainedConfig):
        model_type = "vgp-tiny"

        def __init__(self, width: int = 16, **kwargs) -> None:
            super().__init__(**kwargs)
            self.width = width

    class TinyModel(T.PreTrainedModel):
        config_class = TinyConfig

        def __init__(self, config) -> None:
            super().__init__(config)
            self.body = torch.nn.Sequential(torch.nn.Linear(config.width, config.width), torch.nn.Tanh())
            self.head = torch.nn.Linear(config.width, 2)
            self.post_init()

        def forward(self, x):
            return self.head(self.body(x))

    torch.manual_seed(0)
    x = torch.randn(3, 16)
    model = vgpcompile.vgpcompile(TinyModel(TinyConfig()), ["gpn"], example_inputs=(x,)).eval()
    assert isinstance(model, TinyModel) and isinstance(model, torch.fx.GraphModule)
    model.save_pretrained(tmp_path / "training")
    with pytest.raises(ValueError, match=STOCK_REFUSAL):
        TinyModel.from_pretrained(tmp_path / "training")
    assert torch.equal(vgpcompile.from_pretrained(TinyModel, tmp_path / "training")(x), model(x))
    frozen = freeze(model)
    frozen.save_pretrained(tmp_path / "frozen")
    assert torch.allclose(TinyModel.from_pretrained(tmp_path / "frozen")(x), model(x), atol=1e-6)
