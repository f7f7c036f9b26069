"""The Relax rewrite that sends ``MatMulInteger`` to the VNNI kernels of :mod:`.vnni`.

TVM's ONNX importer turns ``MatMulInteger(a, b, za, zb)`` into
``matmul(astype(a, i32) - za, astype(b, i32) - zb)``, which TVM lowers to an unscheduled,
single-threaded int32 triple loop. :func:`offload_matmul_integer` finds that pattern in
the spellings the integer exporter writes (int8 x int8 for signed activations, uint8 x
uint8 with ``zb = 128`` for softmax probabilities) and in uint8 x int8 with a constant
scalar ``za``, with static K and N and ``b`` either 2-D or batched like ``a``. It first
brings the operands to the kernel's u8 x s8 form, exactly: a signed ``a`` becomes
``a + 128`` (uint8) with ``za = 128``, an unsigned ``b`` becomes ``b - 128`` (int8).
Constant weights are packed with their column sums in numpy at compile time;
activation-by-activation products (attention) are packed at run time by two small TIR
functions. The matmul kernel is called through ``call_dps_packed`` (see
:func:`.vnni.vnni_matmul_global` for why). Anything else stays on TVM's generic lowering:
slow, still exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .vnni import colsum_func, pack_b_func, pack_b_numpy, vnni_matmul_global


def offload_matmul_integer(mod, target=None, tensorize: bool = True):
    """Rewrite every ``MatMulInteger`` pattern of ``mod["main"]`` that the VNNI kernels
    support (see this module's docstring) into calls of those kernels; returns the new module
    and the number of matmuls rewritten. ``target`` (default: the current target) must be
    an LLVM target of a CPU with AVX-512 VNNI; with ``tensorize=False`` (any LLVM target)
    the kernels keep their tiles as plain int32 loops: what :class:`.module.TvmModule`
    runs on a CPU without VNNI, still blocked and threaded, and there the check of the
    rewrite's arithmetic (operand shifts, packing, column sums)."""
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
                packed_np, corr_np = pack_b_numpy(host_b, zp)
                packed, corr = relax.const(packed_np), relax.const(corr_np)
            else:
                b3 = b if len(b_shape) == 3 else bb.emit(
                    relax.op.reshape(b, [b_batch, k, n]))
                pack = self.kernel(("pack_b", k, n), lambda: pack_b_func(k, n))
                colsum = self.kernel(("colsum", k, n, zp), lambda: colsum_func(k, n, zp))
                packed = bb.emit(relax.call_tir(pack, [b3], relax.TensorType(
                    [b_batch, np_ // 16, kp // 4, 16, 4], "int8")))
                corr = bb.emit(relax.call_tir(colsum, [b3], relax.TensorType(
                    [b_batch, n], "int32")))
            kernel = vnni_matmul_global(k, n, shared, target, tensorize)
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

