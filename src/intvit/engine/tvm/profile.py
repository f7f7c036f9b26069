"""Where a :class:`.module.TvmModule`'s time goes, by op class: every kernel the Relax
VM calls timed through its instrument hook (``VirtualMachine.set_instrument``, called
before and after each ``Call`` instruction), each named by its class
(``intvit bench --profile`` runs ``python -m intvit.engine.tvm.profile SPEC``,
:func:`worker`, in a fresh process, as it times every engine: PyTorch's idle threads
spin against TVM's pool, see ``benchmarks/README.md``, "Threads").

TVM keeps no trace of the ONNX nodes a fused kernel came from, only the Relax op names
it fused (``fused_add7_divide2_less_...``), the argument tensors, and intvit's own VNNI
kernels' names. :func:`kernel_class` names each kernel by the most specific op it holds,
with these rules, first match wins (op names without their numeric suffix; the
signatures are those of the exporter's spellings, :mod:`intvit.engine.onnx_export`):

| class          | a kernel that holds                                              |
|----------------|------------------------------------------------------------------|
| quantization   | a float32 argument (the input quantization, the dequantized logits) |
| int8 products  | ``matmul``, or is one of intvit's VNNI kernels (``intvit.vnni_matmul.*``, ``intvit_pack_b_*``, ``intvit_colsum_*``: the products, the packing of their right operand, the column sums of the zero point) |
| Softmax        | ``max`` (the row maximum), or ``take``, ``sum`` or ``divide`` on a tensor of 3 or more dims whose last two are equal (attention scores, ``T x T``): the exponential table, the row sum, the normalization |
| LayerNorm      | the integer square root (``greater_equal``: the bit length; ``take`` with ``divide``: the start and the Newton steps), ``floor_mod`` (the mean's rounding division), or ``sum`` (the mean, the variance) |
| GELU           | ``take`` with ``right_shift`` (the GELU table after its requantization), or a look-up alone (``take`` and ``cast`` only) in a one-dimensional table (where TVM fused the requantization into a product it lowered itself: one that the offload does not rewrite) |
| requantization | ``right_shift`` (the floor shift of a dyadic requantization)    |
| data movement  | every other kernel (layout ops, ``take`` of a slice, the residual adds), and the VM's own work |

A kernel is counted whole under its class: the requantizations TVM fuses into the
non-linears' kernels (the LayerNorm and Softmax outputs, the GELU input) count as
LayerNorm, Softmax and GELU, so that ``requantization`` holds those that stand apart
(the products' epilogues, with the layout ops fused to them). The VM's own work (its
builtins ``vm.builtin.*``: allocation, shape checks; the interpreter between calls) is
not timed call by call, where the instrument's few microseconds per call would outweigh
it: it is the median uninstrumented run less the kernels' sum, under ``data movement``.
The instrument adds about 1.5 microseconds to each kernel's time (measured here: a small
ViT's 79 kernels at batch 1 sum to twice its 0.075 ms run, at batch 32 to 1.05 times its
1.0 ms); a deit_small run calls about 400 kernels in some 37 ms.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from ..profile import CLASSES
from .module import TvmModule
from .process import pool_threads

_SUFFIX = re.compile(r"\d+$")
VNNI_PREFIXES = ("intvit.vnni_matmul.", "intvit_pack_b_", "intvit_colsum_")


def kernel_ops(name: str) -> set[str]:
    """The Relax op names a fused kernel's name joins, without their numeric suffixes:
    every ``_``-separated part (``fused_add7_take1`` -> ``{"add", "take"}``) and the op
    names that hold an underscore (``right_shift3`` -> ``right``, ``shift`` and
    ``right_shift``)."""
    ops = set()
    for part in name.removeprefix("fused_").split("_"):
        ops.add(_SUFFIX.sub("", part))
    joined = "_" + name + "_"
    for op in ("greater_equal", "floor_mod", "right_shift"):
        if re.search(rf"_{op}\d*_", joined):
            ops.add(op)
    return ops


def kernel_class(name: str, shapes: Sequence[tuple[int, ...]], dtypes: Sequence[str]) -> str:
    """The op class (one of :data:`intvit.engine.profile.CLASSES`) of a call to the
    kernel ``name`` with argument tensors of these shapes and dtypes; the rules are the
    module docstring's table."""
    if "float32" in dtypes:
        return "quantization"
    ops = kernel_ops(name)
    if name.startswith(VNNI_PREFIXES) or "matmul" in ops:
        return "int8 products"
    scores = any(len(s) >= 3 and s[-1] == s[-2] > 1 for s in shapes)
    if "max" in ops or (scores and ops & {"take", "sum", "divide"}):
        return "Softmax"
    if ("greater_equal" in ops or "floor_mod" in ops or {"take", "divide"} <= ops
            or "sum" in ops):
        return "LayerNorm"
    table = bool(shapes) and len(shapes[0]) == 1 and shapes[0][0] > 1
    if "take" in ops and ("right_shift" in ops or (table and ops <= {"take", "cast"})):
        return "GELU"
    if "right_shift" in ops:
        return "requantization"
    return "data movement"


def _signature(args) -> tuple[list[tuple[int, ...]], list[str]]:
    import tvm
    tensors = [a for a in args if isinstance(a, tvm.runtime.Tensor)]
    return [tuple(int(d) for d in t.shape) for t in tensors], [str(t.dtype) for t in tensors]


def profile_calls(module: TvmModule, images: np.ndarray, repeats: int = 3
                  ) -> tuple[dict[str, tuple[str, int, float]], float]:
    """Per kernel the VM calls: its op class, its calls per run and its milliseconds per
    run, the mean of ``repeats`` instrumented runs of ``module`` on ``images``; and the
    median milliseconds of ``repeats`` uninstrumented runs, each run just before an
    instrumented one (after one warm-up run of each). ValueError when ``module`` compiles
    one executable per input shape (:attr:`TvmModule.dynamic` False)."""
    import tvm
    from tvm import relax
    if not module.dynamic:
        raise ValueError(f"cannot profile a TVM module compiled per input shape "
                         f"({module.fallback_reason})")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    plain = relax.VirtualMachine(module.executable, tvm.cpu())["main"]
    vm = relax.VirtualMachine(module.executable, tvm.cpu())
    x = tvm.runtime.tensor(np.ascontiguousarray(images), tvm.cpu())
    seconds: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    classes: dict[str, str] = {}
    started: list[float] = []

    def instrument(_func, symbol, before, _ret, *args):
        if symbol.startswith("vm.builtin."):
            return 0  # the VM's own work: the rest of an uninstrumented run
        if before:
            if symbol not in classes:
                classes[symbol] = kernel_class(symbol, *_signature(args))
            started.append(time.perf_counter())
        else:
            seconds[symbol] += time.perf_counter() - started.pop()
            calls[symbol] += 1
        return 0  # VMInstrumentReturnKind.NO_OP: run the call

    vm.set_instrument(instrument)
    instrumented = vm["main"]
    runs = []
    with pool_threads(module.threads):
        plain(x)
        instrumented(x)
        seconds.clear()
        calls.clear()
        for _ in range(repeats):
            start = time.perf_counter()
            plain(x)
            runs.append(time.perf_counter() - start)
            instrumented(x)
    kernels = {s: (classes[s], calls[s] // repeats, 1e3 * seconds[s] / repeats)
               for s in seconds}
    return kernels, 1e3 * float(np.median(runs))


def profile_tvm(module: TvmModule, images: np.ndarray, repeats: int = 3) -> dict[str, float]:
    """Milliseconds per op class (every class of :data:`intvit.engine.profile.CLASSES`)
    of one run of ``module`` on ``images``: :func:`profile_calls`' kernels summed by
    class, and the uninstrumented run's time outside them under ``data movement``."""
    kernels, run_ms = profile_calls(module, images, repeats)
    totals = dict.fromkeys(CLASSES, 0.0)
    for cls, _, ms in kernels.values():
        totals[cls] += ms
    totals["data movement"] += max(0.0, run_ms - sum(totals.values()))
    return totals


def worker(spec: dict) -> dict:
    """Build the tvm module of the program of ``spec``
    (:func:`intvit.engine.profile.write_profile_spec`) with ``spec["threads"]`` threads and
    profile it (:func:`profile_tvm`) on the images of each batch:
    ``{"profiles": {batch: {class: ms}}}``, or ``{"fallback": why not}`` when TVM builds
    the program per input shape."""
    import torch

    from ..onnx_export import to_onnx
    from ..profile import read_profile_spec
    torch.set_num_threads(1)  # PyTorch only loads files here; its threads would spin
    program, images = read_profile_spec(spec)
    module = TvmModule(to_onnx(program), threads=spec["threads"])
    if not module.dynamic:
        return {"fallback": f"built per input shape: {module.fallback_reason}"}
    return {"profiles": {b: profile_tvm(module, x.numpy()) for b, x in images.items()}}


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))))
