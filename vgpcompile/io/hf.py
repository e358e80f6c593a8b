"""Hugging Face: ``save_pretrained`` of a compiled model, and ``vgpcompile.from_pretrained``.

A compiled ``transformers`` model keeps its class, so its ``save_pretrained`` is the one its
users call. Left alone it would write the weights and the stock ``config.json``, and
``GPT2LMHeadModel.from_pretrained(dir)`` would then silently return the *original*
architecture with the trained weights (another function). So a compiled model's
``save_pretrained`` (core/region.py routes it here) writes the stock directory and, beside
it, ``recipe.json`` (the recipe with the digest binding it to ``model.safetensors``, as in a
vgpcompile checkpoint), and:

- **a plain frozen model** (``freeze`` folded everything: :func:`vgpcompile.freeze.unfolded`
  is empty) is the original architecture with other weights: the stock
  ``from_pretrained`` loads it exactly, and ``config.json`` is left stock;
- **a training form** (or a frozen model that kept an inserted module) gets a mark in
  ``config.json``: ``transformers_weights`` names a file that is not a weights file, so the
  stock ``from_pretrained`` stops with a ValueError whose text is the way out (freeze first,
  or ``vgpcompile.from_pretrained``), and ``"vgpcompile"`` records the form and passes.

Why the mark is in ``config.json`` and the weights keep their stock name: ``Trainer``'s
checkpoints are ``save_pretrained`` directories and it resumes by reading
``model.safetensors`` into the live (compiled) model, whose keys are the original ones;
renaming the weights would break resuming. The ``transformers_weights`` check is
transformers' own (an explicit weights file must end in ``.safetensors``; the key exists
since transformers 4.53, huggingface/transformers#38152, hence the ``zoo`` extra's floor);
an older transformers would load such a directory without complaint. transformers itself is
the user's (a model of its classes is what reaches here), or comes with vgpcompile[zoo]. tests/zoo/test_hf.py
checks the refusal with the installed one.

``vgpcompile.from_pretrained(ModelClass, dir)`` builds ``ModelClass`` from ``config.json``
(mark removed), re-applies the recipe and loads the weights (``vgpcompile.load``): outputs
are bitwise equal to the saved model's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..core.catalogue import Catalogue
from ..core.region import use_save_pretrained
from ..errors import LoadError, UsageError
from . import files
from .checkpoint import DIGEST, RECIPE, digest, load

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
MARK_KEYS = ("transformers_weights", "vgpcompile")


def save_pretrained(model: nn.Module, directory: str | os.PathLike, stock_save, *args: Any, **kwargs: Any) -> Any:
    """The stock ``save_pretrained`` plus ``recipe.json``; a model that is not plain is marked."""
    recipe = getattr(model, "vgp_recipe", None)
    if recipe is None:  # a module of a compiled model that is not its root, or a model never compiled
        return stock_save(directory, *args, **kwargs)
    from ..freeze import unfolded

    plain = recipe.get("form") == "frozen" and not unfolded(model)
    result = stock_save(directory, *args, **kwargs)
    path = Path(directory)
    if not plain:
        _mark_config(path / CONFIG, type(model), recipe)
    weights = path / WEIGHTS
    if not weights.is_file():  # sharded, or safe_serialization=False: no single file to bind the recipe to
        files.remove(path / RECIPE)
        if plain:
            return result
        raise UsageError(
            f"save_pretrained({str(directory)!r}) of a compiled model writes one {WEIGHTS} (it wrote another layout: "
            "drop max_shard_size= / safe_serialization=False, or use vgpcompile.save); config.json is marked so the "
            "stock from_pretrained refuses the directory"
        )
    full = {**recipe, "weights": WEIGHTS}
    full[DIGEST] = digest(full, weights)
    (path / RECIPE).write_text(json.dumps(full, indent=2))
    return result


def _mark_config(config: Path, cls: type, recipe: dict[str, Any]) -> None:
    name = getattr(cls, "vgp_user_class", cls).__name__
    form = recipe.get("form", "training")
    doc = json.loads(config.read_text(encoding="utf-8"))
    doc["transformers_weights"] = (
        f"vgpcompile-{form}-form: this directory holds a vgpcompile-compiled {name}, which the stock class cannot "
        f"represent; load it with vgpcompile.from_pretrained({name}, dir), or call vgpcompile.freeze(model) "
        "before save_pretrained for a stock checkpoint"
    )
    doc["vgpcompile"] = {"form": form, "passes": [p["name"] for p in recipe.get("passes", [])], "recipe": RECIPE}
    config.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def from_pretrained(
    model_class: Any, path: str | os.PathLike, *, catalogue: Catalogue | None = None, eval: bool = True
) -> nn.Module:
    """The compiled model saved by ``save_pretrained`` into ``path``, rebuilt: ``model_class``
    (a transformers model class, or an Auto class) from ``config.json``, the recipe re-applied,
    the weights loaded (bitwise equal outputs). In eval mode, as transformers' own loader."""
    path = Path(path)
    if not (path / RECIPE).is_file():
        raise LoadError(
            f"{path}: no {RECIPE}, so not saved from a vgpcompile-compiled model; a stock checkpoint loads with "
            f"{getattr(model_class, '__name__', model_class)}.from_pretrained({str(path)!r})"
        )
    model = _build(model_class, path)
    compiled = load(model, path, catalogue=catalogue)
    return compiled.eval() if eval else compiled


def _build(model_class: Any, path: Path) -> nn.Module:
    """``model_class`` from the directory's configuration (the mark removed), random weights."""
    config_class = getattr(model_class, "config_class", None)
    try:
        if config_class is None:  # an Auto class
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(path)
        else:
            config = config_class.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise LoadError(f"{path}: cannot read {CONFIG} ({str(err).splitlines()[0][:200]})") from None
    for key in MARK_KEYS:
        if hasattr(config, key):
            delattr(config, key)
    model = model_class(config) if config_class is not None else model_class.from_config(config)
    if (path / "generation_config.json").is_file() and getattr(model, "generation_config", None) is not None:
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(path)
    return model


use_save_pretrained(save_pretrained)  # what a compiled model's save_pretrained calls (core/region.py)
