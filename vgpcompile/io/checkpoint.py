"""Checkpoints: a state_dict plus the recipe, never a pickled GraphModule.

A checkpoint is a directory with ``model.safetensors`` (or ``model.pt``, a plain state_dict
loaded with ``weights_only=True``) and ``recipe.json`` (passes with every option resolved,
selections, versions, and whether it holds the training or the frozen form). ``load``
rebuilds the module from the original model factory by re-applying the recipe, so nothing
depends on node.meta or generated code surviving a pickle (research/peers.md §0.6).
Files are written to a temporary name and renamed, so a failed save leaves nothing half
written where the output should be.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core import recipe as recipes
from ..core.catalogue import Catalogue
from ..errors import LoadError, UsageError

RECIPE = "recipe.json"
WEIGHTS = {"safetensors": "model.safetensors", "pt": "model.pt"}


def save(model: nn.Module, path: str | os.PathLike, *, format: str = "safetensors") -> Path:
    """Write ``model``'s weights and recipe into directory ``path``; return the directory."""
    recipe = getattr(model, "vgp_recipe", None)
    if recipe is None:
        raise UsageError("save() takes a model returned by vgpcompile() or freeze(): it carries the recipe")
    if format not in WEIGHTS:
        raise UsageError(f"save(format={format!r}): use 'safetensors' or 'pt'")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _write_weights(model, stage / WEIGHTS[format], format)
        (stage / RECIPE).write_text(json.dumps({**recipe, "weights": WEIGHTS[format]}, indent=2))
        _publish(stage, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return target


def _write_weights(model: nn.Module, file: Path, format: str) -> None:
    if format == "safetensors":
        from safetensors.torch import save_model

        save_model(model, str(file))  # drops duplicates of tied weights; load_model restores them
    else:
        torch.save(model.state_dict(), file)


def _publish(stage: Path, target: Path) -> None:
    """Move staged files into ``target``: a rename of the whole directory when it is new."""
    if not target.exists():
        os.rename(stage, target)
        stage.mkdir()  # so the caller's cleanup has something to remove
        return
    if not target.is_dir():
        raise UsageError(f"save: {target} exists and is not a directory")
    for item in stage.iterdir():
        os.replace(item, target / item.name)


def read_recipe(path: str | os.PathLike) -> dict[str, Any]:
    file = Path(path) / RECIPE
    if not file.is_file():
        raise LoadError(f"{path}: not a vgpcompile checkpoint (no {RECIPE}); write one with vgpcompile.save()")
    try:
        recipe = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LoadError(f"{file}: corrupt recipe ({err})") from None
    return recipes.validate(recipe, str(file))


def load(
    model_or_factory: nn.Module | Callable[[], nn.Module],
    path: str | os.PathLike,
    *,
    catalogue: Catalogue | None = None,
) -> nn.Module:
    """Rebuild a saved model: original model (or factory) -> re-apply the recipe -> load weights.

    Outputs are bitwise equal to the saved model's. The rebuild must rewrite exactly the
    targets the saved model had rewritten (a user activation not registered again, or a
    changed factory, is refused naming the difference). ``catalogue`` is the activation
    catalogue the model was compiled with, when it was not the default one.
    """
    from ..api import CompileOptions, compile_with
    from ..core.catalogue import DEFAULT
    from ..core.registry import make_pass
    from ..freeze import freeze

    recipe = read_recipe(path)
    file = str(Path(path) / RECIPE)
    missing = recipes.missing_activations(recipe, catalogue or DEFAULT)
    if missing:
        raise LoadError(
            f"{file}: the saved model uses activation(s) {missing}, which are not registered: call "
            "vgpcompile.register_activation(...) for them (or pass catalogue=) before load()"
        )
    model = model_or_factory if isinstance(model_or_factory, nn.Module) else model_or_factory()
    try:
        passes = [make_pass(p["name"], p.get("options", {})) for p in recipe["passes"]]
    except UsageError as err:
        raise LoadError(f"{file}: field 'passes': {err}") from None
    rng = recipe.get("input_range")
    opts = CompileOptions(
        select=recipe.get("select") or None,
        ignore=recipe.get("ignore") or None,
        leaf=recipe.get("leaf") or None,
        input_range=tuple(rng) if rng else None,
        catalogue=catalogue,
        observed=recipe.get("observed"),
    )
    compiled = compile_with(model, passes, opts)
    recipes.check_rebuild(recipe, compiled.vgp_report, file)
    if recipe.get("form") == "frozen":
        compiled = freeze(compiled)
    load_weights(compiled, Path(path) / recipe.get("weights", WEIGHTS["safetensors"]))
    return compiled


def load_weights(model: nn.Module, file: Path) -> None:
    """Load a weights file written by ``save`` into ``model``, strictly."""
    if not file.is_file():
        raise LoadError(f"{file}: no such file")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_model

        try:
            missing, unexpected = load_model(model, str(file), strict=False)
        except Exception as err:
            raise LoadError(f"{file}: cannot read safetensors ({_first_line(err)})") from None
        _check_keys(file, missing, unexpected)
        return
    fit_state_dict(model, read_state_dict(file), file)


def read_state_dict(file: str | os.PathLike, *, allow_pickle: bool = False) -> Any:
    """A state_dict from ``.safetensors`` or ``.pt``/``.pth`` (``weights_only=True``).

    With ``allow_pickle=True`` a ``.pt`` may also hold a whole pickled module, which is
    returned as is: unpickling runs arbitrary code, so only for files you trust.
    """
    file = Path(file)
    if not file.is_file():
        raise LoadError(f"{file}: no such file")
    if file.suffix == ".pt2":
        raise LoadError(
            f"{file}: a torch.export program cannot be made trainable again (an ExportedProgram has no "
            "train mode and its parameters are lifted); pass the model factory with --model and a state_dict"
        )
    if file.suffix == ".safetensors":
        return _read_safetensors(file)
    try:
        obj = torch.load(file, map_location="cpu", weights_only=not allow_pickle)
    except Exception as err:
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise LoadError(
                f"{file}: holds pickled Python objects, not a plain state_dict; refusing to unpickle it "
                "(pass --allow-pickle only for a file you trust: unpickling runs arbitrary code)"
            ) from None
        raise LoadError(f"{file}: cannot read checkpoint ({_first_line(err)})") from None
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LoadError(f"{file}: not a state_dict (a dict of tensors)")
    return obj


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except Exception as err:
        raise LoadError(f"{file}: cannot read safetensors ({_first_line(err)})") from None


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], file: str | os.PathLike) -> None:
    """``model.load_state_dict(state)``, with a LoadError naming missing/unexpected/mis-shaped keys."""
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if wrong:
        k = wrong[0]
        raise LoadError(f"{file}: shape mismatch for {k!r}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}")
    result = model.load_state_dict(state, strict=False)
    _check_keys(file, result.missing_keys, result.unexpected_keys)


def _check_keys(file, missing, unexpected) -> None:
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        raise LoadError(f"{file}: does not fit the model: " + "; ".join(parts))


def _few(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
