"""Checkpoints: a state_dict plus the recipe, never a pickled GraphModule.

A checkpoint is a directory holding exactly two files: ``model.safetensors`` (or
``model.pt``, a plain state_dict loaded with ``weights_only=True``) and ``recipe.json``
(passes with every option resolved, selections, versions, whether it holds the training
or the frozen form, the name of the weights file and ``weights_digest``). ``load``
rebuilds the module from the original model factory by re-applying the recipe, so nothing
depends on node.meta or generated code surviving a pickle (research/peers.md §0.6).

Replaced whole or not at all: ``save`` writes the new checkpoint into a staging directory
beside the target and swaps it in with one atomic rename (see :mod:`vgpcompile.io.files`),
so the directory is always entirely the old checkpoint or entirely the new one, and no
file of the old one (a ``model.safetensors`` beside a new ``model.pt``) survives. An
existing directory is only replaced if it is empty or a checkpoint; anything else in it is
refused rather than deleted.

Belonging together: ``weights_digest`` is the sha256 of the recipe's other fields and the
weights file's bytes. ``load`` recomputes it before anything else and refuses weights and
a recipe that were not saved together (a half-copied checkpoint, an edited recipe, a
``form`` that does not match the weights).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core import recipe as recipes
from ..core.catalogue import Catalogue
from ..core.report import VgpWarning
from ..errors import LoadError, PassError, UsageError
from . import files

RECIPE = "recipe.json"
WEIGHTS = recipes.WEIGHT_FILES
DIGEST = "weights_digest"


def save(model: nn.Module, path: str | os.PathLike, *, format: str = "safetensors") -> Path:
    """Write ``model``'s weights and recipe into directory ``path``, replacing it whole; return it."""
    recipe = getattr(model, "vgp_recipe", None)
    if recipe is None:
        raise UsageError("save() takes a model returned by vgpcompile() or freeze(): it carries the recipe")
    if format not in WEIGHTS:
        raise UsageError(f"save(format={format!r}): use 'safetensors' or 'pt'")
    target = files.output_path(path, "save(path)", "dir")
    if target.is_symlink():  # replace the directory it points to, keep the link
        target = target.resolve()
    check_replaceable(target, "save(path)")
    stage = files.stage_for(target)
    try:
        weights = stage / WEIGHTS[format]
        _write_weights(model, weights, format)
        full = {**recipe, "weights": weights.name}
        full[DIGEST] = digest(full, weights)
        (stage / RECIPE).write_text(json.dumps(full, indent=2))
        for name in (weights.name, RECIPE):
            files.give_plain_mode(stage / name)
            files.fsync(stage / name)
        files.publish_dir(stage, target)
    finally:
        files.remove(stage)  # the unpublished new checkpoint, or the old one swapped out
    return target


def check_replaceable(target: Path, flag: str) -> None:
    """Refuse to replace a directory that holds anything but a checkpoint: it would be deleted."""
    files.check_replaceable(target, flag, {RECIPE, *WEIGHTS.values()}, "a checkpoint")


def _write_weights(model: nn.Module, file: Path, format: str) -> None:
    if format == "safetensors":
        from safetensors.torch import save_model

        save_model(model, str(file))  # drops duplicates of tied weights; load_model restores them
    else:
        torch.save(model.state_dict(), file)


def digest(recipe: dict[str, Any], weights: Path) -> str:
    """sha256 of the recipe (without this field) and the weights file: binds the two together."""
    h = hashlib.sha256()
    body = {k: v for k, v in recipe.items() if k != DIGEST}
    h.update(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    h.update(b"\0")
    with open(weights, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def check_belongs(recipe: dict[str, Any], weights: Path, file: str) -> None:
    """Refuse weights and a recipe that were not saved together (or warn if the recipe predates digests)."""
    saved = recipe.get(DIGEST)
    if saved is None:
        warnings.warn(
            f"{file} has no {DIGEST!r} (written by an older vgpcompile): cannot check that {weights.name} "
            "belongs to it; save the checkpoint again to add one",
            VgpWarning,
            stacklevel=3,
        )
        return
    if digest(recipe, weights) == saved:
        return
    form = recipe.get("form", "training")
    other = next(f for f in recipes.FORMS if f != form)
    if digest({**recipe, "form": other}, weights) == saved:
        raise LoadError(
            f"{file}: field 'form' says {form!r} but {weights.name} holds the {other!r} form; "
            f"the recipe was edited: set it back to {other!r} or save the checkpoint again"
        )
    raise LoadError(
        f"{file} and {weights.name} do not belong together (weights digest mismatch): one was changed or "
        "copied from another save; write the checkpoint again with vgpcompile.save() or convert"
    )


def check_version(recipe: dict[str, Any], file: str) -> None:
    from .. import __version__

    saved = (recipe.get("versions") or {}).get("vgpcompile")
    if saved is not None and saved != __version__:
        warnings.warn(
            f"{file} was written by vgpcompile {saved}, this is {__version__}: the rebuild is checked "
            "against the saved targets, but pass defaults may differ",
            VgpWarning,
            stacklevel=3,
        )


def read_recipe(path: str | os.PathLike) -> dict[str, Any]:
    file = Path(path) / RECIPE
    if not file.is_file():
        raise LoadError(f"{path}: not a vgpcompile checkpoint (no {RECIPE}); write one with vgpcompile.save()")
    try:
        recipe = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LoadError(f"{file}: corrupt recipe ({err})") from None
    except OSError as err:
        raise LoadError(f"{file}: cannot read ({err.strerror or err})") from None
    return recipes.validate(recipe, str(file))


def load(
    model_or_factory: nn.Module | Callable[[], nn.Module],
    path: str | os.PathLike,
    *,
    catalogue: Catalogue | None = None,
) -> nn.Module:
    """Rebuild a saved model: original model (or factory) -> re-apply the recipe -> load weights.

    Outputs are bitwise equal to the saved model's. Weights and recipe must have been saved
    together (their digest is checked first). The rebuild must rewrite exactly the targets
    the saved model had rewritten (a user activation not registered again, or a changed
    factory, is refused naming the difference). ``catalogue`` is the activation catalogue
    the model was compiled with, when it was not the default one. A recipe written by
    another vgpcompile version loads with a warning.
    """
    from ..api import CompileOptions, compile_with
    from ..core.catalogue import DEFAULT
    from ..core.registry import make_pass
    from ..freeze import freeze

    recipe = read_recipe(path)
    file = str(Path(path) / RECIPE)
    weights = Path(path) / recipe.get("weights", WEIGHTS["safetensors"])
    if not weights.is_file():
        raise LoadError(f"{weights}: no such file (named by field 'weights' of {file})")
    check_belongs(recipe, weights, file)
    check_version(recipe, file)
    missing = recipes.missing_activations(recipe, catalogue or DEFAULT)
    if missing:
        raise LoadError(
            f"{file}: the saved model uses activation(s) {missing}, which are not registered: call "
            "vgpcompile.register_activation(...) for them (or pass catalogue=) before load()"
        )
    model = model_or_factory if isinstance(model_or_factory, nn.Module) else model_or_factory()
    passes = [make_pass(p["name"], p.get("options", {})) for p in recipe["passes"]]  # validated above
    rng = recipe.get("input_range")
    opts = CompileOptions(
        select=recipe.get("select") or None,
        ignore=recipe.get("ignore") or None,
        leaf=recipe.get("leaf") or None,
        eager=recipe.get("eager") or None,
        capture=recipe.get("capture"),  # decisions the saved compile took from its example inputs
        input_range=tuple(rng) if rng else None,
        catalogue=catalogue,
        observed=recipe.get("observed"),
    )
    try:
        compiled = compile_with(model, passes, opts)
    except (UsageError, PassError) as err:  # options that validate alone but do not rebuild (an edited recipe)
        raise LoadError(f"{_rebuild_field(recipe, err, file)}: the recipe does not rebuild the model: {err}") from err
    recipes.check_rebuild(recipe, compiled.vgp_report, file)
    if recipe.get("form") == "frozen":
        compiled = freeze(compiled)
    load_weights(compiled, weights)
    return compiled


def _rebuild_field(recipe: dict[str, Any], err: BaseException, file: str) -> str:
    """``FILE: field 'passes[i].options'`` of the pass a rebuild error names (the runner's
    messages start with ``pass 'NAME'``), else the whole 'passes' field."""
    named = re.match(r"pass '([^']+)'", str(err))
    names = [p["name"] for p in recipe["passes"]]
    if named and named.group(1) in names:
        return f"{file}: field 'passes[{names.index(named.group(1))}].options'"
    return f"{file}: field 'passes'"


def load_weights(model: nn.Module, file: Path) -> None:
    """Load a weights file written by ``save`` into ``model``, strictly."""
    if not file.is_file():
        raise LoadError(f"{file}: no such file")
    if file.suffix != ".safetensors":
        fit_state_dict(model, read_state_dict(file), file)
        return
    from safetensors.torch import load_model

    _check_shapes(model, _safetensors_shapes(file), file)
    try:
        missing, unexpected = load_model(model, str(file), strict=False)
    except Exception as err:
        raise LoadError(f"{file}: cannot read safetensors ({_first_line(err)})") from None
    _check_keys(file, missing, unexpected)


def _safetensors_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as err:
        raise LoadError(f"{file}: cannot read safetensors ({_first_line(err)})") from None


# torch.save writes an uncompressed zip, so a .pt inflates to about its own size; a file whose
# zip directory promises more than this (and more than INFLATE_RATIO times its size) is refused
# before anything is read.
MAX_UNZIPPED_BYTES = 2**30
INFLATE_RATIO = 4


def read_state_dict(
    file: str | os.PathLike, *, allow_pickle: bool = False, max_unzipped_bytes: int | None = None
) -> Any:
    """A state_dict from ``.safetensors`` or ``.pt``/``.pth`` (``weights_only=True``).

    With ``allow_pickle=True`` a ``.pt`` may also hold a whole pickled module, which is
    returned as is: unpickling runs arbitrary code, so only for files you trust. A ``.pt``
    whose zip entries would inflate to more than ``max_unzipped_bytes`` (default: the larger
    of MAX_UNZIPPED_BYTES and INFLATE_RATIO x its size) is refused before it is read.
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
    _check_inflated_size(file, max_unzipped_bytes)
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


def _check_inflated_size(file: Path, limit: int | None) -> None:
    """Sum the sizes the zip directory declares (nothing is inflated); refuse above the limit."""
    if not zipfile.is_zipfile(file):
        return  # a legacy (non-zip) torch file: torch.load reads it as it is
    try:
        with zipfile.ZipFile(file) as archive:
            total = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError) as err:
        raise LoadError(f"{file}: cannot read checkpoint ({_first_line(err)})") from None
    allowed = limit if limit is not None else max(MAX_UNZIPPED_BYTES, INFLATE_RATIO * file.stat().st_size)
    if total > allowed:
        size = file.stat().st_size / 2**20
        raise LoadError(
            f"{file}: its zip entries would inflate to {total / 2**30:.3g} GiB from a {size:.3g} MiB file, over the "
            f"limit of {allowed / 2**30:.3g} GiB (torch.save writes uncompressed files, so this is not one); if you "
            "trust it, raise the limit (--max-unzipped-gb, max_unzipped_bytes=)"
        )


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except Exception as err:
        raise LoadError(f"{file}: cannot read safetensors ({_first_line(err)})") from None


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], file: str | os.PathLike) -> None:
    """``model.load_state_dict(state)``, with a LoadError naming missing/unexpected/mis-shaped keys
    and weights of a kind that a cast would corrupt."""
    _check_shapes(model, {k: tuple(v.shape) for k, v in state.items()}, file)
    _check_dtypes(model, state, file)
    result = model.load_state_dict(state, strict=False)
    _check_keys(file, result.missing_keys, result.unexpected_keys)


def _check_shapes(model: nn.Module, shapes: dict[str, tuple[int, ...]], file: str | os.PathLike) -> None:
    """The first keys whose shapes differ between the model and the weights, model side first."""
    own = model.state_dict()
    wrong = [k for k, shape in shapes.items() if k in own and tuple(own[k].shape) != shape]
    if wrong:
        listed = "; ".join(
            f"{k!r} is {tuple(own[k].shape)} in the model, {shapes[k]} in the weights" for k in wrong[:3]
        )
        more = f" (+{len(wrong) - 3} more)" if len(wrong) > 3 else ""
        raise LoadError(
            f"the model built by the factory does not fit the weights of {Path(file).name}: {listed}{more}; "
            "was the factory (or its arguments) changed since they were saved?"
        )


def _check_dtypes(model: nn.Module, state: dict[str, torch.Tensor], file: str | os.PathLike) -> None:
    """load_state_dict casts silently. Integer values for floating parameters are quantized
    weights (meaningless without their scales) and complex ones lose their imaginary part:
    refused. Half-precision ones load exactly into float32 (a one-line warning says so)."""
    own = model.state_dict()
    pairs = [(k, own[k].dtype, v.dtype) for k, v in state.items() if k in own and own[k].is_floating_point()]
    for key, want, got in pairs:
        if got.is_complex:
            raise LoadError(
                f"{Path(file).name}: {key!r} holds {_dtype(got)} values for a {_dtype(want)} parameter: loading "
                "would drop the imaginary part; convert the weights to real values first"
            )
        if not got.is_floating_point:
            raise LoadError(
                f"{Path(file).name}: {key!r} holds {_dtype(got)} values for a {_dtype(want)} parameter (a quantized "
                "checkpoint?): its values mean nothing without the quantization scales; dequantize to float first"
            )
    lower = sorted({_dtype(got) for _, want, got in pairs if got != want and got.itemsize < want.itemsize})
    if lower:
        warnings.warn(
            f"{Path(file).name} holds {'/'.join(lower)} weights for a model in "
            f"{_dtype(next(w for _, w, g in pairs if g != w))}: loaded as the model's dtype (exact)",
            VgpWarning,
            stacklevel=3,
        )


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _check_keys(file, missing, unexpected) -> None:
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        raise LoadError(f"the weights of {file} do not fit the model built by the factory: " + "; ".join(parts))


def _few(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
