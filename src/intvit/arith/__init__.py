"""Integer primitives: pure functions on int64 torch tensors (no nn.Module here).

See docs/arithmetic.md for the math of each; every function's docstring states it too.
"""

from .dyadic import MANTISSA_BITS, dyadic, dyadic_value, mantissa_bits_for, requantize
from .isqrt import bit_length, isqrt, newton_steps
from .matmul import accumulator_bits, int_matmul
from .poly import horner, horner_bits
from .rounding import (floor_div, floor_shift, quantize, round_div, round_half_even,
                       round_half_up, round_shift)
from .saturate import qrange, saturate
from .width import (IntegerOverflowError, WidthLog, declare, overflow_checks,
                    record_widths, signed_bits)

__all__ = [
    "MANTISSA_BITS", "dyadic", "mantissa_bits_for", "dyadic_value", "requantize", "bit_length", "isqrt", "newton_steps", "accumulator_bits", "int_matmul",
    "horner", "horner_bits", "floor_div", "floor_shift", "quantize", "round_div", "round_half_even",
    "round_half_up", "round_shift",
    "qrange", "saturate", "IntegerOverflowError", "WidthLog", "declare",
    "overflow_checks", "record_widths", "signed_bits",
]
