"""The ``arp`` pass (auto-rotating perceptrons): the rewrite, the rotated layers it inserts
(usable by hand), its constants, its range inference and its lowering."""

from .constants import DEFAULT_L, EPS, L_BY_ACTIVATION, default_L
from .modules import (
    ROTATED_FUNCTIONS,
    ROTATED_MODULES,
    AutoRotConv1d,
    AutoRotConv2d,
    AutoRotConv3d,
    AutoRotConvTranspose1d,
    AutoRotConvTranspose2d,
    AutoRotConvTranspose3d,
    AutoRotLinear,
    arp_conv1d,
    arp_conv2d,
    arp_conv3d,
    arp_conv_transpose1d,
    arp_conv_transpose2d,
    arp_conv_transpose3d,
    arp_linear,
    pivot_q,
    rotate_parameters,
    rotation,
)
from .recurrent import ROTATED_RECURRENT, AutoRotGRU, AutoRotLSTM, AutoRotRNN
from .rewrite import ARP

__all__ = [
    "ARP",
    "DEFAULT_L",
    "EPS",
    "L_BY_ACTIVATION",
    "ROTATED_FUNCTIONS",
    "ROTATED_MODULES",
    "ROTATED_RECURRENT",
    "AutoRotConv1d",
    "AutoRotConv2d",
    "AutoRotConv3d",
    "AutoRotConvTranspose1d",
    "AutoRotConvTranspose2d",
    "AutoRotConvTranspose3d",
    "AutoRotGRU",
    "AutoRotLSTM",
    "AutoRotLinear",
    "AutoRotRNN",
    "arp_conv1d",
    "arp_conv2d",
    "arp_conv3d",
    "arp_conv_transpose1d",
    "arp_conv_transpose2d",
    "arp_conv_transpose3d",
    "arp_linear",
    "default_L",
    "pivot_q",
    "rotate_parameters",
    "rotation",
]
