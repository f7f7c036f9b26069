"""Float baselines for the latency benchmark: eager PyTorch, ONNX Runtime FP32 and ONNX Runtime
dynamic int8, each a zero-argument callable on a fixed input (time them with `timing.measure`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic

from .timing import threads as torch_threads

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


def ort_dynamic_int8(path_in: str | Path, path_out: str | Path) -> Path:
    """ONNX Runtime's off-the-shelf dynamic quantization of `path_in` into `path_out`: int8
    (QInt8, per tensor) weights for the weight MatMul/Gemm/Conv layers, their activations
    quantized at run time per tensor. Everything else stays float (LayerNorm, Softmax, GELU,
    residual adds, the activation-by-activation attention MatMuls), so this is an int8 baseline
    with float non-linears, not an integer-only model."""
    path_out = Path(path_out)
    quantize_dynamic(Path(path_in), path_out, weight_type=QuantType.QInt8)
    return path_out


def float_baselines(model: torch.nn.Module, batch: int, threads: int = 2, *,
                    workdir: str | Path) -> dict[str, Callable[[], object]]:
    """Callables "torch_fp32" (eager, inference mode, `threads` torch threads), "ort_fp32" and
    "ort_int8_dynamic" (`threads` intra-op threads) running a timm float `model` on one fixed
    random batch of `batch` images; the ONNX files are written into `workdir`."""
    embed = model.patch_embed
    example = torch.randn(batch, embed.proj.in_channels, *embed.img_size,
                          generator=torch.Generator().manual_seed(0))
    workdir = Path(workdir)
    fp32 = export_float_onnx(model, example, workdir / "model_fp32.onnx")
    int8 = ort_dynamic_int8(fp32, workdir / "model_int8_dynamic.onnx")
    feed = {INPUT_NAME: example.numpy()}

    def run_torch() -> torch.Tensor:
        with torch_threads(threads), torch.inference_mode():
            return model(example)

    def run_ort(session: ort.InferenceSession) -> Callable[[], object]:
        return lambda: session.run(None, feed)

    return {"torch_fp32": run_torch,
            "ort_fp32": run_ort(ort_session(fp32, threads)),
            "ort_int8_dynamic": run_ort(ort_session(int8, threads))}
