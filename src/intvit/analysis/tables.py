"""Markdown tables of an analysis (printed by the CLI and written to reports)."""

from __future__ import annotations

from pathlib import Path

from ..fileio import write_text
from .errors import OpAnalysis

COLUMNS = ("variant", "max abs err", "mean abs err", "rms err", "mul", "shift", "add",
           "div", "cmp", "per row", "widest bits", "requant bits")


def _row(name: str, result) -> list[str]:
    if result.error is not None:
        return [name, "n/a: " + result.error] + [""] * (len(COLUMNS) - 2)
    c = result.cost
    per_row = ", ".join(f"{v} {k}" for k, v in c["per_row"].items()) or "-"
    ints = [str(c[k]) for k in ("mul", "shift", "add", "div", "cmp")]
    if not c["integer_only"]:
        ints, per_row = ["float"] * 5, "-"
    widest = [str(c["widest_bits"]), str(c["requant_bits"])] if c["integer_only"] else ["-", "-"]
    return [name, f"{result.max_abs_error:.3g}", f"{result.mean_abs_error:.3g}",
            f"{result.rms_error:.3g}", *ints, per_row, *widest]


def markdown_table(analysis: OpAnalysis) -> str:
    lines = [f"**{analysis.op}** on {analysis.domain.describe()}, "
             f"{analysis.out_bits}-bit output (LSB {analysis.lsb:.3g})", "",
             "| " + " | ".join(COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for name, result in analysis.variants.items():
        lines.append("| " + " | ".join(_row(name, result)) + " |")
    return "\n".join(lines) + "\n"



def replace_between(path: str | Path, start: str, end: str, text: str) -> None:
    """Put ``text`` into the file at ``path`` between the marker lines ``start`` and
    ``end`` (generated tables in the README)."""
    path = Path(path)
    content = path.read_text()
    if start not in content or end not in content:
        raise ValueError(f"{path} has no {start} ... {end} markers")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    write_text(path, f"{head}{start}\n{text}\n{end}{tail}")
