"""An integer ONNX graph compiled by TVM (Relax) for this CPU, called with numpy arrays.

Building (:class:`TvmModule`): ``tvm.relax.frontend.onnx.from_onnx`` imports the graph
(initializers become constants; named dims such as ``"batch"`` become symbolic shape
variables, so one executable serves every batch size);
:func:`.offload.offload_matmul_integer` rewrites the ``MatMulInteger`` products into its
blocked kernels (tensorized to ``vpdpbusd`` on a target with AVX-512 VNNI); with
``schedule`` (the default) :func:`.pipeline.fold_stacked_min_max` runs before and
:func:`.pipeline.cpu_pipeline` schedules the fused kernels for several threads; then
``tvm.compile`` for an LLVM target of this host (:func:`.target.host_target`), run by
the Relax VM.

Contract:

* Outputs equal ONNX Runtime's bit for bit for the ops the integer exporter emits
  (int32/int64 Add/Sub/Mul, truncating integer Div, floor Mod (``fmod=0``),
  Clip/Max/Min, Gather, ReduceMax/ReduceSum, Where, comparisons, the layout ops and the
  float32 quantize/dequantize ends), with and without the CPU schedules
  (``tests/test_tvm_backend.py``). TVM's Gather does not check bounds: out-of-range
  indices read out of bounds where ONNX Runtime raises.
* When TVM cannot import or compile a graph with symbolic dims (its ONNX frontend
  rejects e.g. ``Reshape`` to a runtime-computed tensor shape, or ``Expand`` of a
  symbolic-batch tensor to a constant shape), the module compiles one executable per
  input shape on first use and caches it by shape (:attr:`TvmModule.dynamic` is then
  False, :attr:`TvmModule.fallback_reason` says why); each new shape pays a compile.
* TVM's CPU thread pool is process-wide and sized once, at its first parallel launch,
  from ``TVM_NUM_THREADS``; each call sets that variable to ``threads`` while it runs
  (:func:`.process.pool_threads`), so in a process running several modules the first
  run's thread count wins.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper as onnx_helper

from .offload import offload_matmul_integer
from .pipeline import cpu_pipeline, fold_stacked_min_max
from .process import native_stderr_without, pool_threads
from .target import has_vnni, host_target, import_tvm


def _elem_dtype(value_info: onnx.ValueInfoProto) -> np.dtype:
    return np.dtype(onnx_helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type))


def _dims(value_info: onnx.ValueInfoProto) -> list[int | None]:
    """Fixed dims as ints, symbolic (named or unknown) dims as None."""
    return [d.dim_value if d.HasField("dim_value") else None
            for d in value_info.type.tensor_type.shape.dim]


class TvmModule:
    """An ONNX model compiled by TVM for this CPU; call it with numpy arrays.

    ``TvmModule(model)(images)`` returns the graph outputs as numpy arrays in the graph's
    output order. ``threads`` sizes TVM's (process-wide) thread pool and the target's
    ``num-cores``; ``target`` is a TVM target (string or dict) overriding
    :func:`host_target`. Raises ``ImportError`` (naming ``pip install intvit[tvm]``) when
    TVM is missing and ``RuntimeError`` when TVM cannot compile the graph.
    """

    def __init__(self, model: onnx.ModelProto, threads: int = 2,
                 target: str | dict | None = None, schedule: bool = True) -> None:
        tvm = import_tvm()
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.model = model
        self.threads = int(threads)
        self.schedule = bool(schedule)
        self.target = tvm.target.Target(target if target is not None else host_target(threads))
        initializers = {t.name for t in model.graph.initializer}
        self.inputs = [v for v in model.graph.input if v.name not in initializers]
        self.input_names = [v.name for v in self.inputs]
        self.output_names = [v.name for v in model.graph.output]
        self._dtypes = [_elem_dtype(v) for v in self.inputs]
        self._dims = [_dims(v) for v in self.inputs]
        self._out_dtypes = [_elem_dtype(v) if v.type.tensor_type.elem_type else None
                            for v in model.graph.output]
        self._device = tvm.cpu()
        self._lock = threading.Lock()
        self._per_shape: dict[tuple[tuple[int, ...], ...], Any] = {}
        self.compile_seconds = 0.0
        self.offloaded_matmuls = 0
        self.fallback_reason: str | None = None
        self._main = None  # the VM's "main" when one executable serves every shape
        symbolic = any(d is None for dims in self._dims for d in dims)
        try:
            self._main = self._build(None)
        except Exception as exc:
            if not symbolic:
                raise RuntimeError(f"TVM could not compile the ONNX model: {exc}") from exc
            # A shape pattern TVM's frontend cannot keep symbolic: compile per shape.
            self.fallback_reason = f"{type(exc).__name__}: {exc}".splitlines()[0]

    @property
    def dynamic(self) -> bool:
        """True when one executable serves every input shape; False when this module
        compiles (and caches) one executable per input shape."""
        return self._main is not None

    def _build(self, shapes: Sequence[tuple[int, ...]] | None):
        with native_stderr_without():
            return self._build_quietly(shapes)

    def _build_quietly(self, shapes: Sequence[tuple[int, ...]] | None):
        import tvm
        from tvm import relax
        from tvm.relax.frontend.onnx import from_onnx
        start = time.perf_counter()
        shape_dict = None if shapes is None else {
            name: list(shape) for name, shape in zip(self.input_names, shapes)}
        dtype_dict = {name: str(dt) for name, dt in zip(self.input_names, self._dtypes)}
        mod = from_onnx(self.model, shape_dict=shape_dict, dtype_dict=dtype_dict,
                        keep_params_in_input=False)
        # every target takes the blocked, threaded matmul kernels: their tiles are
        # vpdpbusd with VNNI, plain int32 loops elsewhere, which TVM's own lowering of
        # MatMulInteger (a single-threaded triple loop) is 10x slower than (deit_tiny on an
        # AVX2 host: 604 against 60 ms)
        mod, count = offload_matmul_integer(mod, self.target, tensorize=has_vnni(self.target))
        if self.schedule:
            mod, _ = fold_stacked_min_max(mod)
        # tvm.compile's "default" Relax pipeline for CPU targets skips FoldConstant and
        # operator fusion; the CPU backend's own pipeline has both.
        executable = tvm.compile(mod, target=self.target,
                                 relax_pipeline=cpu_pipeline(self.target, self.schedule))
        self.executable = executable  # the last one built (e.g. to profile its kernels)
        main = relax.VirtualMachine(executable, self._device)["main"]
        self.compile_seconds += time.perf_counter() - start
        self.offloaded_matmuls = count
        return main

    def _check(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(inputs) != len(self.inputs):
            raise ValueError(f"expected {len(self.inputs)} input(s) {self.input_names}, "
                             f"got {len(inputs)}")
        arrays = []
        for name, dtype, dims, x in zip(self.input_names, self._dtypes, self._dims, inputs):
            x = np.asarray(x)
            if x.dtype != dtype:
                raise TypeError(f"input {name!r} must be {dtype}, got {x.dtype}")
            if x.ndim != len(dims) or any(d is not None and d != s
                                          for d, s in zip(dims, x.shape)):
                want = tuple(d if d is not None else "?" for d in dims)
                raise ValueError(f"input {name!r} must have shape {want}, got {x.shape}")
            arrays.append(np.ascontiguousarray(x))
        return arrays

    def _main_for(self, arrays: Sequence[np.ndarray]):
        if self._main is not None:
            return self._main
        key = tuple(x.shape for x in arrays)
        with self._lock:
            if key not in self._per_shape:
                try:
                    self._per_shape[key] = self._build(key)
                except Exception as exc:
                    raise RuntimeError(f"TVM could not compile the ONNX model for input "
                                       f"shapes {key}: {exc}") from exc
            return self._per_shape[key]

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """Run on numpy inputs (graph input order, exact dtypes); the outputs in graph
        output order."""
        import tvm
        arrays = self._check(inputs)
        main = self._main_for(arrays)
        with pool_threads(self.threads):
            result = main(*[tvm.runtime.tensor(x, self._device) for x in arrays])
        values = [result] if isinstance(result, tvm.runtime.Tensor) else list(result)
        outputs = []
        for value, dtype in zip(values, self._out_dtypes):
            if isinstance(value, tvm.runtime.Tensor):
                array = value.numpy()
            else:  # a shape or scalar the frontend kept symbolic
                array = np.asarray(list(value) if hasattr(value, "__len__") else value)
            outputs.append(array.astype(dtype, copy=False) if dtype is not None else array)
        return outputs
