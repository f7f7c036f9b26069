"""Text of table cells and Markdown tables: the one formatter every report, benchmark and
command-line table uses.

:func:`format_value` turns a value into a cell's text (numbers with a format spec,
booleans yes/no, containers as compact JSON, None empty); :func:`markdown_cell` does the
same and escapes what would break a Markdown row; :func:`markdown_table` writes the rows;
:func:`replace_between` puts a generated table into a file between two marker lines.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .fileio import write_text

ALIGNMENTS = {"l": "---", "r": "---:", "c": ":---:"}
"""Separator cell of each column alignment: ``l`` left (Markdown's default), ``r`` right,
``c`` centred."""


def format_value(value: Any, spec: str = ".4g") -> str:
    """A cell's text: floats with the format ``spec`` (NaN and infinities as ``nan``,
    ``inf``), integers as they are, booleans ``yes``/``no``, dicts, lists and tuples as
    compact JSON, None empty, anything else ``str(value)``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return format(value, spec)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


def markdown_cell(value: Any, spec: str = "") -> str:
    """:func:`format_value` of ``value`` (``spec`` "" writes floats as ``str`` does),
    with ``|`` escaped and newlines turned into spaces, so that it stays one cell."""
    return format_value(value, spec).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]],
                   align: str = "") -> str:
    """A Markdown table, one line per row, without a trailing newline.

    ``headers`` are the column titles; each row's cells are written with ``str`` as they
    are (format and escape them with :func:`markdown_cell`; a row may have fewer cells
    than there are headers). ``align`` holds one letter of :data:`ALIGNMENTS` per column;
    missing letters mean ``l``. Raises ValueError for another letter or more letters
    than columns."""
    if len(align) > len(headers):
        raise ValueError(f"align {align!r} has {len(align)} letters for {len(headers)} "
                         "columns")
    unknown = set(align) - set(ALIGNMENTS)
    if unknown:
        raise ValueError(f"align letters must be among {sorted(ALIGNMENTS)}, got "
                         f"{sorted(unknown)}")
    separator = [ALIGNMENTS[a] for a in align.ljust(len(headers), "l")]
    lines = [_row(headers), "|" + "".join(s + "|" for s in separator)]
    lines += [_row(row) for row in rows]
    return "\n".join(lines)


def _row(cells: Iterable[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def replace_between(path: str | Path, start: str, end: str, text: str) -> None:
    """Put ``text`` into the file at ``path`` between the marker lines ``start`` and
    ``end`` (generated tables in the README). Raises ValueError if a marker is missing."""
    path = Path(path)
    content = path.read_text()
    if start not in content or end not in content:
        raise ValueError(f"{path} has no {start} ... {end} markers")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    write_text(path, f"{head}{start}\n{text}\n{end}{tail}")
