"""The search: every combination evaluated after one calibration, ranked; the greedy
per-block refinement; the short QAT of the best (see the package's docstring)."""

from __future__ import annotations

import copy
import itertools
import time
from dataclasses import replace
from typing import Callable, Sequence

from torch import nn

from ...evaluation import evaluate, integer_evaluator, resolve_engine
from ...quant import calibrate, is_calibrated
from ..hwcost import COST_WEIGHTS, Site, hardware_cost, kernel_sites
from .candidates import DEFAULT_LISTS, Candidate, SearchError, check_lists, materialize
from .qat import short_qat
from .render import human_number
from .results import Entry, PerBlockResult, SearchResult, Trial, rank


def calibrated_base(model: nn.Module, train_loader=None, calib_batches: int = 8,
                    progress: bool = False, log: Callable[[str], None] = print
                    ) -> tuple[nn.Module, int]:
    """The model to search from: quantized and calibrated. A float model (quantization
    off) is requantized; a model whose ranges are not recorded is calibrated (on a copy)
    with ``calib_batches`` batches of ``train_loader``. Returns it and the batches used."""
    from ...models.factory import requantized

    if not hasattr(model, "cfg") or not hasattr(model, "qcfg"):
        raise SearchError("search needs an intvit model (with .cfg and .qcfg)")
    if not model.qcfg.enabled:
        model = requantized(model, replace(model.qcfg, enabled=True))
    if is_calibrated(model):
        return model, 0
    if train_loader is None:
        raise SearchError("the model's activation ranges are not calibrated; give training "
                          "batches (train_loader) to calibrate on")
    model = copy.deepcopy(model)
    used = calibrate(model, train_loader, calib_batches, progress)
    log(f"calibrated activation ranges on {used} training batches")
    return model, used


def evaluate_candidate(base: nn.Module, candidate: Candidate, val_loader,
                       sites: Sequence[Site], weights: dict[str, int] = COST_WEIGHTS,
                       progress: bool = False, engine: str = "model") -> Entry:
    """PTQ evaluation of one candidate (its integers, by the eval-mode model or by
    ``engine``: :func:`~intvit.evaluation.integer_evaluator`); a kernel that refuses the
    model's scales gives a failed entry with its message."""
    start = time.perf_counter()
    try:
        model = materialize(base, candidate)
        result = evaluate(integer_evaluator(model, engine), val_loader, progress=progress,
                          desc=candidate.label)
        cost = hardware_cost(model, sites, weights)
    except (ValueError, OverflowError) as err:
        return Entry(candidate, error=str(err), seconds=time.perf_counter() - start)
    return Entry(candidate, result.top1, result.top5, result.loss, cost,
                 seconds=time.perf_counter() - start, images=result.images)


def _groups(sites: Sequence[Site]) -> list[tuple[str, list[str]]]:
    order: dict[str, list[str]] = {}
    for s in sites:
        ops = order.setdefault(s.group, [])
        if s.op not in ops:
            ops.append(s.op)
    return list(order.items())


def per_block_search(base: nn.Module, start: Entry, lists: dict[str, list[str]], val_loader,
                     sites: Sequence[Site], weights: dict[str, int] = COST_WEIGHTS,
                     progress: bool = False, log: Callable[[str], None] = print,
                     engine: str = "model") -> PerBlockResult:
    """Greedy per-block refinement of ``start`` (see the package docstring)."""
    groups = _groups(sites)
    current, trials = start, []
    for group, ops in groups:
        for op in ops:
            for name in lists[op]:
                if name == current.candidate.name(op, group):
                    continue
                entry = evaluate_candidate(base, current.candidate.with_override(group, op, name),
                                           val_loader, sites, weights, progress, engine)
                accepted = entry.ok and entry.key() < current.key()
                trials.append(Trial(group, op, name, entry, accepted))
                log(f"  per-block {group} {op}={name}: "
                    + (f"top-1 {entry.top1:.2f}%, loss {entry.loss:.4f}"
                       if entry.ok else f"failed: {entry.error}")
                    + (" (kept)" if accepted else ""))
                if accepted:
                    current = entry
    return PerBlockResult(start, current, groups, trials)


def search(model: nn.Module, val_loader, gelus: Sequence[str] = DEFAULT_LISTS["gelu"],
           softmaxes: Sequence[str] = DEFAULT_LISTS["softmax"],
           layernorms: Sequence[str] = DEFAULT_LISTS["layernorm"], per_block: bool = False,
           qat_top: int = 0, train_loader=None, qat_steps: int = 20, qat_lr: float = 1e-5,
           calib_batches: int = 8, weights: dict[str, int] | None = None,
           progress: bool = True, log: Callable[[str], None] | None = None,
           engine: str = "model") -> SearchResult:
    """Evaluate every gelu x softmax x layernorm combination (integer model, PTQ, one
    calibration); optionally refine the best per block and fine-tune the best
    ``qat_top`` briefly. ``engine`` evaluates each combination's integers (``model``,
    an engine of :mod:`intvit.engine`, or ``auto``; the same accuracy from any).
    ``model`` is left unchanged."""
    began = time.perf_counter()
    log = log or (print if progress else (lambda *_: None))
    weights = dict(COST_WEIGHTS if weights is None else weights)
    lists = check_lists(gelus, softmaxes, layernorms)
    if qat_top < 0 or qat_steps < 1:
        raise SearchError(f"qat_top must be >= 0 and qat_steps >= 1, got {qat_top} and "
                          f"{qat_steps}")
    if qat_top and train_loader is None:
        raise SearchError("QAT (qat_top > 0) needs training batches (train_loader)")
    base, used = calibrated_base(model, train_loader, calib_batches, progress, log)
    engine = resolve_engine(base, engine)
    log(f"evaluating each combination with engine {engine}")
    candidates = [Candidate(g, s, n) for g, s, n in
                  itertools.product(lists["gelu"], lists["softmax"], lists["layernorm"])]
    sites = kernel_sites(materialize(base, candidates[0]))
    entries = []
    for i, candidate in enumerate(candidates, 1):
        entry = evaluate_candidate(base, candidate, val_loader, sites, weights, progress,
                                   engine)
        entries.append(entry)
        log(f"[{i}/{len(candidates)}] {candidate.label}: "
            + (f"top-1 {entry.top1:.2f}%, loss {entry.loss:.4f}, cost "
               f"{human_number(entry.cost_value)}" if entry.ok else f"failed: {entry.error}"))
    ranked = rank(entries)
    images = ranked[0].images if ranked else 0
    block_result = None
    if per_block and ranked:
        log(f"per-block search from {ranked[0].candidate.label}")
        block_result = per_block_search(base, ranked[0], lists, val_loader, sites, weights,
                                        progress, log, engine)
    for entry in ranked[:qat_top]:
        entry.qat = short_qat(base, entry.candidate, train_loader, val_loader, qat_steps,
                              qat_lr, progress=progress)
        q = entry.qat
        log(f"QAT {entry.candidate.label} ({qat_steps} steps): "
            + (f"top-1 {q['top1']:.2f}%, loss {q['loss']:.4f}" if q["error"] is None
               else f"failed: {q['error']}"))
    return SearchResult(entries, lists, sites, base.cfg.as_dict(), base.qcfg.as_dict(),
                        images, weights, block_result, used, time.perf_counter() - began)
