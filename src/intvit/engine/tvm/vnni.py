"""TIR kernels for ``MatMulInteger`` on AVX-512 VNNI (``vpdpbusd``: u8 x s8 products
summed in groups of 4 into int32, no saturation).

The product ``(a - zp) @ b`` of a uint8 ``a`` (zero point ``zp``) and an int8 ``b`` of
shape (K, N) is computed as ``a @ b - zp * colsum(b)``, which equals it in wrapping int32
(so exactly whenever the true product fits int32).
``b`` is packed into 16x4 tiles, ``packed[n // 16, k // 4, n % 16, k % 4] = b[k, n]``,
zero padded to K % 4 == 0 and N % 16 == 0 (zeros add nothing to the sums). ``a`` is
padded with zeros to a multiple of :data:`ROW_TILE` rows and of 4 columns; when
K % 4 != 0 that copy is loop-partitioned at K so its main loop has no branch. With
``tensorize=False`` the 16x4 tile stays a plain int32 loop: the same values on any CPU.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

VNNI_INTRIN = "intvit_vnni_u8s8i32_16x4"
ROW_TILE = 4  # rows of `a` per register tile of the VNNI matmul

_intrin_lock = threading.Lock()
_intrin_registered = False


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


def pack_b_func(k: int, n: int):
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


def colsum_func(k: int, n: int, zero_point: int):
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
    mp = (m + (ROW_TILE - 1)) // ROW_TILE * ROW_TILE
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
    io, ii = sch.split(i, [None, ROW_TILE])
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
_compiled_kernels: dict[tuple, Any] = {}  # keeps the compiled kernel modules alive


def vnni_matmul_global(k: int, n: int, shared_b: bool, target, tensorize: bool = True
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
        if key not in _compiled_kernels:
            name = (f"intvit.vnni_matmul.{k}x{n}.{'shared' if shared_b else 'batched'}."
                    f"{len(_compiled_kernels)}")
            func = _vnni_matmul_func(k, n, shared_b, tensorize).with_attr("global_symbol",
                                                                          "kernel")
            executable = tvm.compile(tvm.IRModule({"kernel": func}), target=target)
            kernel = executable["kernel"]
            tvm_ffi.register_global_func(name, kernel, override=True)
            _compiled_kernels[key] = (name, executable, kernel)
        return _compiled_kernels[key][0]


def pack_b_numpy(b: np.ndarray, zero_point: int) -> tuple[np.ndarray, np.ndarray]:
    """Numpy version of :func:`pack_b_func` and :func:`colsum_func` for a constant ``b``
    of shape (batch, K, N)."""
    batch, k, n = b.shape
    kp, np_ = -(-k // 4) * 4, -(-n // 16) * 16
    padded = np.zeros((batch, kp, np_), np.int8)
    padded[:, :k, :n] = b
    packed = padded.reshape(batch, kp // 4, 4, np_ // 16, 16).transpose(0, 3, 1, 4, 2)
    correction = (zero_point * b.astype(np.int64).sum(axis=1)).astype(np.int32)
    return np.ascontiguousarray(packed), correction

