"""Evaluated combinations (:class:`Entry`), their ranking and Pareto front, the per-block
search's steps (:class:`Trial`, :class:`PerBlockResult`) and the whole search's result
(:class:`SearchResult`), each with its JSON form."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ...result_files import tag_result
from ..hwcost import COST_WEIGHTS, HardwareCost, Site
from .candidates import Candidate


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
        return tag_result("search", {
                "model": self.model_config, "quant": self.quant, "lists": self.lists,
                "images": self.images, "calibration_batches": self.calibration_batches,
                "cost_weights": self.weights, "op_shapes": self.op_totals(),
                "sites": [s.__dict__ for s in self.sites],
                "entries": [record(e) for e in ordered],
                "best": best.as_dict() if best else None,
                "pareto": [e.candidate.label for e in self.front()],
                "best_after_qat": qat[0].as_dict() if qat else None,
                "per_block": self.per_block.as_dict() if self.per_block else None,
                "seconds": self.seconds})

    def markdown(self) -> str:
        """See :func:`.render.markdown`."""
        from .render import markdown

        return markdown(self)

    def plot(self, path: str | Path) -> Path:
        """See :func:`.render.plot`."""
        from .render import plot

        return plot(self, path)

    def write(self, out: str | Path, command: str | None = None) -> dict[str, Path]:
        """See :func:`.render.write`."""
        from .render import write

        return write(self, out, command)
