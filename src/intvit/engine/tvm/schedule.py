"""Multi-threaded CPU schedules for the fused elementwise and reduction kernels.

TVM's CPU pipeline leaves every fused kernel unscheduled: one loop nest per op, each
writing a full intermediate buffer, on one core. :func:`schedule_cpu_kernels` (a module
pass, run after ``FuseTIR``) schedules each PrimFunc with :func:`schedule_cpu_func`:
producers are inlined into consumers unless that copies more than
:data:`MAX_INLINE_GROWTH` expression nodes (values read several times, as in the Newton
chain of an integer square root, would otherwise grow exponentially); the leading
spatial loops of each remaining block are fused and marked ``parallel`` (reductions:
over the rows; the innermost loop of an injective block stays serial for LLVM's
vectorizer) when the nest has at least :data:`MIN_PARALLEL_WORK` iterations at batch 1
(symbolic dims count as 1, so small kernels stay serial at every batch size). Only loop
structure changes and producers are substituted into consumers, so every value is the
same expression evaluated in the same order: results are bit-identical.
``tvm.s_tir.dlight`` has no CPU rule for plain elementwise kernels (only ``GEMV`` and a
softmax-like ``Reduction``), hence this pass.
"""

from __future__ import annotations

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

