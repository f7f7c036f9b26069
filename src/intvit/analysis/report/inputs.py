"""The report's inputs: each JSON input read as the kind of result its section shows (the
file says what it holds, :mod:`intvit.result_files`), the PNG plots, the extra tables.

An input is a path of a result file, a loaded result (a dict with its ``"kind"``), or a
list of records built by the caller. An input that cannot be read - missing, not JSON,
without a kind, of another kind, with no list of records - keeps the reason in
``Source.problem``, which its section shows instead of failing the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ...result_files import RESULT_KINDS, ResultFileError, check_result, read_result, \
    result_records

PathLike = str | Path

# The kinds each section shows.
ACCURACY_KINDS = ("demo", "evaluation")
ANALYSIS_KINDS = ("analysis",)
SEARCH_KINDS = ("search",)
RECORD_KINDS = tuple(name for name, kind in RESULT_KINDS.items() if kind.records)


class Source:
    """One input: the loaded value, where it came from, and why it could not be read."""

    def __init__(self, label: str, value: Any = None, path: Path | None = None,
                 problem: str | None = None):
        self.label, self.value, self.path, self.problem = label, value, path, problem

    @property
    def present(self) -> bool:
        return self.value is not None

    @property
    def where(self) -> str:
        return str(self.path) if self.path else f"the {self.label} input"

    @property
    def kind(self) -> str | None:
        """The result kind of a tagged input; None for the caller's list of records."""
        return self.value.get("kind") if isinstance(self.value, dict) else None


def load_input(label: str, given: Any, kinds: Sequence[str]) -> Source:
    """An input given as a path of a result file of one of ``kinds``, as such a result
    already loaded, or as a list of records (the caller's own table)."""
    if given is None:
        return Source(label)
    if isinstance(given, list):
        return Source(label, given)
    try:
        if isinstance(given, dict):
            return Source(label, check_result(given, f"the {label} input", kinds))
        path = Path(given)
        return Source(label, read_result(path, kinds), path)
    except ResultFileError as err:
        return Source(label, path=None if isinstance(given, dict) else Path(given),
                      problem=str(err))


def source_records(source: Source) -> tuple[list[dict[str, Any]], dict[str, Any], str | None]:
    """The records of a present input and its other fields, or the problem that there are
    none: the caller's list itself, or the list a result's ``"records"`` names."""
    if isinstance(source.value, list):
        return [r if isinstance(r, dict) else {"value": r} for r in source.value], {}, None
    try:
        records, meta = result_records(source.value, source.where)
    except ResultFileError as err:
        return [], {}, str(err)
    return records, meta, None


def png_paths(given: PathLike | Iterable[PathLike] | None) -> list[Path]:
    """The PNG files of a folder (sorted), or the paths given."""
    if given is None:
        return []
    if isinstance(given, (str, Path)):
        path = Path(given)
        if path.is_dir():
            return sorted(p for p in path.iterdir() if p.suffix.lower() == ".png")
        return [path]
    return [Path(p) for p in given]


def extra_sources(extra_tables: Any) -> list[tuple[str, Source]]:
    """``extra_tables``: a mapping (or pairs) of title to records (a list of dicts, or a
    result that holds records), a path of such a result file, or a str shown as
    preformatted text."""
    if not extra_tables:
        return []
    items = extra_tables.items() if isinstance(extra_tables, Mapping) else extra_tables
    out = []
    for title, value in items:
        if isinstance(value, str):
            out.append((str(title), Source(str(title), value)))
        else:
            out.append((str(title), load_input(str(title), value, RECORD_KINDS)))
    return out
