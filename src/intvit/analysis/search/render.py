"""A :class:`~.results.SearchResult` for people: the Markdown table, the accuracy-vs-cost
plot, and the files ``intvit search`` writes (``search.md``, ``search.json``,
``pareto.png``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from ...fileio import atomic_write, write_json, write_text
from ...tables import markdown_table
from .candidates import SEARCH_OPS
from .results import Entry, SearchResult


def human_number(value: float) -> str:
    """``value`` in three significant digits with k, M or G (``1.23M``)."""
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



def markdown(result: SearchResult) -> str:
    """The search as Markdown: a summary, the ranked table (failures last, with their
    messages) and, when it ran, the per-block choice of every block."""
    ranked = result.ranking()
    front = {id(e) for e in result.front()}
    qat = any(e.qat for e in result.entries)
    w = ", ".join(f"{k} {v}" for k, v in result.weights.items())
    shapes = "; ".join(f"{op} {t['elements']:,} elements ({t['rows']:,} rows)"
                       for op, t in result.op_totals().items())
    cfg = result.model_config
    lines = [f"**Approximation search** over gelu {{{', '.join(result.lists['gelu'])}}} x "
             f"softmax {{{', '.join(result.lists['softmax'])}}} x layernorm "
             f"{{{', '.join(result.lists['layernorm'])}}}: {len(result.entries)} "
             f"combinations, {len(result.failed)} failed; {cfg.get('arch')} dim "
             f"{cfg.get('embed_dim')} depth {cfg.get('depth')} "
             f"{cfg.get('img_size')}px; integer model on {result.images} images.", "",
             f"Cost: weighted integer ops per image ({w}); per image: {shapes}.", ""]
    cols = ["rank", "gelu", "softmax", "layernorm", "top-1 %", "loss"]
    cols += ["QAT top-1 %", "QAT loss"] if qat else []
    cols += ["cost/image", "gelu", "softmax", "layernorm", "widest bits", "requant bits",
             "Pareto"]
    rows = []
    for i, e in enumerate(ranked + result.failed, 1):
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
            row += [human_number(cost.weighted) + mark,
                    *(human_number(cost.by_op[op]) if op in cost.by_op else "float"
                      for op in SEARCH_OPS),
                    str(cost.widest_bits), str(cost.requant_bits)]
        row.append("yes" if id(e) in front else "")
        rows.append(row)
    lines.append(markdown_table(cols, rows))
    if result.per_block:
        pb = result.per_block
        groups_ops = [op for op in SEARCH_OPS if any(op in ops for _, ops in pb.groups)]
        lines += ["", f"**Per-block search** from {pb.start.candidate.label} "
                      f"(top-1 {_pct(pb.start.top1)}%, cost "
                      f"{human_number(pb.start.cost_value)}): top-1 {_pct(pb.best.top1)}%, "
                      f"loss {pb.best.loss:.4f}, cost {human_number(pb.best.cost_value)}; "
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



def plot(result: SearchResult, path: str | Path) -> Path:
    """Accuracy vs cost: every integer-only combination, the Pareto front highlighted,
    points labelled; the per-block result (star) and QAT results (hollow) if any."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(9, 6), constrained_layout=True)
    pool = [e for e in result.ranking() if math.isfinite(e.cost_value)]
    front = result.front()
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
    if result.per_block and math.isfinite(result.per_block.best.cost_value):
        best = result.per_block.best
        ax.scatter([best.cost_value], [best.top1], marker="*", s=300, color="tab:orange",
                   zorder=1, label=f"per-block: {best.candidate.label}")
    ax.set_xlabel("cost: weighted integer ops per image "
                  f"({', '.join(f'{k} {v}' for k, v in result.weights.items())})")
    ax.set_ylabel("top-1 % (integer model)")
    ax.set_title(f"gelu / softmax / layernorm search, {result.images} validation images",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(x=0.08, y=0.15)
    if pool:
        ax.legend(fontsize=8)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90,
                                               format=path.suffix[1:] or "png"))
    plt.close(fig)
    return path



def write(result: SearchResult, out: str | Path, command: str | None = None) -> dict[str, Path]:
    """``search.md`` (table and plot), ``search.json`` and ``pareto.png`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"plot": plot(result, out / "pareto.png"), "json": out / "search.json",
             "table": out / "search.md"}
    write_json(paths["json"], result.as_dict())
    header = "# Approximation search\n\n"
    if command:
        header += f"Generated by `{command}`.\n\n"
    write_text(paths["table"], header + markdown(result) + "\n![Pareto](pareto.png)\n")
    return paths
