"""One self-contained HTML report of a run (``intvit report``).

:func:`build_report` gathers what the other commands wrote - the approximation analysis
(``intvit analyze --json``) and its plots, the accuracy of the float, PTQ and QAT models
(``results.json`` of ``intvit demo``), the ranked combinations of ``intvit search`` and
its Pareto plot - into a single HTML file: inline CSS, every plot embedded as a base64
``data:image/png`` URI, no scripts and no reference to anything outside the file, so it
reads the same offline, attached to a mail or archived. Every text is HTML-escaped, and
every input is optional: a part that is missing (or unreadable) leaves its section with a
note instead of failing the report. The raw JSON inputs are attached in collapsible
``<details>`` blocks.

:func:`write_run_report` is ``intvit report --run DIR``: it finds the files of a run folder written by
``intvit demo`` (``analysis/analysis.json`` and ``analysis/*.png``, ``results.json``,
``search/*.json`` and ``search/*.png``; a sweep's ``sweep.json``) and writes
``DIR/report.html``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import platform
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..fileio import read_run_manifest, write_text
from ..tables import format_value as fmt

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPORT_FILE = "report.html"
DEFAULT_TITLE = "intvit report"

# The accuracy rows of a demo's results.json, in order, with their labels.
ACCURACY_ROWS = (("fp32", "FP32 (float)"), ("ptq", "PTQ (integer model)"),
                 ("qat", "QAT (integer model)"))
# Keys of a search record that mark it as Pareto-optimal.
PARETO_KEYS = ("pareto", "pareto_optimal", "on_front", "front")
# Where a JSON object keeps its records (`intvit search` writes them under "entries").
RECORD_KEYS = ("entries", "records", "results", "combinations", "ranking", "ranked", "rows",
               "runs")
# A metadata field longer than this is left to the raw data.
META_CHARS = 240
COST_KEYS = ("mul", "shift", "add", "div", "cmp")

PathLike = str | Path

CSS = """
:root { --fg: #1d2330; --muted: #5b6474; --line: #d7dce4; --head: #eef1f6;
        --accent: #2a5db0; --good: #e6f4ea; --bad: #fdecea; --warn: #fff6dd; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial,
       sans-serif; color: var(--fg); margin: 0 auto; max-width: 1200px; padding: 1.2em 2em 4em; }
h1 { font-size: 1.7em; margin: .2em 0 .4em; }
h2 { font-size: 1.3em; margin-top: 2em; padding-bottom: .2em;
     border-bottom: 2px solid var(--line); }
h3 { font-size: 1.08em; margin: 1.6em 0 .3em; }
nav { margin: .4em 0 1em; color: var(--muted); }
nav a { color: var(--accent); text-decoration: none; margin-right: 1.1em; }
p.note { color: var(--muted); font-style: italic; }
p.warn { background: var(--warn); padding: .4em .7em; border-radius: 4px; }
.scroll { overflow-x: auto; margin: .5em 0 1em; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: .25em .6em; text-align: left;
         vertical-align: top; }
th { background: var(--head); font-weight: 600; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.failed td { background: var(--bad); }
tr.pareto td { background: var(--good); }
tr.best td:first-child { font-weight: 700; }
table.kv th { text-align: left; }
figure { margin: .8em 0 1.5em; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 12px; }
details { margin: .4em 0; border: 1px solid var(--line); border-radius: 4px;
          padding: .3em .7em; }
summary { cursor: pointer; font-weight: 600; }
pre { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
      white-space: pre-wrap; word-break: break-word; background: #f7f8fa;
      padding: .6em; overflow-x: auto; max-height: 40em; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
footer { margin-top: 3em; color: var(--muted); font-size: 12px; }
@media print { details { display: none; } figure img { max-width: 90%; } }
"""


def esc(value: Any) -> str:
    """HTML-escaped text of any value (quotes included: safe in attributes too)."""
    return html.escape("" if value is None else str(value), quote=True)


# ------------------------------------------------------------------------------ inputs


class _Source:
    """One input: the loaded object, where it came from, and why it could not be read."""

    def __init__(self, label: str, value: Any = None, path: Path | None = None,
                 problem: str | None = None):
        self.label, self.value, self.path, self.problem = label, value, path, problem

    @property
    def present(self) -> bool:
        return self.value is not None


def _load_json(label: str, given: Any) -> _Source:
    """A JSON input given as a path, or already loaded (a dict or a list)."""
    if given is None:
        return _Source(label)
    if isinstance(given, (dict, list)):
        return _Source(label, given)
    path = Path(given)
    try:
        return _Source(label, json.loads(path.read_text()), path)
    except OSError as err:
        return _Source(label, path=path, problem=f"could not read {path}: {err.strerror or err}")
    except ValueError as err:
        return _Source(label, path=path, problem=f"{path} is not valid JSON: {err}")


def _png_paths(given: PathLike | Iterable[PathLike] | None) -> list[Path]:
    """The PNG files of a folder (sorted), or the paths given."""
    if given is None:
        return []
    if isinstance(given, (str, Path)):
        path = Path(given)
        if path.is_dir():
            return sorted(p for p in path.iterdir() if p.suffix.lower() == ".png")
        return [path]
    return [Path(p) for p in given]


def png_data_uri(path: PathLike) -> str:
    """The PNG file as a ``data:image/png;base64,...`` URI; ValueError when the file is
    not a PNG (only PNGs are embedded)."""
    data = Path(path).read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{path} is not a PNG file")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure(path: Path, caption: str | None = None) -> str:
    try:
        uri = png_data_uri(path)
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else err
        return f'<p class="warn">plot {esc(path.name)} left out: {esc(reason)}</p>'
    caption = path.name if caption is None else caption
    return (f'<figure><img src="{uri}" alt="{esc(path.stem)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


# ------------------------------------------------------------------------------ formatting


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _td(value: Any, spec: str = ".4g") -> str:
    """An HTML cell of :func:`~intvit.tables.format_value`; numbers get the class ``num``."""
    cls = ' class="num"' if _is_number(value) else ""
    return f"<td{cls}>{esc(fmt(value, spec))}</td>"


def _table(header: Sequence[str], rows: Iterable[str], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    attr = f' class="{cls}"' if cls else ""
    return (f'<div class="scroll"><table{attr}><thead><tr>{head}</tr></thead><tbody>'
            + "".join(rows) + "</tbody></table></div>")


def _kv_table(pairs: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt(v))}</td></tr>"
                   for k, v in pairs if v not in (None, ""))
    return f'<div class="scroll"><table class="kv"><tbody>{rows}</tbody></table></div>'


def _meta_table(meta: Mapping[str, Any]) -> str:
    """The scalar-ish fields around a JSON's records; long ones are left to the raw data."""
    flat = flatten(meta)
    short = [(k, v) for k, v in flat.items() if len(fmt(v)) <= META_CHARS]
    rest = len(flat) - len(short)
    more = _note(f"{rest} longer fields: see the raw data") if rest else ""
    return (_kv_table(short) if short else "") + more


def _note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def _problem(source: _Source) -> str:
    return f'<p class="warn">{esc(source.problem)}</p>' if source.problem else ""


def flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys: ``{"cost": {"mul": 3}}`` -> ``{"cost.mul": 3}``."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _records(value: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The records of a list-of-records JSON and its other top-level fields: a list of
    dicts, or a dict holding one (under a key of RECORD_KEYS, else the longest list of
    dicts)."""
    if isinstance(value, list):
        return [r if isinstance(r, dict) else {"value": r} for r in value], {}
    if isinstance(value, dict):
        lists = {k: v for k, v in value.items()
                 if isinstance(v, list) and all(isinstance(r, dict) for r in v)}
        if lists:
            key = next((k for k in RECORD_KEYS if k in lists),
                       max(lists, key=lambda k: len(lists[k])))
            return list(lists[key]), {k: v for k, v in value.items() if k != key}
        return [value], {}
    return [{"value": value}], {}


def records_table(records: Sequence[Mapping[str, Any]], highlight: str | None = None,
                  rank: bool = True) -> str:
    """Any list of records as a table: one column per (flattened) key, in first-seen
    order; rows whose ``highlight`` key is true get the class ``pareto``, rows with an
    ``error`` the class ``failed``."""
    if not records:
        return _note("no records")
    flat = [flatten(r) for r in records]
    columns = list(dict.fromkeys(k for r in flat for k in r))
    numbered = rank and not any(c.lower() in ("rank", "#") for c in columns)
    rows = []
    for i, r in enumerate(flat, 1):
        cls = (' class="pareto"' if highlight and r.get(highlight) is True
               else ' class="failed"' if r.get("error") else "")
        cells = ([_td(i)] if numbered else []) + [_td(r.get(c)) for c in columns]
        rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return _table((["#"] if numbered else []) + columns, rows)


# ------------------------------------------------------------------------------ sections


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>\n{body}\n</section>\n'


def _newest(paths: Iterable[Path | None]) -> str | None:
    stamps = [p.stat().st_mtime for p in paths if p is not None and p.is_file()]
    if not stamps:
        return None
    return _dt.datetime.fromtimestamp(max(stamps)).astimezone().isoformat(timespec="seconds")


def _summary(sources: list[_Source], plots: list[Path], run_dir: Path | None,
             command: str | None, accuracy: _Source) -> str:
    from .. import __version__

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
    return _section("summary", "Summary", _kv_table(pairs))


def _accuracy(source: _Source) -> str:
    if not source.present:
        return _section("accuracy", "Accuracy", _problem(source) + _note(
            "no accuracy results in this report (results.json of `intvit demo`)"))
    value = source.value
    entries: list[tuple[str, dict]] = []
    if isinstance(value, dict) and _is_number(value.get("top1")):
        entries.append(("model", value))  # one evaluation (`intvit eval --json`)
    elif isinstance(value, dict):
        known = dict(ACCURACY_ROWS)
        for key, label in ACCURACY_ROWS:
            if isinstance(value.get(key), dict):
                entries.append((label, value[key]))
        for key, part in value.items():  # any other evaluation it holds
            if key not in known and isinstance(part, dict) and "top1" in part:
                entries.append((key, part))
    if not entries:
        return _section("accuracy", "Accuracy",
                        _note("the accuracy input holds no evaluation (no top1 figures)"))
    fp32 = value.get("fp32") if isinstance(value, dict) else None
    base = fp32.get("top1") if isinstance(fp32, dict) else None
    rows = []
    for label, r in entries:
        top1 = r.get("top1")
        diff = (top1 - base) if _is_number(top1) and _is_number(base) else None
        cells = [f"<td>{esc(label)}</td>", _td(top1, ".2f"),
                 f'<td class="num">{esc("" if diff is None else format(diff, "+.2f"))}</td>',
                 _td(r.get("top3"), ".2f"), _td(r.get("top5"), ".2f"),
                 _td(r.get("loss"), ".4f"), _td(r.get("images_per_s"), ".1f"),
                 _td(r.get("images"))]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    body = _table(["model", "top-1 (%)", "vs FP32 (points)", "top-3 (%)", "top-5 (%)",
                   "loss", "images/s", "images"], rows)
    if base is None:
        body += _note("no FP32 baseline: the differences are left empty")
    missing = [label for key, label in ACCURACY_ROWS
               if isinstance(value, dict) and "top1" not in value and key not in value]
    if missing:
        body += _note("missing: " + ", ".join(missing))
    return _section("accuracy", "Accuracy", body)


def _op_entries(value: Any) -> list[dict]:
    """The per-op entries of an analysis JSON: {"ops": [...]}, one op, or a list."""
    if isinstance(value, dict) and isinstance(value.get("ops"), list):
        value = value["ops"]
    elif isinstance(value, dict):
        value = [value]
    return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []


def _variant_row(name: str, result: Any, lsb: Any, best: str | None) -> str:
    if not isinstance(result, dict) or "error" in result:
        message = result.get("error") if isinstance(result, dict) else result
        return (f'<tr class="failed"><td>{esc(name)}</td>'
                f'<td colspan="13">n/a: {esc(message)}</td></tr>')
    cost = result.get("cost") if isinstance(result.get("cost"), dict) else {}
    integer = cost.get("integer_only", True)
    max_err = result.get("max_abs_error")
    in_lsb = max_err / lsb if _is_number(max_err) and _is_number(lsb) and lsb else None
    cells = [f"<td>{esc(name)}</td>", _td(max_err, ".3g"),
             _td(result.get("mean_abs_error"), ".3g"), _td(result.get("rms_error"), ".3g"),
             _td(in_lsb, ".2f")]
    if integer:
        per_row = cost.get("per_row")
        per_row = (", ".join(f"{v} {k}" for k, v in per_row.items()) or "-"
                   if isinstance(per_row, dict) else fmt(per_row))
        cells += [_td(cost.get(k)) for k in COST_KEYS]
        cells += [f"<td>{esc(per_row)}</td>", _td(cost.get("widest_bits")),
                  _td(cost.get("requant_bits")), "<td>yes</td>"]
    else:
        cells += ["<td>float</td>"] * 5 + ["<td>-</td>"] * 3 + ["<td>no</td>"]
    cls = ' class="best"' if name == best else ""
    return f"<tr{cls}>{''.join(cells)}</tr>"


def _best_integer(variants: dict) -> str | None:
    """The integer-only variant with the smallest max error (bold in the table)."""
    ran = [(r["max_abs_error"], n) for n, r in variants.items()
           if isinstance(r, dict) and _is_number(r.get("max_abs_error"))
           and not math.isnan(r["max_abs_error"]) and "error" not in r
           and (r.get("cost") if isinstance(r.get("cost"), dict) else {})
           .get("integer_only", True)]
    return min(ran)[1] if ran else None


def _analysis(source: _Source, plots: list[Path]) -> str:
    parts = [_problem(source)]
    entries = _op_entries(source.value) if source.present else []
    by_stem = {p.stem: p for p in plots}
    shown: set[Path] = set()
    if entries:
        parts.append(_note("errors are output minus the exact float function, in real "
                           "units; costs are integer operations per element (and per row); "
                           "bold: the integer-only variant with the smallest max error"))
    elif source.present:
        parts.append(_note("the analysis input holds no per-op results"))
    for entry in entries:
        op = str(entry.get("op", "?"))
        domain = entry.get("domain") if isinstance(entry.get("domain"), dict) else {}
        lsb = entry.get("output_lsb")
        parts.append(f'<h3 id="op-{esc(re.sub(r"[^A-Za-z0-9_-]", "-", op))}">{esc(op)}</h3>')
        parts.append(_note(f"{domain.get('description', 'domain not given')}; "
                           f"{fmt(entry.get('out_bits'))}-bit output, LSB {fmt(lsb, '.3g')}"))
        variants = entry.get("variants") if isinstance(entry.get("variants"), dict) else {}
        best = _best_integer(variants)
        rows = [_variant_row(str(n), r, lsb, best) for n, r in variants.items()]
        parts.append(_table(["variant", "max abs err", "mean abs err", "rms err",
                             "max err (LSB)", *COST_KEYS, "per row", "widest bits",
                             "requant bits", "integer only"], rows)
                     if rows else _note("no variants"))
        if op in by_stem:
            parts.append(_figure(by_stem[op], f"{op}: the variants against the exact "
                                              f"function ({by_stem[op].name})"))
            shown.add(by_stem[op])
    rest = [p for p in plots if p not in shown]
    if rest:
        parts.append("<h3>Plots</h3>" if entries else "")
        parts += [_figure(p) for p in rest]
    if not entries and not rest and not source.problem:
        parts.append(_note("no approximation analysis in this report "
                           "(`intvit analyze --json FILE --out DIR`)"))
    return _section("analysis", "Approximation analysis", "\n".join(parts))


def _search(source: _Source, plots: list[Path]) -> str:
    parts = [_problem(source)]
    if source.present:
        records, meta = _records(source.value)
        if meta:
            parts.append(_meta_table(meta))
        flag = next((k for k in PARETO_KEYS
                     if any(isinstance(r, dict) and k in r for r in records)), None)
        ranked = f"{len(records)} combinations, in the order of the search"
        if flag:
            count = sum(1 for r in records if r.get(flag) is True)
            ranked += f"; highlighted: the {count} on the Pareto front ({flag})"
        parts.append(_note(ranked))
        parts.append(records_table(records, highlight=flag))
    parts += [_figure(p) for p in plots]
    if not source.present and not plots and not source.problem:
        parts.append(_note("no search results in this report (`intvit search`)"))
    return _section("search", "Search results", "\n".join(parts))


def _extra(tables: list[tuple[str, _Source]]) -> str:
    parts = []
    for title, source in tables:
        parts.append(f"<h3>{esc(title)}</h3>")
        parts.append(_problem(source))
        if isinstance(source.value, str):
            parts.append(f"<pre>{esc(source.value)}</pre>")
        elif source.present:
            records, meta = _records(source.value)
            if meta:
                parts.append(_meta_table(meta))
            parts.append(records_table(records))
    return _section("extra", "More tables", "\n".join(parts))


def _raw(sources: list[_Source]) -> str:
    blocks = []
    for s in sources:
        if not s.present or isinstance(s.value, str):
            continue
        text = json.dumps(s.value, indent=2, default=str)
        where = f" - {s.path}" if s.path else ""
        blocks.append(f"<details><summary>{esc(s.label)}{esc(where)} "
                      f"({len(text):,} characters)</summary><pre>{esc(text)}</pre></details>")
    body = "\n".join(blocks) or _note("no JSON inputs")
    return _section("raw", "Raw data", body)


def _extra_sources(extra_tables: Any) -> list[tuple[str, _Source]]:
    """``extra_tables``: a mapping (or pairs) of title to records (a list of dicts, or a
    dict), a Path of a JSON file, or a str shown as preformatted text."""
    if not extra_tables:
        return []
    items = extra_tables.items() if isinstance(extra_tables, Mapping) else extra_tables
    out = []
    for title, value in items:
        if isinstance(value, str):
            out.append((str(title), _Source(str(title), value)))
        else:
            out.append((str(title), _load_json(str(title), value)))
    return out


# ------------------------------------------------------------------------------ the report


def render_report(analysis_json: Any = None, plots_dir: Any = None, search_json: Any = None,
                  search_plot: Any = None, accuracy_json: Any = None,
                  title: str = DEFAULT_TITLE, extra_tables: Any = None,
                  command: str | None = None, run_dir: PathLike | None = None) -> str:
    """The report's HTML text (see :func:`build_report`)."""
    analysis = _load_json("approximation analysis", analysis_json)
    accuracy = _load_json("accuracy", accuracy_json)
    search = _load_json("search results", search_json)
    extras = _extra_sources(extra_tables)
    plots = _png_paths(plots_dir)
    search_plots = _png_paths(search_plot)
    sources = [accuracy, analysis, search, *(s for _, s in extras)]
    sections = [("summary", "Summary"), ("accuracy", "Accuracy"),
                ("analysis", "Approximation analysis"), ("search", "Search results")]
    if extras:
        sections.append(("extra", "More tables"))
    sections.append(("raw", "Raw data"))
    nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in sections)
    body = [_summary(sources, plots + search_plots,
                     Path(run_dir) if run_dir else None, command, accuracy),
            _accuracy(accuracy), _analysis(analysis, plots), _search(search, search_plots)]
    if extras:
        body.append(_extra(extras))
    body.append(_raw(sources))
    from .. import __version__

    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<meta name="generator" content="intvit {esc(__version__)}">\n'
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"<header><h1>{esc(title)}</h1><nav>{nav}</nav></header>\n<main>\n"
            + "".join(body)
            + f"</main>\n<footer>written by intvit {esc(__version__)}; self-contained: "
              "plots embedded, no external resources.</footer>\n</body>\n</html>\n")


def build_report(out_html: PathLike, analysis_json: Any = None, plots_dir: Any = None,
                 search_json: Any = None, search_plot: Any = None, accuracy_json: Any = None,
                 title: str = DEFAULT_TITLE, extra_tables: Any = None, *,
                 command: str | None = None, run_dir: PathLike | None = None) -> Path:
    """Write one self-contained HTML report and return its path.

    Every input is optional. The JSON inputs are paths or already-loaded objects:
    ``analysis_json`` as ``intvit analyze --json`` writes it (``{"ops": [...]}`` or one
    op), ``accuracy_json`` a demo's ``results.json`` (``{"data", "fp32", "ptq", "qat"}``,
    any part missing) or one evaluation, ``search_json`` any list of records (or a dict
    holding one), rendered column by column, rows with a true ``pareto`` flag
    highlighted. ``plots_dir`` is a folder of PNGs (``<op>.png`` goes under its op's
    table) or a list of PNG paths; ``search_plot`` a PNG path or a list of them.
    ``extra_tables`` maps titles to records, JSON paths (Path) or text (str).
    ``command`` is the command line of the run, ``run_dir`` its folder (both shown in
    the summary)."""
    out = Path(out_html)
    text = render_report(analysis_json, plots_dir, search_json, search_plot, accuracy_json,
                         title, extra_tables, command, run_dir)
    return write_text(out, text)


# ------------------------------------------------------------------------------ a run folder


def _first(*candidates: Path) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def _has_records(path: Path) -> bool:
    try:
        records, _ = _records(json.loads(path.read_text()))
    except (OSError, ValueError):
        return False
    return bool(records)


def discover(run_dir: PathLike) -> dict[str, Any]:
    """The report's inputs found in a run folder of ``intvit demo`` (or of ``intvit
    analyze --out``, ``intvit search``, ``intvit sweep``): keyword arguments for
    :func:`build_report`, only those found. The command line comes from the folder's
    ``run.json`` (or its analysis folder's); ValueError if that file is not a manifest."""
    root = Path(run_dir)
    if not root.is_dir():
        raise ValueError(f"no run folder {root}")
    found: dict[str, Any] = {}
    analysis = _first(root / "analysis" / "analysis.json", root / "analysis.json")
    if analysis is None:  # any analyze JSON: one with "ops", or one op with "variants"
        for path in sorted((root / "analysis").glob("*.json")) + sorted(root.glob("*.json")):
            try:
                value = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(value, dict) and ("ops" in value or "variants" in value):
                analysis = path
                break
    if analysis is not None:
        found["analysis_json"] = analysis
    plot_dir = next((d for d in ([analysis.parent] if analysis else []) + [root / "analysis"]
                     if d.is_dir() and any(d.glob("*.png"))), None)
    if plot_dir is not None:
        found["plots_dir"] = plot_dir
    results = _first(root / "results.json")
    if results is not None:
        found["accuracy_json"] = results
    search_dir = root / "search"
    if search_dir.is_dir():
        jsons = sorted(search_dir.glob("*.json"),
                       key=lambda p: (p.stem != "search", "search" not in p.stem, p.name))
        search = next((p for p in jsons if _has_records(p)), None)
        if search is not None:
            found["search_json"] = search
        pngs = sorted(search_dir.glob("*.png"), key=lambda p: ("pareto" not in p.stem, p.name))
        if pngs:
            found["search_plot"] = pngs
    sweep = _first(root / "sweep.json")
    if sweep is not None:
        found["extra_tables"] = {"Sweep (sweep.json)": sweep}
    manifest = read_run_manifest(root) or (read_run_manifest(plot_dir) if plot_dir else None)
    if manifest is not None:  # folders written before run.json existed show no command
        found["command"] = manifest["command"]
    return found


def write_run_report(run_dir: PathLike, out: PathLike | None = None,
                     title: str | None = None) -> Path:
    """The report of a run folder (``intvit report --run DIR``): its inputs found by
    :func:`discover`, written to ``out`` (default ``DIR/report.html``) under ``title``
    (default ``intvit report: DIR``); ValueError when the folder holds nothing to report."""
    root = Path(run_dir)
    found = discover(root)
    if not found or set(found) <= {"command"}:
        raise ValueError(f"nothing to report in {root}: no analysis/analysis.json, "
                         f"analysis/*.png, results.json, search/ or sweep.json")
    path = Path(out) if out else root / REPORT_FILE
    return build_report(path, title=title or f"{DEFAULT_TITLE}: {root}", run_dir=root,
                        **found)
