"""The non-linear approximations: GELU, Softmax, LayerNorm and exp, by name.

>>> from intvit.approx import build
>>> kernel = build("gelu", "ivit_n_20").prepare(in_scale=0.05, in_bits=8, out_bits=8)
>>> q_out = kernel(q_in)            # int64 in, int64 out, integer ops only

Importing this package registers every family (float, ivit, ibert, ppoly).
"""

from . import floating, ibert, ivit, ppoly  # noqa: F401  (registration)
from .base import Approx, Cost, Kernel, Param
from .ops import OPS, OpSpec
from .registry import REGISTRY, UnknownApproximation, build, describe, families, parse_name

__all__ = ["Approx", "Cost", "Kernel", "Param", "OPS", "OpSpec", "REGISTRY",
           "UnknownApproximation", "build", "describe", "families", "parse_name"]
