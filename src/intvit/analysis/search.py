"""Search for the best combination of integer approximations (``intvit search``).

Every ``gelu x softmax x layernorm`` combination of the given name lists is evaluated
post-training (PTQ) on a validation set with the *integer* model, ranked by top-1 (ties
by hardware cost, then loss), and placed on an accuracy-vs-cost Pareto front::

    result = search(model, val_loader, ["ivit", "ibert", "ppoly"], ["ivit", "ibert"],
                    ["ivit", "ibert"], per_block=True, qat_top=2, train_loader=train)
    print(result.markdown()); result.plot("pareto.png"); result.as_dict()

**Calibrated once.** Calibration runs the model in float, so activation ranges do not
depend on the approximations. The model is calibrated once (on ``train_loader`` if its
observers are not yet); each combination is then built under its own
:class:`~intvit.quant.QuantConfig` and given the *whole* state dict of that model, float
weights and observer buffers alike (the module structure does not depend on the
approximation names, so every key matches), and evaluated -- no recalibration.

**Failures.** Names are checked with :func:`intvit.approx.build` before anything runs
(an unknown family, such as ``ppoly`` for layernorm, or a bad parameter is an error
listing what is accepted). A kernel that refuses the model's scales at run time (a
``ValueError`` such as "ShiftGELU with n=30 overflows 32 bits ...; use n <= 25") makes
that combination *failed*, recorded with its message; the search goes on.

**Hardware cost** of a combination, per image, from each kernel's :class:`Cost` (counts
per element and per row) for the shapes the model really has. For a ViT/DeiT with
``N = (img_size / patch_size)^2 + 1`` tokens, width ``D``, ``H`` heads, depth ``L`` and
MLP width ``F = int(D * mlp_ratio)``:

| op        | elements per image   | rows per image  | row length |
|-----------|----------------------|-----------------|------------|
| GELU      | ``L * N * F``        | --              | --         |
| Softmax   | ``L * H * N^2``      | ``L * H * N``   | ``N``      |
| LayerNorm | ``(2L + 1) * N * D`` | ``(2L + 1) * N``| ``D``      |

(:func:`~.hwcost.vit_shapes`; the shapes are read from one traced forward,
:func:`~.hwcost.kernel_sites`, which gives the same numbers for a ViT and also covers
Swin; the cost model lives in :mod:`intvit.analysis.hwcost`.) Then

    ops(k)  = elements * c.k + rows * c.per_row[k]            for each op kind k
    cost    = sum over sites, kinds of  W[k] * ops(k)

with the weights :data:`COST_WEIGHTS` ``W``: ``mul 1, shift 1, add 1, cmp 1, div 8,
sqrt 64`` (an integer square root is Newton's iteration, up to 7 divisions plus a
leading-zero count: about eight divisions). The widest intermediate (``widest_bits``)
and the widest requantization product (``requant_bits``) are the maxima over all
kernels; both are reported with the per-op costs. ``float`` variants are not integer-only:
such a combination is evaluated and ranked but has no integer cost and is left off the
Pareto front.

**Per-block search** (``per_block=True``): greedy, from the best global combination. For
each block (``blocks.i`` in a ViT, ``layers.s.blocks.j`` in a Swin; a LayerNorm outside
the blocks, such as the final ``norm``, is a group of its own) and each op in it, every
other name of that op's list is tried there; a change is kept when it ranks strictly
better (higher top-1, or equal top-1 and lower cost, or equal both and lower loss), so
the result is never below the start. Today a :class:`QuantConfig` holds one name per op,
so a per-block choice is set on the modules themselves (``QuantGELU``/``QuantSoftmax``/
``QuantLayerNorm`` hold ``.approx``; their kernel cache ``_kernels`` is cleared). The
choice is a :class:`Candidate` with ``overrides`` ``{group: {op: name}}``, written in the
JSON. To reproduce it (also on a loaded checkpoint, which stores only the global names)::

    cand = Candidate.from_dict(json.load(open("search.json"))["per_block"]["best"]["candidate"])
    model = materialize(calibrated_model, cand)        # a new model, or in place:
    apply_candidate(load_checkpoint(path)[0], cand)

**Short QAT** (``qat_top=k``): the best ``k`` PTQ combinations are fine-tuned for
``qat_steps`` steps (AdamW, cross-entropy, ``model.train()`` = fake-quantized forward
with the kernels' integers, ranges frozen) and evaluated again.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..fileio import atomic_write, command_line, write_json, write_run_manifest, write_text
from ..approx import build
from ..device import model_device, resolve_device, to_device
from ..evaluation import evaluate
from ..models.registry import build_quant_model
from ..quant import QuantConfig, RangeObserver, calibrate
from ..tables import markdown_table
from .hwcost import (COST_WEIGHTS, HardwareCost, Site, block_of, hardware_cost,
                     kernel_modules, kernel_sites)

SEARCH_OPS = ("gelu", "softmax", "layernorm")
DEFAULT_LISTS = {"gelu": ("ivit", "ibert", "ppoly"), "softmax": ("ivit", "ibert", "ppoly"),
                 "layernorm": ("ivit", "ibert")}


class SearchError(ValueError):
    """A search that cannot run as asked (reported before anything is evaluated)."""


# ------------------------------------------------------------------------------ candidates


@dataclass(frozen=True)
class Candidate:
    """One approximation per op for the whole model, optionally overridden per block:
    ``overrides`` holds ``(group, op, name)`` triples (see :func:`block_of`)."""

    gelu: str = "ivit"
    softmax: str = "ivit"
    layernorm: str = "ivit"
    overrides: tuple[tuple[str, str, str], ...] = ()

    def __post_init__(self) -> None:
        for op in SEARCH_OPS:
            object.__setattr__(self, op, build(op, getattr(self, op)).name)
        kept: dict[tuple[str, str], str] = {}
        for group, op, name in self.overrides:
            if op not in SEARCH_OPS:
                raise SearchError(f"override of unknown op {op!r} in {group!r}; ops: "
                                  f"{', '.join(SEARCH_OPS)}")
            kept[(group, op)] = build(op, name).name
        object.__setattr__(self, "overrides", tuple(sorted(
            (g, op, n) for (g, op), n in kept.items() if n != getattr(self, op))))

    def name(self, op: str, group: str | None = None) -> str:
        """The approximation of ``op`` in ``group`` (the global one without override)."""
        for g, o, n in self.overrides:
            if g == group and o == op:
                return n
        return getattr(self, op)

    def with_override(self, group: str, op: str, name: str) -> "Candidate":
        rest = tuple(t for t in self.overrides if (t[0], t[1]) != (group, op))
        return replace(self, overrides=rest + ((group, op, name),))

    @property
    def global_names(self) -> tuple[str, str, str]:
        return self.gelu, self.softmax, self.layernorm

    @property
    def label(self) -> str:
        text = "/".join(self.global_names)
        return text + (f" +{len(self.overrides)} per-block" if self.overrides else "")

    def per_block(self) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for group, op, name in self.overrides:
            out.setdefault(group, {})[op] = name
        return out

    def quant_config(self, base: QuantConfig) -> QuantConfig:
        return replace(base, gelu=self.gelu, softmax=self.softmax, layernorm=self.layernorm)

    def as_dict(self) -> dict[str, Any]:
        return {"gelu": self.gelu, "softmax": self.softmax, "layernorm": self.layernorm,
                "overrides": self.per_block()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Candidate":
        overrides = tuple((g, op, n) for g, ops in (data.get("overrides") or {}).items()
                          for op, n in ops.items())
        return cls(data["gelu"], data["softmax"], data["layernorm"], overrides)


def apply_candidate(model: nn.Module, candidate: Candidate) -> nn.Module:
    """Set every GELU/Softmax/LayerNorm module of ``model`` to the candidate's choice for
    its block (in place; prepared kernels are dropped) and record the global names in
    ``model.qcfg``. Overrides of groups or ops the model lacks are errors."""
    present: set[tuple[str, str]] = set()
    for name, module in kernel_modules(model):
        group = block_of(name)
        present.add((group, module.op))
        approx = build(module.op, candidate.name(module.op, group))
        if approx != module.approx:
            module.approx = approx
            module._kernels = {}
    unknown = [(g, op) for g, op, _ in candidate.overrides if (g, op) not in present]
    if unknown:
        raise SearchError("overrides for parts the model does not have: "
                          + ", ".join(f"{op} in {g}" for g, op in unknown)
                          + f"; groups: {', '.join(sorted({g for g, _ in present}))}")
    if hasattr(model, "qcfg"):
        model.qcfg = candidate.quant_config(model.qcfg)
    return model


def materialize(base: nn.Module, candidate: Candidate) -> nn.Module:
    """A new model under the candidate's approximations with ``base``'s full state (float
    weights and calibrated ranges), in eval mode: the integer model."""
    model = build_quant_model(base.cfg, candidate.quant_config(base.qcfg))
    model.load_state_dict(base.state_dict(), strict=True)
    if candidate.overrides:
        apply_candidate(model, candidate)
    return model.eval()


# ------------------------------------------------------------------------------ shapes, cost


# ------------------------------------------------------------------------------ results


@dataclass
class Entry:
    """One evaluated candidate: PTQ accuracy and loss, cost, or the error that stopped it;
    ``qat`` holds the short fine-tuning's figures when it ran."""

    candidate: Candidate
    top1: float | None = None
    top5: float | None = None
    loss: float | None = None
    cost: HardwareCost | None = None
    error: str | None = None
    seconds: float = 0.0
    qat: dict[str, Any] | None = None
    images: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None and self.top1 is not None

    @property
    def cost_value(self) -> float:
        """Weighted cost for ranking: infinite without an integer-only cost."""
        if self.cost is None or not self.cost.integer_only:
            return math.inf
        return float(self.cost.weighted)

    def key(self) -> tuple:
        """Sort key: accuracy first, then cost, then loss."""
        return (-self.top1, self.cost_value, self.loss)

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.candidate.label, "candidate": self.candidate.as_dict(),
                "top1": self.top1, "top5": self.top5, "loss": self.loss,
                "cost": self.cost.as_dict() if self.cost else None, "error": self.error,
                "seconds": self.seconds, "qat": self.qat, "images": self.images}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Entry":
        return cls(Candidate.from_dict(data["candidate"]), data.get("top1"), data.get("top5"),
                   data.get("loss"),
                   HardwareCost.from_dict(data["cost"]) if data.get("cost") else None,
                   data.get("error"), data.get("seconds", 0.0), data.get("qat"),
                   data.get("images", 0))


def rank(entries: Iterable[Entry]) -> list[Entry]:
    """Successful entries, best first: top-1 descending, ties by cost, then loss, then
    label (failed entries are left out)."""
    return sorted((e for e in entries if e.ok), key=lambda e: (*e.key(), e.candidate.label))


def pareto_front(entries: Iterable[Entry]) -> list[Entry]:
    """Entries no other entry dominates (at least as accurate and at most as costly, one of
    them strictly), among successful integer-only ones; cheapest first."""
    pool = [e for e in entries if e.ok and math.isfinite(e.cost_value)]
    front = [e for e in pool
             if not any(o.top1 >= e.top1 and o.cost_value <= e.cost_value
                        and (o.top1 > e.top1 or o.cost_value < e.cost_value) for o in pool)]
    return sorted(front, key=lambda e: (e.cost_value, -e.top1, e.candidate.label))


@dataclass
class Trial:
    """One step of the per-block search: ``name`` for ``op`` in ``group``."""

    group: str
    op: str
    name: str
    entry: Entry
    accepted: bool

    def as_dict(self) -> dict[str, Any]:
        return {"group": self.group, "op": self.op, "name": self.name,
                "accepted": self.accepted, **{k: v for k, v in self.entry.as_dict().items()
                                              if k in ("top1", "loss", "error")},
                "cost": self.entry.cost.weighted if self.entry.cost else None}


@dataclass
class PerBlockResult:
    start: Entry
    best: Entry
    groups: list[tuple[str, list[str]]]
    trials: list[Trial]

    def assignment(self) -> dict[str, dict[str, str]]:
        """Every group's choice for each of its ops (overrides and global names alike)."""
        return {g: {op: self.best.candidate.name(op, g) for op in ops} for g, ops in self.groups}

    def as_dict(self) -> dict[str, Any]:
        return {"start": self.start.as_dict(), "best": self.best.as_dict(),
                "assignment": self.assignment(), "trials": [t.as_dict() for t in self.trials],
                "reproduce": "materialize(calibrated_model, Candidate.from_dict("
                             "per_block['best']['candidate'])) or apply_candidate(model, ...)"}


def _human(value: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _label_clusters(entries: Sequence[Entry], front: set[int]
                    ) -> list[tuple[float, float, list[str]]]:
    """Labels of points at the same accuracy and nearly the same cost (within 2% of the
    cost span) stacked into one annotation; front points first, marked with ``*``."""
    if not entries:
        return []
    costs = [e.cost_value for e in entries]
    span = max(max(costs) - min(costs), 1.0)
    clusters: list[list[Entry]] = []
    for e in sorted(entries, key=lambda e: (e.top1, e.cost_value)):
        last = clusters[-1][-1] if clusters else None
        if (last is not None and last.top1 == e.top1
                and e.cost_value - last.cost_value <= 0.02 * span):
            clusters[-1].append(e)
        else:
            clusters.append([e])
    out = []
    for group in clusters:
        group.sort(key=lambda e: (id(e) not in front, e.cost_value))
        out.append((group[0].cost_value, group[0].top1,
                    [("* " if id(e) in front else "") + e.candidate.label for e in group]))
    return out


@dataclass
class SearchResult:
    entries: list[Entry]
    lists: dict[str, list[str]]
    sites: list[Site]
    model_config: dict[str, Any]
    quant: dict[str, Any]
    images: int
    weights: dict[str, int] = field(default_factory=lambda: dict(COST_WEIGHTS))
    per_block: PerBlockResult | None = None
    calibration_batches: int = 0
    seconds: float = 0.0

    def ranking(self) -> list[Entry]:
        return rank(self.entries)

    def front(self) -> list[Entry]:
        return pareto_front(self.entries)

    @property
    def best(self) -> Entry | None:
        ranked = self.ranking()
        return ranked[0] if ranked else None

    @property
    def failed(self) -> list[Entry]:
        return [e for e in self.entries if not e.ok]

    def qat_ranking(self) -> list[Entry]:
        """Entries fine-tuned without error, best QAT top-1 first (ties by cost, loss)."""
        done = [e for e in self.entries if e.qat and e.qat.get("error") is None]
        return sorted(done, key=lambda e: (-e.qat["top1"], e.cost_value, e.qat["loss"],
                                           e.candidate.label))

    def op_totals(self) -> dict[str, dict[str, int]]:
        """Elements and rows per image, per op, summed over the sites."""
        out: dict[str, dict[str, int]] = {}
        for s in self.sites:
            t = out.setdefault(s.op, {"elements": 0, "rows": 0, "sites": 0})
            t["elements"] += s.elements
            t["rows"] += s.rows
            t["sites"] += 1
        return out

    def as_dict(self) -> dict[str, Any]:
        ranked = self.ranking()
        front = {id(e) for e in self.front()}
        positions = {id(e): i for i, e in enumerate(ranked, 1)}
        ordered = ranked + self.failed

        def record(e: Entry) -> dict[str, Any]:
            return {"rank": positions.get(id(e)), "pareto": id(e) in front, **e.as_dict()}

        best = self.best
        qat = self.qat_ranking()
        return {"model": self.model_config, "quant": self.quant, "lists": self.lists,
                "images": self.images, "calibration_batches": self.calibration_batches,
                "cost_weights": self.weights, "op_shapes": self.op_totals(),
                "sites": [s.__dict__ for s in self.sites],
                "entries": [record(e) for e in ordered],
                "best": best.as_dict() if best else None,
                "pareto": [e.candidate.label for e in self.front()],
                "best_after_qat": qat[0].as_dict() if qat else None,
                "per_block": self.per_block.as_dict() if self.per_block else None,
                "seconds": self.seconds}

    def markdown(self) -> str:
        ranked = self.ranking()
        front = {id(e) for e in self.front()}
        qat = any(e.qat for e in self.entries)
        w = ", ".join(f"{k} {v}" for k, v in self.weights.items())
        shapes = "; ".join(f"{op} {t['elements']:,} elements ({t['rows']:,} rows)"
                           for op, t in self.op_totals().items())
        cfg = self.model_config
        lines = [f"**Approximation search** over gelu {{{', '.join(self.lists['gelu'])}}} x "
                 f"softmax {{{', '.join(self.lists['softmax'])}}} x layernorm "
                 f"{{{', '.join(self.lists['layernorm'])}}}: {len(self.entries)} "
                 f"combinations, {len(self.failed)} failed; {cfg.get('arch')} dim "
                 f"{cfg.get('embed_dim')} depth {cfg.get('depth')} "
                 f"{cfg.get('img_size')}px; integer model on {self.images} images.", "",
                 f"Cost: weighted integer ops per image ({w}); per image: {shapes}.", ""]
        cols = ["rank", "gelu", "softmax", "layernorm", "top-1 %", "loss"]
        cols += ["QAT top-1 %", "QAT loss"] if qat else []
        cols += ["cost/image", "gelu", "softmax", "layernorm", "widest bits", "requant bits",
                 "Pareto"]
        rows = []
        for i, e in enumerate(ranked + self.failed, 1):
            c = e.candidate
            row = [str(i) if e.ok else "-", c.gelu, c.softmax, c.layernorm]
            if not e.ok:
                msg = (e.error or "").replace("|", "/").replace("\n", " ")
                rows.append(row + [f"failed: {msg}"] + [""] * (len(cols) - 5))
                continue
            row += [_pct(e.top1), f"{e.loss:.4f}"]
            if qat:
                q = e.qat or {}
                row += (["failed: " + q["error"].replace("|", "/"), ""] if q.get("error")
                        else [_pct(q.get("top1")),
                              f"{q['loss']:.4f}" if q.get("loss") is not None else "-"])
            cost = e.cost
            if cost is None:
                row += ["-"] * 6
            else:
                mark = "" if cost.integer_only else f" + float {'/'.join(cost.float_ops)}"
                row += [_human(cost.weighted) + mark,
                        *(_human(cost.by_op[op]) if op in cost.by_op else "float"
                          for op in SEARCH_OPS),
                        str(cost.widest_bits), str(cost.requant_bits)]
            row.append("yes" if id(e) in front else "")
            rows.append(row)
        lines.append(markdown_table(cols, rows))
        if self.per_block:
            pb = self.per_block
            groups_ops = [op for op in SEARCH_OPS if any(op in ops for _, ops in pb.groups)]
            lines += ["", f"**Per-block search** from {pb.start.candidate.label} "
                          f"(top-1 {_pct(pb.start.top1)}%, cost "
                          f"{_human(pb.start.cost_value)}): top-1 {_pct(pb.best.top1)}%, "
                          f"loss {pb.best.loss:.4f}, cost {_human(pb.best.cost_value)}; "
                          f"{len(pb.trials)} trials, "
                          f"{sum(t.accepted for t in pb.trials)} kept.", ""]
            assignment = pb.assignment()
            overrides = pb.best.candidate.overrides
            lines.append(markdown_table(["block", *groups_ops], [
                [group, *((chosen[op] + (" *" if (group, op, chosen[op]) in overrides else ""))
                          if op in chosen else "-" for op in groups_ops)]
                for group, chosen in ((g, assignment[g]) for g, _ in pb.groups)]))
            lines += ["", "`*` differs from the global choice. Reproduce with "
                          "`apply_candidate(model, Candidate.from_dict(json['per_block']"
                          "['best']['candidate']))` on the calibrated model."]
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path) -> Path:
        """Accuracy vs cost: every integer-only combination, the Pareto front highlighted,
        points labelled; the per-block result (star) and QAT results (hollow) if any."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        fig, ax = plt.subplots(figsize=(9, 6), constrained_layout=True)
        pool = [e for e in self.ranking() if math.isfinite(e.cost_value)]
        front = self.front()
        on_front = {id(e) for e in front}
        others = [e for e in pool if id(e) not in on_front]
        ax.scatter([e.cost_value for e in others], [e.top1 for e in others], s=30,
                   color="tab:blue", alpha=0.7, label="combination")
        if front:
            ax.plot([e.cost_value for e in front], [e.top1 for e in front], "-o",
                    color="tab:red", ms=7, lw=1.5, label="Pareto front", zorder=3)
        for x, y, labels in _label_clusters(pool, on_front):
            ax.annotate("\n".join(labels), (x, y), fontsize=6, xytext=(5, 2),
                        textcoords="offset points", va="bottom")
        tuned = [e for e in pool if e.qat and e.qat.get("error") is None]
        if tuned:
            for e in tuned:
                ax.plot([e.cost_value] * 2, [e.top1, e.qat["top1"]], ":", color="tab:green",
                        lw=1)
            ax.scatter([e.cost_value for e in tuned], [e.qat["top1"] for e in tuned], s=60,
                       facecolors="none", edgecolors="tab:green",
                       label=f"after {tuned[0].qat['steps']} QAT steps")
        if self.per_block and math.isfinite(self.per_block.best.cost_value):
            best = self.per_block.best
            ax.scatter([best.cost_value], [best.top1], marker="*", s=300, color="tab:orange",
                       zorder=1, label=f"per-block: {best.candidate.label}")
        ax.set_xlabel("cost: weighted integer ops per image "
                      f"({', '.join(f'{k} {v}' for k, v in self.weights.items())})")
        ax.set_ylabel("top-1 % (integer model)")
        ax.set_title(f"gelu / softmax / layernorm search, {self.images} validation images",
                     fontsize=10)
        ax.grid(alpha=0.3)
        ax.margins(x=0.08, y=0.15)
        if pool:
            ax.legend(fontsize=8)
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90,
                                                   format=path.suffix[1:] or "png"))
        plt.close(fig)
        return path

    def write(self, out: str | Path, command: str | None = None) -> dict[str, Path]:
        """``search.md`` (table and plot), ``search.json`` and ``pareto.png`` in ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"plot": self.plot(out / "pareto.png"), "json": out / "search.json",
                 "table": out / "search.md"}
        write_json(paths["json"], self.as_dict())
        header = "# Approximation search\n\n"
        if command:
            header += f"Generated by `{command}`.\n\n"
        write_text(paths["table"], header + self.markdown() + "\n![Pareto](pareto.png)\n")
        return paths


# ------------------------------------------------------------------------------ the search


def check_lists(gelus: Sequence[str], softmaxes: Sequence[str], layernorms: Sequence[str]
                ) -> dict[str, list[str]]:
    """Canonical, de-duplicated names per op; every bad name is reported at once."""
    problems, lists = [], {}
    for op, names in zip(SEARCH_OPS, (gelus, softmaxes, layernorms)):
        if isinstance(names, str):
            names = [n for n in names.split(",")]
        names = [str(n).strip() for n in names]
        if not names or not any(names):
            problems.append(f"{op}: the list is empty")
        canonical: list[str] = []
        for name in names:
            try:
                built = build(op, name).name
            except ValueError as err:
                problems.append(f"{op} {name!r}: {err}")
                continue
            if built not in canonical:
                canonical.append(built)
        lists[op] = canonical
    if problems:
        raise SearchError("cannot search these approximations (nothing was run):\n- "
                          + "\n- ".join(problems))
    return lists


def is_calibrated(model: nn.Module) -> bool:
    return all(m.ready for m in model.modules() if isinstance(m, RangeObserver))


def calibrated_base(model: nn.Module, train_loader=None, calib_batches: int = 8,
                    progress: bool = False, log: Callable[[str], None] = print
                    ) -> tuple[nn.Module, int]:
    """The model to search from: quantized and calibrated. A float model (quantization
    off) is requantized; a model whose ranges are not recorded is calibrated (on a copy)
    with ``calib_batches`` batches of ``train_loader``. Returns it and the batches used."""
    from ..models.factory import requantized

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
                       progress: bool = False) -> Entry:
    """PTQ evaluation of one candidate (integer model); a kernel that refuses the model's
    scales gives a failed entry with its message."""
    start = time.perf_counter()
    try:
        model = materialize(base, candidate)
        result = evaluate(model, val_loader, progress=progress, desc=candidate.label)
        cost = hardware_cost(model, sites, weights)
    except (ValueError, OverflowError) as err:
        return Entry(candidate, error=str(err), seconds=time.perf_counter() - start)
    return Entry(candidate, result.top1, result.top5, result.loss, cost,
                 seconds=time.perf_counter() - start, images=result.images)


def _batches(loader):
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise SearchError("QAT saw no training batches: the dataset is empty")


def short_qat(base: nn.Module, candidate: Candidate, train_loader, val_loader,
              steps: int = 20, lr: float = 1e-5, seed: int = 0,
              progress: bool = False) -> dict[str, Any]:
    """Fine-tune the candidate's model for ``steps`` AdamW steps (cross-entropy, QAT
    forward, ranges frozen) and evaluate it; errors are returned, not raised."""
    torch.manual_seed(seed)
    if getattr(train_loader, "generator", None) is not None:
        train_loader.generator.manual_seed(seed)
    try:
        model = materialize(base, candidate).train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        losses = []
        for _, (images, labels) in zip(range(steps), _batches(train_loader)):
            device = model_device(model)
            loss = F.cross_entropy(model(to_device(images, device)), to_device(labels, device))
            if not torch.isfinite(loss):
                raise ValueError(f"QAT loss became {float(loss)} after {len(losses)} steps")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        result = evaluate(model, val_loader, progress=progress, desc="QAT " + candidate.label)
    except (ValueError, OverflowError) as err:
        return {"error": str(err), "steps": steps, "lr": lr}
    return {"top1": result.top1, "top5": result.top5, "loss": result.loss, "steps": steps,
            "lr": lr, "train_loss_first": losses[0], "train_loss_last": losses[-1],
            "error": None}


def _groups(sites: Sequence[Site]) -> list[tuple[str, list[str]]]:
    order: dict[str, list[str]] = {}
    for s in sites:
        ops = order.setdefault(s.group, [])
        if s.op not in ops:
            ops.append(s.op)
    return list(order.items())


def per_block_search(base: nn.Module, start: Entry, lists: dict[str, list[str]], val_loader,
                     sites: Sequence[Site], weights: dict[str, int] = COST_WEIGHTS,
                     progress: bool = False, log: Callable[[str], None] = print
                     ) -> PerBlockResult:
    """Greedy per-block refinement of ``start`` (see the module docstring)."""
    groups = _groups(sites)
    current, trials = start, []
    for group, ops in groups:
        for op in ops:
            for name in lists[op]:
                if name == current.candidate.name(op, group):
                    continue
                entry = evaluate_candidate(base, current.candidate.with_override(group, op, name),
                                           val_loader, sites, weights, progress)
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
           progress: bool = True, log: Callable[[str], None] | None = None) -> SearchResult:
    """Evaluate every gelu x softmax x layernorm combination (integer model, PTQ, one
    calibration); optionally refine the best per block and fine-tune the best
    ``qat_top`` briefly. ``model`` is left unchanged."""
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
    candidates = [Candidate(g, s, n) for g, s, n in
                  itertools.product(lists["gelu"], lists["softmax"], lists["layernorm"])]
    sites = kernel_sites(materialize(base, candidates[0]))
    entries = []
    for i, candidate in enumerate(candidates, 1):
        entry = evaluate_candidate(base, candidate, val_loader, sites, weights, progress)
        entries.append(entry)
        log(f"[{i}/{len(candidates)}] {candidate.label}: "
            + (f"top-1 {entry.top1:.2f}%, loss {entry.loss:.4f}, cost "
               f"{_human(entry.cost_value)}" if entry.ok else f"failed: {entry.error}"))
    ranked = rank(entries)
    images = ranked[0].images if ranked else 0
    block_result = None
    if per_block and ranked:
        log(f"per-block search from {ranked[0].candidate.label}")
        block_result = per_block_search(base, ranked[0], lists, val_loader, sites, weights,
                                        progress, log)
    for entry in ranked[:qat_top]:
        entry.qat = short_qat(base, entry.candidate, train_loader, val_loader, qat_steps,
                              qat_lr, progress=progress)
        q = entry.qat
        log(f"QAT {entry.candidate.label} ({qat_steps} steps): "
            + (f"top-1 {q['top1']:.2f}%, loss {q['loss']:.4f}" if q["error"] is None
               else f"failed: {q['error']}"))
    return SearchResult(entries, lists, sites, base.cfg.as_dict(), base.qcfg.as_dict(),
                        images, weights, block_result, used, time.perf_counter() - began)


# ------------------------------------------------------------------------------ command line


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..cli import _data_arguments, device_argument

    p.add_argument("--checkpoint", required=True,
                   help="an intvit checkpoint (float or quantized; calibrated first if its "
                        "ranges are not)")
    _data_arguments(p, required=True)
    device_argument(p)
    g = p.add_argument_group("search")
    for op in SEARCH_OPS:
        g.add_argument(f"--{op}-list", default=",".join(DEFAULT_LISTS[op]),
                       help=f"comma-separated {op} approximations "
                            f"(default {','.join(DEFAULT_LISTS[op])})")
    g.add_argument("--per-block", action="store_true",
                   help="refine the best combination greedily, block by block")
    g.add_argument("--qat-top", type=int, default=0, metavar="K",
                   help="fine-tune the best K combinations briefly and re-evaluate")
    g.add_argument("--qat-steps", type=int, default=20, metavar="N", help="QAT steps")
    g.add_argument("--qat-lr", type=float, default=1e-5, help="QAT learning rate")
    g.add_argument("--calib-batches", type=int, default=8,
                   help="calibration batches when the checkpoint is not calibrated")
    p.add_argument("--out", default="runs/search", metavar="DIR",
                   help="search.md, search.json and pareto.png (default runs/search)")
    p.add_argument("--json", metavar="FILE", help="also write the JSON here")


def run(args: argparse.Namespace) -> int:
    """``intvit search``: 0 when at least one combination ran, 1 when all failed."""
    from ..cli import data_config, write_json
    from ..data import build_loader
    from ..models.checkpoint import load_checkpoint

    lists = check_lists(_names(args.gelu_list), _names(args.softmax_list),
                        _names(args.layernorm_list))
    model, meta = load_checkpoint(args.checkpoint)
    model.to(resolve_device(args.device))
    data = data_config(args, model, meta["info"])
    train_loader, val_loader = build_loader(data, "train"), build_loader(data, "val")
    if val_loader.num_classes != model.cfg.num_classes:
        raise SearchError(f"{args.data} has {val_loader.num_classes} classes, the checkpoint's "
                          f"model {model.cfg.num_classes}")
    result = search(model, val_loader, lists["gelu"], lists["softmax"], lists["layernorm"],
                    per_block=args.per_block, qat_top=args.qat_top, train_loader=train_loader,
                    qat_steps=args.qat_steps, qat_lr=args.qat_lr,
                    calib_batches=args.calib_batches)
    paths = result.write(args.out, "intvit " + " ".join(sys.argv[1:]))
    print(result.markdown())
    print(f"plot: {paths['plot']}  table: {paths['table']}  JSON: {paths['json']}")
    write_json(args.json, result.as_dict())
    write_run_manifest(args.out, command_line(),
                       {"checkpoint": args.checkpoint, "data": args.data},
                       paths | {"json": args.json})
    return 0 if result.ranking() else 1
