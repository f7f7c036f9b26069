"""The integer-only inference engine: export a quantized model to an integer program
and run it bit-exactly with PyTorch, ONNX Runtime or TVM."""

from .export import export_program
from .program import IntProgram, Node, ProgramError

__all__ = ["export_program", "IntProgram", "Node", "ProgramError"]
