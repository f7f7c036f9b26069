"""QAT modules: quantized building blocks over the integer kernels."""

from .calibrate import calibrate, calibration, is_calibrated
from .config import POINTS, BitWidths, QuantConfig
from .modules import QuantAct, QuantLinear, QuantMatMul, QuantModule, QuantPatchConv, set_mode
from .nonlinear import KernelModule, QuantGELU, QuantLayerNorm, QuantSoftmax
from .observer import RangeObserver
from .qtensor import QT, Mode

__all__ = ["calibrate", "calibration", "is_calibrated", "POINTS", "BitWidths", "QuantConfig", "QuantAct", "KernelModule", "QuantGELU", "QuantLayerNorm",
           "QuantLinear", "QuantMatMul", "QuantModule", "QuantPatchConv", "QuantSoftmax",
           "set_mode", "RangeObserver", "QT", "Mode"]
