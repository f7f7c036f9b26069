"""The Markdown table of one op's analysis (printed by the CLI and written to reports)."""

from __future__ import annotations

from ..tables import markdown_table as render_table
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
    """A caption line, then one row per variant: errors in real units and hardware cost."""
    rows = [_row(name, result) for name, result in analysis.variants.items()]
    return (f"**{analysis.op}** on {analysis.domain.describe()}, "
            f"{analysis.out_bits}-bit output (LSB {analysis.lsb:.3g})\n\n"
            + render_table(COLUMNS, rows) + "\n")
