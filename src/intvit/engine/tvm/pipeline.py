"""The Relax pipeline intvit compiles with for CPU targets, and the two rewrites that let
operator fusion join more ops.

:func:`cpu_pipeline` is the CPU backend's own pipeline (library dispatch, legalize,
FoldConstant, operator fusion; ``tvm.compile``'s "default" for CPU targets does neither
folding nor fusion) with, when ``schedule`` is on, :func:`mark_gathers_injective` before
``FuseOps`` and :func:`.schedule.schedule_cpu_kernels` after ``FuseTIR``.
:func:`fold_stacked_min_max` runs on the imported module before that pipeline. Both
rewrites change which ops share a kernel, never a value.
"""

from __future__ import annotations

from .schedule import schedule_cpu_kernels


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
    before fusion and :func:`.schedule.schedule_cpu_kernels` after it."""
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

