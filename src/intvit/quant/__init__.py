"""QAT modules: quantized building blocks over the integer kernels."""

from .calibrate import calibrate, calibration, is_calibrated
from .config import POINTS, BitWidths, QuantConfig
from .modules import (QuantAct, QuantGELU, QuantLayerNorm, QuantLinear, QuantMatMul,
                      QuantModule, QuantPatchConv, QuantSoftmax, set_mode)
from .observer import RangeObserver
from .qtensor import QT, Mode

__all__ = ["calibrate", "calibration", "is_calibrated", "POINTS", "BitWidths", "QuantConfig", "QuantAct", "QuantGELU", "QuantLayerNorm",
           "QuantLinear", "QuantMatMul", "QuantModule", "QuantPatchConv", "QuantSoftmax",
           "set_mode", "RangeObserver", "QT", "Mode"]
