"""Look-ups a compile does tens of thousands of times: submodules by name, attributes of modules."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def submodule(root: nn.Module, target: str) -> nn.Module:
    """``root.get_submodule(target)``, read from each level's ``_modules`` dict.

    get_submodule asks ``hasattr`` and ``getattr`` per level, both through nn.Module.__getattr__
    (a miss on the instance dict first): about 1.5 us a call against 0.2 here, and a compile of
    a 1000-layer model asks some 40 000 times (site finding, the depth, range inference, the
    graph checks). A name that is not a registered submodule at some level goes to
    get_submodule itself, so errors (and any other attribute it accepts) are its own."""
    module = root
    if target:
        for item in target.split("."):
            found = module._modules.get(item)
            if found is None:
                return root.get_submodule(target)
            module = found
    return module


def attribute(obj: object, name: str, default: Any = None) -> Any:
    """``getattr(obj, name, default)``, answering a miss on a module without nn.Module.__getattr__.

    A compile asks every module for attributes most do not have (``vgp_pass``, ``inplace``):
    on a module, getattr then goes through __getattr__, which builds an AttributeError
    message to be thrown away (about 1.5 us, against 0.5 here). Where neither the class nor
    the instance dict nor the parameter, buffer and submodule dicts __getattr__ reads holds
    ``name``, getattr would return ``default``; anything else, and any class with its own
    __getattr__ or __getattribute__, goes to getattr itself."""
    cls = type(obj)
    if (
        isinstance(obj, nn.Module)
        and cls.__getattr__ is nn.Module.__getattr__
        and cls.__getattribute__ is object.__getattribute__
        and not hasattr(cls, name)
    ):
        own, empty = obj.__dict__, {}
        if (
            name not in own
            and name not in own.get("_parameters", empty)
            and name not in own.get("_buffers", empty)
            and name not in own.get("_modules", empty)
        ):
            return default
    return getattr(obj, name, default)


def set_plain(module: nn.Module, **values: Any) -> None:
    """``setattr(module, name, value)`` for each item, writing plain values to the instance dict.

    Module.__setattr__ checks a plain value (no tensor, no module) against the parameter,
    buffer and submodule dicts before it stores it as object.__setattr__ would: about 1.2 us
    an attribute, and the passes build one module per site with four to ten of them (a 1000-site
    compile sets some 10 000). A tensor, a module, a name one of those dicts holds, and any
    class with its own __setattr__ go to setattr itself (its registration or its error)."""
    own = type(module).__setattr__ is nn.Module.__setattr__
    taken = module._parameters.keys() | module._buffers.keys() | module._modules.keys()
    for name, value in values.items():
        if own and name not in taken and not isinstance(value, (torch.Tensor, nn.Module)):
            object.__setattr__(module, name, value)
        else:
            setattr(module, name, value)
