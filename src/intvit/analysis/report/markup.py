"""The HTML pieces of the report: its inline CSS, escaped text, cells and tables, record
tables, notes, sections and embedded PNG figures."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ...tables import format_value as fmt

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A metadata field longer than this is left to the raw data.
META_CHARS = 240

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


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def td(value: Any, spec: str = ".4g") -> str:
    """An HTML cell of :func:`~intvit.tables.format_value`; numbers get the class ``num``."""
    cls = ' class="num"' if is_number(value) else ""
    return f"<td{cls}>{esc(fmt(value, spec))}</td>"


def table(header: Sequence[str], rows: Iterable[str], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    attr = f' class="{cls}"' if cls else ""
    return (f'<div class="scroll"><table{attr}><thead><tr>{head}</tr></thead><tbody>'
            + "".join(rows) + "</tbody></table></div>")


def kv_table(pairs: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt(v))}</td></tr>"
                   for k, v in pairs if v not in (None, ""))
    return f'<div class="scroll"><table class="kv"><tbody>{rows}</tbody></table></div>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def warning(text: str | None) -> str:
    """A highlighted paragraph (an input that could not be read); nothing for None."""
    return f'<p class="warn">{esc(text)}</p>' if text else ""


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>\n{body}\n</section>\n'


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


def meta_table(meta: Mapping[str, Any]) -> str:
    """The scalar-ish fields around a JSON's records; long ones are left to the raw data."""
    flat = flatten(meta)
    short = [(k, v) for k, v in flat.items() if len(fmt(v)) <= META_CHARS]
    rest = len(flat) - len(short)
    more = note(f"{rest} longer fields: see the raw data") if rest else ""
    return (kv_table(short) if short else "") + more


def records_table(records: Sequence[Mapping[str, Any]], highlight: str | None = None,
                  rank: bool = True) -> str:
    """Any list of records as a table: one column per (flattened) key, in first-seen
    order; rows whose ``highlight`` key is true get the class ``pareto``, rows with an
    ``error`` the class ``failed``."""
    if not records:
        return note("no records")
    flat = [flatten(r) for r in records]
    columns = list(dict.fromkeys(k for r in flat for k in r))
    numbered = rank and not any(c.lower() in ("rank", "#") for c in columns)
    rows = []
    for i, r in enumerate(flat, 1):
        cls = (' class="pareto"' if highlight and r.get(highlight) is True
               else ' class="failed"' if r.get("error") else "")
        cells = ([td(i)] if numbered else []) + [td(r.get(c)) for c in columns]
        rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return table((["#"] if numbered else []) + columns, rows)


def png_data_uri(path: str | Path) -> str:
    """The PNG file as a ``data:image/png;base64,...`` URI; ValueError when the file is
    not a PNG (only PNGs are embedded)."""
    data = Path(path).read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{path} is not a PNG file")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure(path: Path, caption: str | None = None) -> str:
    """The PNG embedded with its caption (default its file name), or a warning saying why
    it was left out."""
    try:
        uri = png_data_uri(path)
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else err
        return f'<p class="warn">plot {esc(path.name)} left out: {esc(reason)}</p>'
    caption = path.name if caption is None else caption
    return (f'<figure><img src="{uri}" alt="{esc(path.stem)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")
