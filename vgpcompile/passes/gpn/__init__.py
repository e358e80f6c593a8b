"""The ``gpn`` pass (BSNN's Gaussian-Poincare normalization): the rewrite, the inserted
module, its constants and its lowering."""

from .constants import gaussian_moments, gpn_constants, gpn_from_moments
from .modules import GPNActivation
from .rewrite import GPN

__all__ = ["GPN", "GPNActivation", "gaussian_moments", "gpn_constants", "gpn_from_moments"]
