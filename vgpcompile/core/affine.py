"""Affine layers: torch's own, and those of other libraries declared with their weight layout.

torch's Linear and Conv layers are known. A library's own affine layer (``transformers``'
``Conv1D``, which stores its weight as (in, out) and computes ``x @ W + b``) is declared
once with :func:`register_affine`, naming its weight attribute and layout, so that sites
see it as the producer of an activation's input and layer passes (``orthogonal``) find
it. ``transformers.pytorch_utils.Conv1D`` is declared out of the box, by name, so
vgpcompile never imports transformers itself.

``isinstance(module, DeclaredAffine)`` is true for a module of a declared class (or a
subclass); passes list ``DeclaredAffine`` in their ``layer_types`` to match them.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import UsageError

TORCH_AFFINE: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
LAYOUTS = ("out_in", "in_out")


@dataclass(frozen=True)
class AffineSpec:
    """How a declared affine layer holds its parameters.

    ``layout``: "out_in" when the weight is (out_features, in_features), as nn.Linear's;
    "in_out" when it is stored transposed, (in_features, out_features), as Conv1D's.
    """

    weight: str = "weight"
    layout: str = "out_in"
    bias: str | None = "bias"


_BY_CLASS: dict[type, AffineSpec] = {}
_BY_NAME: dict[str, AffineSpec] = {
    "transformers.pytorch_utils.Conv1D": AffineSpec(layout="in_out"),
}


def register_affine(
    cls: type[nn.Module] | str, *, layout: str = "out_in", weight: str = "weight", bias: str | None = "bias"
) -> AffineSpec:
    """Declare ``cls`` (a class, or its qualified name ``"package.module.Class"``) an affine
    layer computing ``x @ W.T + b`` ("out_in") or ``x @ W + b`` ("in_out") on its last dim."""
    if layout not in LAYOUTS:
        raise UsageError(f"register_affine(layout={layout!r}): use one of {list(LAYOUTS)}")
    spec = AffineSpec(weight, layout, bias)
    if isinstance(cls, str):
        _BY_NAME[cls] = spec
    elif isinstance(cls, type) and issubclass(cls, nn.Module):
        _BY_CLASS[cls] = spec
    else:
        raise UsageError(f"register_affine() takes an nn.Module class or its qualified name, got {cls!r}")
    return spec


def declared(module: object) -> AffineSpec | None:
    """The spec of a module of a declared affine class (or subclass), else None."""
    for cls in type(module).__mro__:
        spec = _BY_CLASS.get(cls) or _BY_NAME.get(f"{cls.__module__}.{cls.__qualname__}")
        if spec is not None:
            return spec
    return None


def is_affine(module: object) -> bool:
    return isinstance(module, TORCH_AFFINE) or declared(module) is not None


class _DeclaredMeta(type):
    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, nn.Module) and declared(obj) is not None


class DeclaredAffine(metaclass=_DeclaredMeta):
    """``isinstance(m, DeclaredAffine)``: ``m`` is an affine layer declared with register_affine."""
