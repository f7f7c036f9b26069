"""Float baselines for the latency benchmark: a timm model exported to ONNX (FP32), ONNX
Runtime's dynamic int8 quantization of it, and ONNX Runtime sessions to run both."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic


INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_float_onnx(model: torch.nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Export `model` (switched to eval mode) to a single ONNX file at `path` with the
    torch.export-based exporter (needs `onnxscript`); the batch axis of input and output is
    dynamic, so one file serves every batch size."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model.eval(), (example,), path, dynamo=True, external_data=False,
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    return path


def ort_session(path: str | Path, threads: int = 2) -> ort.InferenceSession:
    """A CPU ONNX Runtime session on `path`: `threads` intra-op threads, one inter-op thread,
    all graph optimizations."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class _DropPreprocessingAdvice(logging.Filter):
    """ONNX Runtime's quantizer logs "Please consider to run pre-processing before
    quantization" through the root logger for every model; the baseline quantizes the
    exporter's graph as it is, on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextmanager
def _without_preprocessing_advice():
    root, advice = logging.getLogger(), _DropPreprocessingAdvice()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def ort_dynamic_int8(path_in: str | Path, path_out: str | Path) -> Path:
    """ONNX Runtime's off-the-shelf dynamic quantization of `path_in` into `path_out`: int8
    (QInt8, per tensor) weights for the weight MatMul/Gemm/Conv layers, their activations
    quantized at run time per tensor. Everything else stays float (LayerNorm, Softmax, GELU,
    residual adds, the activation-by-activation attention MatMuls), so this is an int8 baseline
    with float non-linears, not an integer-only model."""
    path_out = Path(path_out)
    with _without_preprocessing_advice():
        quantize_dynamic(Path(path_in), path_out, weight_type=QuantType.QInt8)
    return path_out
