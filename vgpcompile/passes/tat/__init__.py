"""The ``tat`` pass (Deep Kernel Shaping / Tailored Activation Transformation): the kernel
structure derived from the traced graph, the constants from the ``dks`` package (extra
``tat``), the transformed activation and its lowering."""

from .constants import Constants
from .kernel import Refusal, Structure, derive
from .modules import TATActivation
from .rewrite import TAT, format_constants, init_layer, parse_constants, subnet_max_function

__all__ = [
    "TAT",
    "Constants",
    "Refusal",
    "Structure",
    "TATActivation",
    "derive",
    "format_constants",
    "init_layer",
    "parse_constants",
    "subnet_max_function",
]
