"""Compile an integer ONNX graph with Apache TVM (0.27, Relax) for this CPU and run it.

What the TVM path does
----------------------
1. **Import**: ``tvm.relax.frontend.onnx.from_onnx`` turns the ``onnx.ModelProto`` into a
   Relax module (initializers become constants). Inputs whose dims are named (``"batch"``)
   become symbolic Relax shape variables, so one compiled module serves every batch size.
2. **MatMulInteger offload** (when the target CPU has AVX-512 VNNI): the importer turns
   ``MatMulInteger(a, b, za, zb)`` into ``matmul(astype(a, i32) - za, astype(b, i32) - zb)``,
   which TVM lowers to an unscheduled, single-threaded int32 triple loop (5.8 ms for
   197x192 @ 192x576; ONNX Runtime: 0.05 ms). :func:`offload_matmul_integer` finds that
   pattern in the spellings the exporter writes (int8 x int8 for signed activations,
   uint8 x uint8 with ``zb = 128`` for softmax probabilities) and in uint8 x int8 with a
   constant scalar ``za``, with static K and N and ``b`` either 2-D or batched like ``a``.
   It first brings the operands to the kernel's u8 x s8 form, exactly: a signed ``a``
   becomes ``a + 128`` (uint8) with ``za = 128``, an unsigned ``b`` becomes ``b - 128``
   (int8; for constant weights in numpy at compile time). Then it calls a
   hand-scheduled TIR kernel tensorized with ``vpdpbusd`` (u8 x s8 summed in groups of 4
   into i32, no saturation): ``a @ b - zp * colsum(b)``, which equals ``(a - zp) @ b`` in
   wrapping int32. ``b`` is packed into 16x4 tiles (zero padded to K % 4 == 0 and
   N % 16 == 0) with its column sums: in numpy at compile time for constant weights, by
   two small TIR functions at run time for activation-by-activation products (attention).
   When K % 4 != 0 the zero-padding copy of ``a`` is loop-partitioned at K, so its main
   loop is a branch-free copy (the probabilities @ values product, K = 197: 3-5x faster).
   The kernel is compiled as its own module and called from Relax through
   ``call_dps_packed`` (see :func:`_vnni_matmul_global` for why). Anything it does not
   recognise stays on TVM's generic lowering: slow, still exact.
3. **CPU schedules** (``TvmModule(schedule=True)``, the default): TVM's CPU pipeline leaves
   every fused elementwise/reduction kernel unscheduled: one loop nest *per op*, each
   writing a full intermediate buffer, on one core (that was ~60% of the time at batch 1).
   Three cheap, exact rewrites fix that:

   * :func:`fold_stacked_min_max` (Relax, before legalization): the importer spells a
     two-input ``Max``/``Min`` as a reduction over a ``stack``; it becomes
     ``maximum``/``minimum``, so fusion no longer stops there (the unrolled Newton steps of
     the integer square root: 425 kernel launches per image -> fused into the LayerNorm).
   * :func:`mark_gathers_injective` (before ``FuseOps``): table lookups (``take``, from
     ``Gather``) are marked injective instead of opaque, so they fuse with their
     elementwise neighbours.
   * :func:`schedule_cpu_kernels` (after ``FuseTIR``): per PrimFunc, inline producers into
     consumers unless that copies more than :data:`MAX_INLINE_GROWTH` expression nodes
     (values read several times, as in the Newton chain, would otherwise grow
     exponentially), then fuse the leading spatial loops of each remaining block and mark
     them ``parallel`` (reductions: over the rows; the innermost loop stays serial for
     LLVM's vectorizer, which emits AVX-512) when the nest has at least
     :data:`MIN_PARALLEL_WORK` iterations at batch 1. Only loop structure changes and
     producers are substituted into consumers, so every value is the same expression
     evaluated in the same order. ``tvm.s_tir.dlight`` has no CPU rule for plain
     elementwise kernels (only ``GEMV`` and a softmax-like ``Reduction``).

   DeiT-Tiny: 1107 kernel launches per image -> 409.
4. **Build**: ``tvm.compile`` with the CPU backend's Relax pipeline (library dispatch,
   legalize, FoldConstant, operator fusion, then the passes above, see
   :func:`cpu_pipeline`; ``tvm.compile``'s own "default" for CPU targets does neither
   folding nor fusion) for an LLVM target of this host (``mcpu`` from LLVM's host detection,
   e.g. ``znver5``, ``num-cores = threads``), run by the Relax VM.

Numbers on this 2-core AVX-512 VNNI EPYC (TVM_NUM_THREADS=2; a shared machine, so
ratios within one run): a 53-node test graph compiles in ~1.5 s (plus ~2 s to import TVM),
the full integer DeiT-Tiny graph (~3200 nodes, 74 MatMulIntegers) in ~15 s. DeiT-Tiny,
one 224x224 image: ~4.4 ms on a quiet machine (unscheduled: ~17 ms; PyTorch FP32 eager
timm ~16.6 ms); batch 8: ~36 ms (unscheduled ~210 ms; PyTorch FP32 ~104-113 ms). At batch 1
about 45% of the time is the VNNI matmuls, 30% the elementwise/LUT kernels (int64
arithmetic: 8 lanes per vector), 8% packing the attention operands.

Threads and PyTorch in one process
----------------------------------
TVM's pool (``TVM_NUM_THREADS`` workers, the calling thread being one) pins its workers
to cores (``TVM_BIND_THREADS``, default on) and spins ``TVM_THREAD_POOL_SPIN_COUNT``
iterations before sleeping; PyTorch's OpenMP threads spin too. On 2 cores a spinning pool
slows the other one down, and any other busy process does the same: with one core taken
by another job, this module went from 4.4 to 7-9 ms and PyTorch FP32 eager from 17 ms to
0.7-1.4 s (its OpenMP barriers spin against the lost core); OMP_WAIT_POLICY=PASSIVE was
reported to take TVM (unscheduled) from 25 to 19 ms. A caller that runs both in one
process should run them one after the other (never from concurrent threads) and set
``OMP_WAIT_POLICY=PASSIVE`` before importing torch so that PyTorch's idle threads sleep;
on a machine shared with other jobs ``TVM_BIND_THREADS=0`` lets the OS move TVM's worker
off a busy core (neither setting is measured in a controlled way yet). Benchmarks should
time TVM and PyTorch in alternation and keep the fastest of several rounds.

Limits
------
* Bit-exactness against ONNX Runtime is tested (``tests/test_tvm_backend.py``) for the ops
  the integer exporter emits: int32/int64 Add/Sub/Mul, truncating integer Div, floor Mod
  (``fmod=0``), Clip/Max/Min, Gather, ReduceMax/ReduceSum, Where, comparisons, the layout
  ops and the float32 quantize/dequantize ends, with and without the CPU schedules.
  TVM's Gather does not check bounds: out-of-range indices read out of bounds where ONNX
  Runtime raises.
* When TVM cannot import or compile a graph with symbolic dims (its ONNX frontend rejects
  e.g. ``Reshape`` to a runtime-computed tensor shape, or ``Expand`` of a symbolic-batch
  tensor to a constant shape), the module compiles one executable per input shape on
  first use and caches it by shape (:attr:`TvmModule.dynamic` is then False,
  :attr:`TvmModule.fallback_reason` says why); each new shape pays a compile.
* TVM's CPU thread pool is process-wide and sized once, at its first parallel launch, from
  ``TVM_NUM_THREADS``; each call sets that variable to ``threads`` while it runs (and
  restores it after), so in a process running several modules the first run's thread
  count wins.
* The parallel/serial decision uses extents at batch 1 (symbolic dims count as 1): small
  kernels stay serial at every batch size. Kernels are parallel over rows with static
  chunks; a tensor with fewer rows than threads uses fewer threads.

Requires ``pip install intvit[tvm]`` (``apache-tvm==0.27.0``, ``apache-tvm-ffi==0.1.14.post0``;
``apache-tvm-ffi`` 0.1.15 crashes TVM 0.27).
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import onnx
from onnx import helper as onnx_helper

INSTALL_HINT = ("pip install intvit[tvm]  (pins apache-tvm==0.27.0 and "
                "apache-tvm-ffi==0.1.14.post0)")
VNNI_INTRIN = "intvit_vnni_u8s8i32_16x4"
_ROW_TILE = 4  # rows of `a` per register tile of the VNNI matmul

_intrin_lock = threading.Lock()
_intrin_registered = False


NOISE = ("Fast mode segfaults when there are out-of-bounds indices",)


@contextmanager
def pool_threads(threads: int) -> Iterator[None]:
    """``TVM_NUM_THREADS=threads`` for the duration of a call only: TVM sizes its
    process-wide pool from it at the first parallel launch, and the process environment
    (which other libraries and child processes read) is left as it was."""
    old = os.environ.get("TVM_NUM_THREADS")
    os.environ["TVM_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        if old is None:
            del os.environ["TVM_NUM_THREADS"]
        else:
            os.environ["TVM_NUM_THREADS"] = old


@contextmanager
def native_stderr_without(noise: Sequence[str] = NOISE) -> Iterator[None]:
    """Run a block with file descriptor 2 captured, then write back to ``sys.stderr``
    every line that holds none of ``noise``. TVM's C++ code logs straight to the
    descriptor: one "Fast mode segfaults when there are out-of-bounds indices" warning per
    table lookup of a build (``take`` in its fast mode; the exporter's indices are clipped
    into range), about 30 lines per model."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            sys.stderr.write("".join(line for line in text.splitlines(keepends=True)
                                     if not any(n in line for n in noise)))


def tvm_available() -> bool:
    """Whether TVM with its Relax ONNX frontend can be imported."""
    try:
        _import_tvm()
    except ImportError:
        return False
    return True


def _import_tvm():
    try:
        import tvm
        from tvm import relax  # noqa: F401
        from tvm.relax.frontend.onnx import from_onnx  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising anything else
        raise ImportError(f"the TVM backend needs Apache TVM 0.27: {INSTALL_HINT} ({exc})"
                          ) from exc
    return tvm


def host_target(threads: int = 2) -> dict[str, Any]:
    """The LLVM target of this CPU as a TVM target dict: ``mcpu`` is LLVM's host CPU name
    (``znver5`` on an AVX-512 Zen 5) when LLVM knows it, otherwise plain ``llvm``."""
    tvm = _import_tvm()
    target: dict[str, Any] = {"kind": "llvm", "num-cores": int(threads)}
    try:
        codegen = tvm.target.codegen
        cpu = str(codegen.llvm_get_system_cpu())
        if cpu and cpu != "generic" and codegen.llvm_is_valid_cpu(
                cpu, str(codegen.llvm_get_system_triple())):
            target["mcpu"] = cpu
    except Exception:  # pragma: no cover - LLVM without host detection
        pass
    return target


def _has_vnni(target) -> bool:
    tvm = _import_tvm()
    try:
        return bool(tvm.target.codegen.llvm_cpu_has_features(["avx512vnni"], target))
    except Exception:  # pragma: no cover
        return False


# --------------------------------------------------------------------------------------
# VNNI MatMulInteger kernels
# --------------------------------------------------------------------------------------

def _register_vnni_intrin() -> None:
    """Register the 16x4 u8 x s8 -> i32 ``vpdpbusd`` tensor intrinsic. TVM ships one
    (``dot_16x4_vnni``), but it passes ``<16 x i32>`` operands while the bundled LLVM's
    ``llvm.x86.avx512.vpdpbusd.512`` takes ``<64 x i8>``, so LLVM's verifier rejects it."""
    global _intrin_registered
    with _intrin_lock:
        if _intrin_registered:
            return
        from tvm.s_tir import TensorIntrin
        from tvm.script import tirx as T

        # (Importing tvm.s_tir.tensor_intrin for TVM's own description costs ~19 s: it
        # registers every target's intrinsics.)
        @T.prim_func(s_tir=True)
        def desc(a: T.Buffer((4,), "uint8", offset_factor=1),
                 b: T.Buffer((16, 4), "int8", offset_factor=1),
                 c: T.Buffer((16,), "int32", offset_factor=1)) -> None:
            with T.sblock("root"):
                T.reads(c[0:16], a[0:4], b[0:16, 0:4])
                T.writes(c[0:16])
                for i in T.serial(0, 16):
                    for k in T.serial(0, 4):
                        with T.sblock("update"):
                            vi, vk = T.axis.remap("SR", [i, k])
                            c[vi] = c[vi] + T.cast(a[vk], "int32") * T.cast(b[vi, vk], "int32")

        @T.prim_func(s_tir=True)
        def impl(a: T.Buffer((4,), "uint8", offset_factor=1),
                 b: T.Buffer((16, 4), "int8", offset_factor=1),
                 c: T.Buffer((16,), "int32", offset_factor=1)) -> None:
            with T.sblock("root"):
                T.reads(c[0:16], a[0:4], b[0:16, 0:4])
                T.writes(c[0:16])
                # One expression: TVMScript turns named temporaries into local buffers.
                c[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                    c.vload([0], dtype="int32x16"),
                    T.reinterpret(T.broadcast(T.reinterpret(a.vload([0], "uint8x4"),
                                                            dtype="int32"), 16),
                                  dtype="int8x64"),
                    b.vload([0, 0], dtype="int8x64"),
                    dtype="int32x16")

        try:
            TensorIntrin.register(VNNI_INTRIN, desc, impl)
        except Exception:  # already registered (e.g. the module was reloaded)
            pass
        _intrin_registered = True


def _pack_b_func(k: int, n: int):
    """PrimFunc ``b[batch, K, N] int8 -> packed[batch, Np/16, Kp/4, 16, 4]`` (zero padded)."""
    from tvm import te, tirx
    kp, np_ = -(-k // 4) * 4, -(-n // 16) * 16
    batch = te.var("batch", "int64")
    b = te.placeholder((batch, k, n), "int8", name="b")

    def packed(t, no, ko, ni, ki):
        kk, nn = ko * 4 + ki, no * 16 + ni
        return tirx.if_then_else(tirx.all(kk < k, nn < n), b[t, kk, nn], tirx.const(0, "int8"))

    out = te.compute((batch, np_ // 16, kp // 4, 16, 4), packed, name="packed")
    return te.create_prim_func([b, out]).with_attr("op_pattern", 8)


def _colsum_func(k: int, n: int, zero_point: int):
    """PrimFunc ``b[batch, K, N] int8 -> zero_point * sum_k b[batch, k, :]`` as int32."""
    from tvm import te
    batch = te.var("batch", "int64")
    b = te.placeholder((batch, k, n), "int8", name="b")
    r = te.reduce_axis((0, k), name="k")
    out = te.compute((batch, n), lambda t, j: te.sum(b[t, r, j].astype("int32"), axis=r),
                     name="colsum")
    scaled = te.compute((batch, n), lambda t, j: out[t, j] * zero_point, name="correction")
    return te.create_prim_func([b, scaled]).with_attr("op_pattern", 8)


def _vnni_matmul_func(k: int, n: int, shared_b: bool, tensorize: bool = True):
    """Scheduled PrimFunc ``a[batch, M, K] u8, packed b, correction -> out[batch, M, N] i32``
    with ``out = a @ b - correction``; ``shared_b``: one ``b`` for every batch entry.
    ``tensorize=False`` keeps the 16x4 tile as a plain int32 loop (no ``vpdpbusd``): the
    same values on any CPU."""
    from tvm import s_tir, te, tirx
    if tensorize:
        _register_vnni_intrin()
    kp, np_ = -(-k // 4) * 4, -(-n // 16) * 16
    batch, m = te.var("batch", "int64"), te.var("m", "int64")
    b_batch = 1 if shared_b else batch
    a = te.placeholder((batch, m, k), "uint8", name="a")
    bp = te.placeholder((b_batch, np_ // 16, kp // 4, 16, 4), "int8", name="packed")
    corr = te.placeholder((b_batch, n), "int32", name="correction")
    mp = (m + (_ROW_TILE - 1)) // _ROW_TILE * _ROW_TILE
    a_pad = te.compute(
        (batch, mp, kp),
        lambda t, i, kk: tirx.if_then_else(tirx.all(i < m, kk < k), a[t, i, kk],
                                           tirx.const(0, "uint8")), name="a_pad")
    r = te.reduce_axis((0, kp), name="k")

    def bsel(t):
        return 0 if shared_b else t

    acc = te.compute(
        (batch, mp, np_),
        lambda t, i, j: te.sum(a_pad[t, i, r].astype("int32")
                               * bp[bsel(t), j // 16, r // 4, j % 16, r % 4].astype("int32"),
                               axis=r), name="acc")
    out = te.compute((batch, m, n), lambda t, i, j: acc[t, i, j] - corr[bsel(t), j], name="out")
    sch = s_tir.Schedule(te.create_prim_func([a, bp, corr, out]))

    block = sch.get_sblock("acc")
    t, i, j, kk = sch.get_loops(block)
    io, ii = sch.split(i, [None, _ROW_TILE])
    jo, ji = sch.split(j, [None, 16])
    col_tile = next(c for c in (4, 3, 2, 1) if (np_ // 16) % c == 0)
    jo, jm = sch.split(jo, [None, col_tile])
    ko, ki = sch.split(kk, [None, 4])
    sch.reorder(t, io, jo, ko, ii, jm, ji, ki)
    sch.parallel(sch.fuse(t, io))
    init = sch.decompose_reduction(block, ko)
    if tensorize:
        sch.tensorize(ji, VNNI_INTRIN)
    sch.vectorize(sch.get_loops(init)[-1])
    for name in ("a_pad", "out"):
        loops = sch.get_loops(sch.get_sblock(name))
        sch.parallel(sch.fuse(loops[0], loops[1]))
    if kp != k:  # a branch-free copy loop and a zero-fill loop (3x faster for K = 197)
        sch.loop_partition(sch.get_loops(sch.get_sblock("a_pad"))[-1], [k, None])
    return sch.mod["main"]


_kernel_lock = threading.Lock()
_kernels: dict[tuple, Any] = {}  # keeps the compiled kernel modules alive


def _vnni_matmul_global(k: int, n: int, shared_b: bool, target, tensorize: bool = True
                        ) -> str:
    """Compile the VNNI matmul for (k, n, shared_b, tensorize) on ``target`` as its own
    module and register it as a global packed function; returns its name.

    It is compiled apart from the Relax module on purpose: TVM 0.27 lowers a TIR module
    that also holds a host function (the ``shape_func`` Relax emits for symbolic shapes)
    without the per-kernel ``noalias`` compute scope, which leaves the accumulators in
    memory and makes this kernel 2-3x slower."""
    import tvm
    import tvm_ffi
    key = (k, n, shared_b, str(target), tensorize)
    with _kernel_lock:
        if key not in _kernels:
            name = (f"intvit.vnni_matmul.{k}x{n}.{'shared' if shared_b else 'batched'}."
                    f"{len(_kernels)}")
            func = _vnni_matmul_func(k, n, shared_b, tensorize).with_attr("global_symbol",
                                                                          "kernel")
            executable = tvm.compile(tvm.IRModule({"kernel": func}), target=target)
            kernel = executable["kernel"]
            tvm_ffi.register_global_func(name, kernel, override=True)
            _kernels[key] = (name, executable, kernel)
        return _kernels[key][0]


def _pack_b_numpy(b: np.ndarray, zero_point: int) -> tuple[np.ndarray, np.ndarray]:
    """Numpy version of :func:`_pack_b_func` and :func:`_colsum_func` for a constant ``b``
    of shape (batch, K, N)."""
    batch, k, n = b.shape
    kp, np_ = -(-k // 4) * 4, -(-n // 16) * 16
    padded = np.zeros((batch, kp, np_), np.int8)
    padded[:, :k, :n] = b
    packed = padded.reshape(batch, kp // 4, 4, np_ // 16, 16).transpose(0, 3, 1, 4, 2)
    correction = (zero_point * b.astype(np.int64).sum(axis=1)).astype(np.int32)
    return np.ascontiguousarray(packed), correction


def offload_matmul_integer(mod, target=None, tensorize: bool = True):
    """Rewrite every ``MatMulInteger`` pattern of ``mod["main"]`` that the VNNI kernels
    support (see the module docstring) into calls of those kernels; returns the new module
    and the number of matmuls rewritten. ``target`` (default: the current target) must be
    an LLVM target of a CPU with AVX-512 VNNI; with ``tensorize=False`` (any LLVM target)
    the kernels keep their tiles as plain int32 loops, which checks the rewrite's
    arithmetic (operand shifts, packing, column sums) on a CPU without VNNI."""
    import tvm
    import tvm.ir as tvm_ir
    import tvm_ffi
    if target is None:
        target = tvm.target.Target.current()
    from tvm import relax, tirx
    from tvm.relax.expr_functor import PyExprMutator, mutator

    def bound(mutator_, expr):
        while isinstance(expr, relax.Var):
            value = mutator_.lookup_binding(expr)
            if value is None:
                return expr
            expr = value
        return expr

    def call_of(expr, op_name):
        return (isinstance(expr, relax.Call) and isinstance(expr.op, tvm_ir.Op)
                and expr.op.name == op_name)

    def dtype_of(expr) -> str | None:
        info = getattr(expr, "ty", None)
        dtype = getattr(info, "dtype", None)
        return None if dtype is None else str(dtype)

    def shape_of(expr):
        info = getattr(expr, "ty", None)
        shape = getattr(info, "shape", None)
        if isinstance(shape, relax.ShapeExpr):
            return list(shape.values)
        return None

    @mutator
    class Rewriter(PyExprMutator):
        def __init__(self, module) -> None:
            super().__init__(module)
            self.count = 0
            self.kernels: dict[tuple, Any] = {}

        def kernel(self, key: tuple, make):
            if key not in self.kernels:
                name = "intvit_" + "_".join(str(x) for x in key)
                func = make().with_attr("global_symbol", name)
                self.kernels[key] = self.builder_.add_func(func, name)
            return self.kernels[key]

        def operand(self, expr):
            """``astype(x, i32) [- astype(zp, i32)]`` -> (x, zp) for a constant scalar zp
            (0 when absent), or None."""
            expr = bound(self, expr)
            zero_point = 0
            if call_of(expr, "relax.subtract"):
                zp = bound(self, expr.args[1])
                if call_of(zp, "relax.astype"):
                    zp = bound(self, zp.args[0])
                if not isinstance(zp, tvm_ir.Constant) or zp.value.numpy().size != 1:
                    return None
                zero_point = int(zp.value.numpy().reshape(()))
                expr = bound(self, expr.args[0])
            if not call_of(expr, "relax.astype"):
                return None
            return expr.args[0], zero_point

        def match(self, call):
            if not call_of(call, "relax.matmul") or str(call.attrs.out_dtype) != "int32":
                return None
            lhs, rhs = self.operand(call.args[0]), self.operand(call.args[1])
            if lhs is None or rhs is None:
                return None
            (a, a_zp), (b, b_zp) = lhs, rhs
            spelling = (dtype_of(a), dtype_of(b), b_zp)
            if spelling not in (("uint8", "int8", 0), ("int8", "int8", 0),
                                ("uint8", "uint8", 128)):
                return None
            if a_zp != 0 and dtype_of(a) != "uint8" or not 0 <= a_zp <= 255:
                return None
            a_shape, b_shape = shape_of(a), shape_of(b)
            if a_shape is None or b_shape is None or len(a_shape) < 2 or len(b_shape) < 2:
                return None
            k, n = b_shape[-2], b_shape[-1]
            if not (isinstance(k, tirx.IntImm) and isinstance(n, tirx.IntImm)):
                return None
            if not (isinstance(a_shape[-1], tirx.IntImm) and int(a_shape[-1]) == int(k)):
                return None
            if len(b_shape) == 2:
                shared = True
            elif len(b_shape) == len(a_shape) and all(
                    tvm_ffi.structural_equal(x, y) for x, y in zip(a_shape[:-2], b_shape[:-2])):
                shared = False
            else:
                return None
            return a, b, a_shape, b_shape, int(k), int(n), a_zp, shared

        def to_kernel_dtypes(self, a, b, zero_point):
            """The exact u8 x s8 form of the operands: a signed ``a`` becomes ``a + 128``
            (uint8) with zero point 128, an unsigned ``b`` (zero point 128) becomes
            ``b - 128`` (int8); a constant ``b`` is shifted now."""
            bb = self.builder_
            if dtype_of(a) == "int8":
                a = bb.emit(relax.op.astype(relax.op.add(
                    relax.op.astype(a, "int16"), relax.const(128, "int16")), "uint8"))
                zero_point = 128
            if dtype_of(b) == "uint8":
                b_const = bound(self, b)
                if isinstance(b_const, tvm_ir.Constant):
                    b = relax.const((b_const.value.numpy().astype(np.int16) - 128
                                     ).astype(np.int8))
                else:
                    b = bb.emit(relax.op.astype(relax.op.subtract(
                        relax.op.astype(b, "int16"), relax.const(128, "int16")), "int8"))
            return a, b, zero_point

        def visit_call_(self, call):  # noqa: N802 - TVM's visitor name
            call = super().visit_call_(call)
            found = self.match(call)
            if found is None:
                return call
            a, b, a_shape, b_shape, k, n, zp, shared = found
            a, b, zp = self.to_kernel_dtypes(a, b, zp)
            bb = self.builder_
            lead = a_shape[:-2]
            batch = lead[0] if lead else tirx.const(1, "int64")
            for d in lead[1:]:
                batch = batch * d
            m = a_shape[-2]
            # Views, not copies: one kernel launch covers all leading dims.
            a3 = a if len(a_shape) == 3 else bb.emit(relax.op.reshape(a, [batch, m, k]))
            b_batch = tirx.const(1, "int64") if shared else batch
            kp, np_ = -(-k // 4) * 4, -(-n // 16) * 16
            b_const = bound(self, b)
            if isinstance(b_const, tvm_ir.Constant):  # weights: pack now, once
                host_b = b_const.value.numpy().reshape(-1, k, n)
                packed_np, corr_np = _pack_b_numpy(host_b, zp)
                packed, corr = relax.const(packed_np), relax.const(corr_np)
            else:
                b3 = b if len(b_shape) == 3 else bb.emit(
                    relax.op.reshape(b, [b_batch, k, n]))
                pack = self.kernel(("pack_b", k, n), lambda: _pack_b_func(k, n))
                colsum = self.kernel(("colsum", k, n, zp), lambda: _colsum_func(k, n, zp))
                packed = bb.emit(relax.call_tir(pack, [b3], relax.TensorType(
                    [b_batch, np_ // 16, kp // 4, 16, 4], "int8")))
                corr = bb.emit(relax.call_tir(colsum, [b3], relax.TensorType(
                    [b_batch, n], "int32")))
            kernel = _vnni_matmul_global(k, n, shared, target, tensorize)
            out = relax.call_dps_packed(kernel, [a3, packed, corr], relax.TensorType(
                [batch, m, n], "int32"))
            self.count += 1
            if len(a_shape) == 3:
                return out
            return relax.op.reshape(bb.emit(out), list(a_shape[:-1]) + [n])

    rewriter = Rewriter(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            new = rewriter.visit_expr(func)
            rewriter.builder_.update_func(gv, new)
    new_mod = rewriter.builder_.get()
    return relax.transform.DeadCodeElimination()(new_mod), rewriter.count


# --------------------------------------------------------------------------------------
# Default CPU schedules for the fused elementwise and reduction kernels
# --------------------------------------------------------------------------------------

MIN_PARALLEL_WORK = 4096  # loop iterations (symbolic dims counted as 1) worth a fork-join


def _const_extent(extent) -> int:
    """A loop extent as an int; a symbolic one (the batch) counts as 1."""
    value = getattr(extent, "value", None)
    return int(value) if value is not None else 1


MAX_INLINE_GROWTH = 64  # expression nodes an inlining may duplicate


def _walk_expr(node, buffer=None) -> tuple[int, int]:
    """(expression nodes in ``node`` counted as a tree, loads of ``buffer`` in it)."""
    import tvm_ffi
    from tvm.ir.expr import Expr
    counts = [0, 0]

    def visit(n):
        if not isinstance(n, Expr):
            return None
        counts[0] += 1
        if buffer is not None and type(n).__name__ in ("TensorLoad", "BufferLoad"):
            source = getattr(n, "source", None)
            if source is None:
                source = getattr(n, "buffer", None)
            if source is not None and source.same_as(buffer):
                counts[1] += 1
                return tvm_ffi.WalkResult.SKIP  # its indices: small
        return None

    tvm_ffi.structural_walk(node, [(object, visit)], order="pre")
    return counts[0], counts[1]


def _inline_cheap(sch, infos):
    """Inline spatial blocks into their consumers (``compute_inline``) or consumers into
    their producer (``reverse_compute_inline``) as long as that duplicates at most
    :data:`MAX_INLINE_GROWTH` expression nodes: a value its consumers read k times is
    copied k times, which grows exponentially along chains such as the unrolled Newton
    iterations of an integer square root. Returns the blocks left."""
    from tvm import tirx

    def growth(producer, consumers) -> int | None:
        body = sch.get(producer).body
        if not isinstance(body, tirx.BufferStore):
            return None
        size = _walk_expr(body.value)[0]
        loads = sum(_walk_expr(sch.get(c).body, body.buffer)[1] for c in consumers)
        return size * (loads - 1)

    output_blocks = [sch.get(b) for b in sch.get_output_blocks(sch.get_sblock("root"))]

    def writes_output(block) -> bool:
        stmt = sch.get(block)
        return any(stmt.same_as(b) for b in output_blocks)

    left = []
    for info in infos:  # producers first: each consumer sees its inlined producers
        block = info.block_rv
        if info.is_injective() and not writes_output(block):
            consumers = list(sch.get_consumers(block))
            g = growth(block, consumers) if consumers else None
            if g is not None and g <= MAX_INLINE_GROWTH:
                try:
                    sch.compute_inline(block)
                    continue
                except Exception:  # noqa: BLE001 - TVM raises ScheduleError subclasses
                    pass
        left.append(info)
    result = []
    for info in left:  # an elementwise tail (e.g. after a reduction) into its producer
        block = info.block_rv
        if info.is_injective() and writes_output(block):
            producers = list(sch.get_producers(block))
            if (len(producers) == 1 and len(list(sch.get_consumers(producers[0]))) == 1
                    and not writes_output(producers[0])):
                g = growth(producers[0], [block])
                if g is not None and g <= MAX_INLINE_GROWTH:
                    try:
                        sch.reverse_compute_inline(block)
                        continue
                    except Exception:  # noqa: BLE001
                        pass
        result.append(info)
    return result


def schedule_cpu_func(func, min_parallel_work: int = MIN_PARALLEL_WORK):
    """A multi-threaded schedule of one legalized (possibly fused) PrimFunc, or None when
    the function does not fit the simple pattern below (it then stays as TVM made it).

    Every block that can be is inlined into its consumer (``compute_inline``, then
    ``reverse_compute_inline``: the fused chains of casts, shifts and clamps become one
    loop nest without intermediate buffers); of each remaining block, the leading spatial
    loops are fused and made ``parallel`` (reductions: over the rows, their reduction
    loops stay serial) when the nest has at least ``min_parallel_work`` iterations; an
    injective block keeps its innermost loop serial for LLVM's vectorizer. Only loops are
    restructured and producers substituted into consumers, so every value is computed by
    the same expression in the same order: results are bit-identical."""
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import get_sblock_info, normalize_prim_func
    # Failed primitives raise; rendering the IR into each message would cost seconds.
    sch = s_tir.Schedule(func, error_render_level="none")
    infos = normalize_prim_func(sch)
    if infos is None:
        return None
    infos = _inline_cheap(sch, infos)
    for info in infos:
        block = info.block_rv
        info = get_sblock_info(sch, block)
        kinds = info.dom_kind()
        loops = sch.get_loops(block)
        if len(loops) != len(kinds):
            continue
        n_spatial = len(kinds) - len(kinds.lstrip("S"))
        if n_spatial == 0:
            continue
        outer = loops[:n_spatial]
        if info.is_injective() and n_spatial > 1:
            outer = outer[:-1]  # the innermost loop: contiguous, LLVM vectorizes it
        work = 1
        for loop in loops:
            work *= _const_extent(sch.get(loop).extent)
        if work < min_parallel_work:
            continue
        try:
            sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
        except Exception:  # noqa: BLE001 - e.g. a loop TVM cannot prove data-parallel
            pass
    return sch.mod["main"]


def schedule_cpu_kernels(min_parallel_work: int = MIN_PARALLEL_WORK):
    """Module pass: :func:`schedule_cpu_func` on every PrimFunc not yet scheduled (marked
    ``tirx.is_scheduled`` afterwards). Run it after operator fusion (``FuseTIR``)."""
    import tvm
    from tvm import tirx

    @tvm.transform.module_pass(opt_level=0, name="IntvitScheduleCPU")
    def _pass(mod, _ctx):
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or func.attrs is not None and bool(
                    func.attrs.get("tirx.is_scheduled", False)):
                continue
            try:
                new = schedule_cpu_func(func, min_parallel_work)
            except Exception:  # noqa: BLE001 - keep TVM's unscheduled (correct) kernel
                new = None
            if new is not None:
                updates[gv] = new.with_attr("tirx.is_scheduled", True)
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return _pass


def fold_stacked_min_max(mod):
    """Rewrite ``max(stack([a, b, ...], axis=0), axis=0)`` (how TVM's ONNX importer spells
    an n-ary ``Max``/``Min``) as ``maximum(maximum(a, b), ...)``: the same values, but
    elementwise instead of a reduction, so that operator fusion joins it to its neighbours
    (the unrolled Newton iterations of an integer square root otherwise cost two kernel
    launches each). Returns the new module and the number of rewrites."""
    import tvm.ir as tvm_ir
    import tvm_ffi
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class Folder(PyExprMutator):
        def __init__(self, module) -> None:
            super().__init__(module)
            self.count = 0

        def visit_call_(self, call):  # noqa: N802 - TVM's visitor name
            call = super().visit_call_(call)
            if not (isinstance(call.op, tvm_ir.Op) and call.op.name in ("relax.max", "relax.min")):
                return call
            axis = call.attrs.axis
            if axis is None or len(axis) != 1 or int(axis[0]) != 0 or bool(call.attrs.keepdims):
                return call
            stacked = call.args[0]
            if isinstance(stacked, relax.Var):
                stacked = self.lookup_binding(stacked)
            if not (isinstance(stacked, relax.Call) and isinstance(stacked.op, tvm_ir.Op)
                    and stacked.op.name == "relax.stack" and int(stacked.attrs.axis) == 0):
                return call
            items = stacked.args[0]
            if isinstance(items, relax.Var):
                items = self.lookup_binding(items)
            if not isinstance(items, relax.Tuple):
                return call
            shapes = [getattr(f.ty, "shape", None) for f in items.fields]
            out_shape = getattr(call.ty, "shape", None)
            if out_shape is None or any(
                    s is None or not tvm_ffi.structural_equal(s, out_shape) for s in shapes):
                return call
            op = relax.op.maximum if call.op.name == "relax.max" else relax.op.minimum
            if len(items.fields) < 2:
                return call
            result = items.fields[0]
            for field in items.fields[1:-1]:
                result = self.builder_.emit(op(result, field))
            self.count += 1
            # Returned, not emitted: a var-to-var binding would stop operator fusion.
            return op(result, items.fields[-1])

    folder = Folder(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            folder.builder_.update_func(gv, folder.visit_expr(func))
    new_mod = folder.builder_.get()
    return relax.transform.DeadCodeElimination()(new_mod), folder.count


def mark_gathers_injective():
    """Module pass (between ``AnnotateTIROpPattern`` and ``FuseOps``): a PrimFunc TVM
    marked opaque (``op_pattern`` 8) that is one all-spatial block, such as the table
    lookups (``take``) legalized from ``Gather``, becomes injective (2), so that operator
    fusion merges it with the elementwise chains around it instead of writing its input
    and output to memory."""
    import tvm
    from tvm import s_tir, tirx
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    @tvm.transform.module_pass(opt_level=0, name="IntvitMarkGathersInjective")
    def _pass(mod, _ctx):
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or func.attrs is None:
                continue
            if int(func.attrs.get("op_pattern", -1)) != 8 or gv.name_hint.startswith("intvit_"):
                continue
            infos = normalize_prim_func(s_tir.Schedule(func))
            if infos is not None and len(infos) == 1 and infos[0].is_injective():
                updates[gv] = func.with_attr("op_pattern", 2)
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return _pass


def fusion_passes(target, schedule: bool = True) -> list:
    """The CPU backend's library dispatch, legalization and fusion passes
    (``tvm.relax.backend.cpu_generic``); with ``schedule``, :func:`mark_gathers_injective`
    before fusion and :func:`schedule_cpu_kernels` after it."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    passes = list(cpu.library_dispatch_passes(target))
    for p in cpu.legalize_passes(target):
        passes.append(p)
        if schedule and str(p.info.name) == "AnnotateTIROpPattern":
            passes.append(mark_gathers_injective())
    if schedule:
        passes.append(schedule_cpu_kernels())
    return passes


def cpu_pipeline(target, schedule: bool = True):
    """The CPU backend's Relax pipeline (``relax.get_default_pipeline``) with
    :func:`fusion_passes` (``schedule``: the kernels scheduled for several threads)."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0, name="IntvitCPUPipeline")
    def _pipeline(mod, _ctx):
        with target:
            passes = (fusion_passes(target, schedule) + cpu.dataflow_lower_passes(target)
                      + cpu.finalize_passes(target))
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


# --------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------

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
        tvm = _import_tvm()
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
        count = 0
        if _has_vnni(self.target):
            mod, count = offload_matmul_integer(mod, self.target)
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
