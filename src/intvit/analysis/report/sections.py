"""The sections of the report, each from its inputs (:mod:`.inputs`): the summary, the
accuracy of the float, PTQ and QAT models, the approximation analysis per op, the search
results, the extra tables and the raw JSON."""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import re
from pathlib import Path
from typing import Any, Iterable

from ...tables import format_value as fmt
from .inputs import Source, source_records
from .markup import (esc, figure, is_number, kv_table, meta_table, note, records_table,
                     section, table, td, warning)

# The accuracy rows of a demo's results.json, in order, with their labels.
ACCURACY_ROWS = (("fp32", "FP32 (float)"), ("ptq", "PTQ (integer model)"),
                 ("qat", "QAT (integer model)"))
# Keys of a search record that mark it as Pareto-optimal.
PARETO_KEYS = ("pareto", "pareto_optimal", "on_front", "front")
COST_KEYS = ("mul", "shift", "add", "div", "cmp")


def _newest(paths: Iterable[Path | None]) -> str | None:
    stamps = [p.stat().st_mtime for p in paths if p is not None and p.is_file()]
    if not stamps:
        return None
    return _dt.datetime.fromtimestamp(max(stamps)).astimezone().isoformat(timespec="seconds")


def summary_section(sources: list[Source], plots: list[Path], run_dir: Path | None,
             command: str | None, accuracy: Source) -> str:
    from ... import __version__

    acc = accuracy.value if isinstance(accuracy.value, dict) else {}
    present = [s.label + (f" ({s.path.name})" if s.path else "") for s in sources if s.present]
    pairs = [("run folder", str(run_dir) if run_dir else None),
             ("command line", command),
             ("data set", acc.get("data") if isinstance(acc.get("data"), str) else None),
             ("inputs", ", ".join(present) or "none"),
             ("plots", f"{len(plots)} PNG" if plots else "none"),
             ("inputs written", _newest([s.path for s in sources] + plots)),
             ("report generated",
              _dt.datetime.now().astimezone().isoformat(timespec="seconds")),
             ("intvit version", __version__),
             ("Python", platform.python_version())]
    return section("summary", "Summary", kv_table(pairs))


def accuracy_section(source: Source) -> str:
    if not source.present:
        return section("accuracy", "Accuracy", warning(source.problem) + note(
            "no accuracy results in this report (results.json of `intvit demo`)"))
    value = source.value
    entries: list[tuple[str, dict]] = []
    if source.kind == "evaluation":
        entries.append(("model", value))
    elif source.kind == "demo":
        known = dict(ACCURACY_ROWS)
        for key, label in ACCURACY_ROWS:
            if isinstance(value.get(key), dict):
                entries.append((label, value[key]))
        for key, part in value.items():  # any other evaluation it holds
            if key not in known and isinstance(part, dict) and "top1" in part:
                entries.append((key, part))
    if not entries:
        return section("accuracy", "Accuracy",
                        note("the accuracy input holds no evaluation (no top1 figures)"))
    fp32 = value.get("fp32") if source.kind == "demo" else None
    base = fp32.get("top1") if isinstance(fp32, dict) else None
    rows = []
    for label, r in entries:
        top1 = r.get("top1")
        diff = (top1 - base) if is_number(top1) and is_number(base) else None
        cells = [f"<td>{esc(label)}</td>", td(top1, ".2f"),
                 f'<td class="num">{esc("" if diff is None else format(diff, "+.2f"))}</td>',
                 td(r.get("top3"), ".2f"), td(r.get("top5"), ".2f"),
                 td(r.get("loss"), ".4f"), td(r.get("images_per_s"), ".1f"),
                 td(r.get("images"))]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    body = table(["model", "top-1 (%)", "vs FP32 (points)", "top-3 (%)", "top-5 (%)",
                   "loss", "images/s", "images"], rows)
    if base is None:
        body += note("no FP32 baseline: the differences are left empty")
    missing = [label for key, label in ACCURACY_ROWS
               if source.kind == "demo" and key not in value]
    if missing:
        body += note("missing: " + ", ".join(missing))
    return section("accuracy", "Accuracy", body)


def _variant_row(name: str, result: Any, lsb: Any, best: str | None) -> str:
    if not isinstance(result, dict) or "error" in result:
        message = result.get("error") if isinstance(result, dict) else result
        return (f'<tr class="failed"><td>{esc(name)}</td>'
                f'<td colspan="13">n/a: {esc(message)}</td></tr>')
    cost = result.get("cost") if isinstance(result.get("cost"), dict) else {}
    integer = cost.get("integer_only", True)
    max_err = result.get("max_abs_error")
    in_lsb = max_err / lsb if is_number(max_err) and is_number(lsb) and lsb else None
    cells = [f"<td>{esc(name)}</td>", td(max_err, ".3g"),
             td(result.get("mean_abs_error"), ".3g"), td(result.get("rms_error"), ".3g"),
             td(in_lsb, ".2f")]
    if integer:
        per_row = cost.get("per_row")
        per_row = (", ".join(f"{v} {k}" for k, v in per_row.items()) or "-"
                   if isinstance(per_row, dict) else fmt(per_row))
        cells += [td(cost.get(k)) for k in COST_KEYS]
        cells += [f"<td>{esc(per_row)}</td>", td(cost.get("widest_bits")),
                  td(cost.get("requant_bits")), "<td>yes</td>"]
    else:
        cells += ["<td>float</td>"] * 5 + ["<td>-</td>"] * 3 + ["<td>no</td>"]
    cls = ' class="best"' if name == best else ""
    return f"<tr{cls}>{''.join(cells)}</tr>"


def _best_integer(variants: dict) -> str | None:
    """The integer-only variant with the smallest max error (bold in the table)."""
    ran = [(r["max_abs_error"], n) for n, r in variants.items()
           if isinstance(r, dict) and is_number(r.get("max_abs_error"))
           and not math.isnan(r["max_abs_error"]) and "error" not in r
           and (r.get("cost") if isinstance(r.get("cost"), dict) else {})
           .get("integer_only", True)]
    return min(ran)[1] if ran else None


def analysis_section(source: Source, plots: list[Path]) -> str:
    entries, _, problem = source_records(source) if source.present else ([], {}, None)
    parts = [warning(source.problem or problem)]
    by_stem = {p.stem: p for p in plots}
    shown: set[Path] = set()
    if entries:
        parts.append(note("errors are output minus the exact float function, in real "
                           "units; costs are integer operations per element (and per row); "
                           "bold: the integer-only variant with the smallest max error"))
    elif source.present:
        parts.append(note("the analysis input holds no per-op results"))
    for entry in entries:
        op = str(entry.get("op", "?"))
        domain = entry.get("domain") if isinstance(entry.get("domain"), dict) else {}
        lsb = entry.get("output_lsb")
        parts.append(f'<h3 id="op-{esc(re.sub(r"[^A-Za-z0-9_-]", "-", op))}">{esc(op)}</h3>')
        parts.append(note(f"{domain.get('description', 'domain not given')}; "
                           f"{fmt(entry.get('out_bits'))}-bit output, LSB {fmt(lsb, '.3g')}"))
        variants = entry.get("variants") if isinstance(entry.get("variants"), dict) else {}
        best = _best_integer(variants)
        rows = [_variant_row(str(n), r, lsb, best) for n, r in variants.items()]
        parts.append(table(["variant", "max abs err", "mean abs err", "rms err",
                             "max err (LSB)", *COST_KEYS, "per row", "widest bits",
                             "requant bits", "integer only"], rows)
                     if rows else note("no variants"))
        if op in by_stem:
            parts.append(figure(by_stem[op], f"{op}: the variants against the exact "
                                              f"function ({by_stem[op].name})"))
            shown.add(by_stem[op])
    rest = [p for p in plots if p not in shown]
    if rest:
        parts.append("<h3>Plots</h3>" if entries else "")
        parts += [figure(p) for p in rest]
    if not entries and not rest and not (source.problem or problem):
        parts.append(note("no approximation analysis in this report "
                           "(`intvit analyze --json FILE --out DIR`)"))
    return section("analysis", "Approximation analysis", "\n".join(parts))


def search_section(source: Source, plots: list[Path]) -> str:
    records, meta, problem = source_records(source) if source.present else ([], {}, None)
    parts = [warning(source.problem or problem)]
    if source.present and not problem:
        if meta:
            parts.append(meta_table(meta))
        flag = next((k for k in PARETO_KEYS if any(k in r for r in records)), None)
        ranked = f"{len(records)} combinations, in the order of the search"
        if flag:
            count = sum(1 for r in records if r.get(flag) is True)
            ranked += f"; highlighted: the {count} on the Pareto front ({flag})"
        parts.append(note(ranked))
        parts.append(records_table(records, highlight=flag))
    parts += [figure(p) for p in plots]
    if not source.present and not plots and not source.problem:
        parts.append(note("no search results in this report (`intvit search`)"))
    return section("search", "Search results", "\n".join(parts))


def extra_section(tables: list[tuple[str, Source]]) -> str:
    parts = []
    for title, source in tables:
        parts.append(f"<h3>{esc(title)}</h3>")
        parts.append(warning(source.problem))
        if isinstance(source.value, str):
            parts.append(f"<pre>{esc(source.value)}</pre>")
        elif source.present:
            records, meta, problem = source_records(source)
            if meta:
                parts.append(meta_table(meta))
            parts.append(warning(problem) if problem else records_table(records))
    return section("extra", "More tables", "\n".join(parts))


def raw_section(sources: list[Source]) -> str:
    blocks = []
    for s in sources:
        if not s.present or isinstance(s.value, str):
            continue
        text = json.dumps(s.value, indent=2, default=str)
        where = f" - {s.path}" if s.path else ""
        blocks.append(f"<details><summary>{esc(s.label)}{esc(where)} "
                      f"({len(text):,} characters)</summary><pre>{esc(text)}</pre></details>")
    body = "\n".join(blocks) or note("no JSON inputs")
    return section("raw", "Raw data", body)
