"""What a JSON file of results holds, said by the file itself.

Every result file that intvit writes for other tools to read back (the ``--json FILE`` of
``analyze``, ``eval``, ``calibrate``, ``train``, ``bench``, ``verify`` and ``inspect``, a
demo's ``results.json``, ``search.json``, ``sweep.json``, and the ``--json FILE`` of the
scripts in ``benchmarks/``) is a JSON object whose ``"kind"`` names what it is (a key of
:data:`RESULT_KINDS`) and, for a kind that holds a list of records, whose ``"records"``
names the key of that list::

    {"kind": "sweep", "records": "runs", "sweep": "sweep.yaml", "runs": [{...}, ...]}

:func:`tag_result` adds the two fields to what a writer writes (:func:`write_result`
writes the file); :func:`check_result`
and :func:`read_result` take them back, and :func:`result_records` gives the records. A
file without a kind (written before intvit named its results, or not one of intvit's),
of a kind other than the one asked for, or whose ``"records"`` names no list of objects
is a :class:`ResultFileError` that says which command writes the kind asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .fileio import write_json


class ResultFileError(ValueError):
    """A result file that cannot be read as the kind asked for; the message says why and
    which command writes that kind."""


@dataclass(frozen=True)
class ResultKind:
    """One kind of result file: its name, the command that writes it (named in
    messages), and the key of its list of records (None: the file is one result)."""

    name: str
    command: str
    records: str | None = None


RESULT_KINDS: dict[str, ResultKind] = {kind.name: kind for kind in (
    ResultKind("analysis", "`intvit analyze --json FILE`", records="ops"),
    ResultKind("layer-analysis", "`intvit analyze --from-stats STATS --json FILE`",
               records="layers"),
    ResultKind("evaluation", "`intvit eval --json FILE` or `intvit calibrate --json FILE`"),
    ResultKind("training", "`intvit train --json FILE`", records="history"),
    ResultKind("bench", "`intvit bench --json FILE`", records="rows"),
    ResultKind("verify", "`intvit verify --json FILE`"),
    ResultKind("golden-verify", "`intvit verify --golden DIR --json FILE`"),
    ResultKind("program-graph", "`intvit inspect PROGRAM --json FILE`", records="nodes"),
    ResultKind("onnx-nodes", "`intvit inspect FILE.onnx --json FILE`", records="nodes"),
    ResultKind("demo", "`intvit demo` (its results.json)"),
    ResultKind("search", "`intvit search` (its search.json)", records="entries"),
    ResultKind("sweep", "`intvit sweep` (its sweep.json)", records="runs"),
    ResultKind("eval-speed-benchmark", "`python benchmarks/eval_speed.py --json FILE`",
               records="rows"),
    ResultKind("accuracy-benchmark",
               "`python benchmarks/accuracy.py --json FILE` (and its run folder's "
               "accuracy.json)", records="rows"),
    ResultKind("qat-step-benchmark", "`python benchmarks/qat_step.py --json FILE`",
               records="results"),
    ResultKind("gpu-check", "`python benchmarks/gpu_check.py --json FILE` (`make gpu-check`)"),
)}
KIND_FIELD, RECORDS_FIELD = "kind", "records"


def _kind(name: str) -> ResultKind:
    if name not in RESULT_KINDS:
        raise ValueError(f"unknown result kind {name!r}; kinds: {', '.join(RESULT_KINDS)}")
    return RESULT_KINDS[name]


def tag_result(kind: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """``payload`` with ``"kind"`` first and, for a kind with records, ``"records"``
    naming its list (which ``payload`` must hold)."""
    entry = _kind(kind)
    tags: dict[str, Any] = {KIND_FIELD: kind}
    if entry.records is not None:
        if not isinstance(payload.get(entry.records), list):
            raise ValueError(f"a {kind} result holds its records as a list under "
                             f"{entry.records!r}")
        tags[RECORDS_FIELD] = entry.records
    clash = set(tags) & set(payload)
    if clash:
        raise ValueError(f"a {kind} result's own fields may not be named {sorted(clash)}")
    return tags | dict(payload)


def write_result(path: str | Path, kind: str, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` to ``path`` (atomically, as indented JSON) as a result of
    ``kind`` (:func:`tag_result`)."""
    return write_json(path, tag_result(kind, payload))


def _commands(kinds: Sequence[str]) -> str:
    return " or ".join(_kind(k).command for k in kinds)


def check_result(value: Any, where: str, kinds: Sequence[str]) -> dict[str, Any]:
    """``value`` (loaded JSON, from ``where``) when it is a result of one of ``kinds``;
    ResultFileError otherwise."""
    if not isinstance(value, dict) or not isinstance(value.get(KIND_FIELD), str):
        raise ResultFileError(
            f"{where} does not say what it holds (no \"{KIND_FIELD}\" field): it was "
            f"written before intvit named its results, or by another program; re-create "
            f"it with {_commands(kinds)}")
    kind = value[KIND_FIELD]
    if kind not in kinds:
        known = RESULT_KINDS.get(kind)
        what = (f"{kind} results (written by {known.command})" if known
                else f"results of an unknown kind {kind!r}")
        raise ResultFileError(f"{where} holds {what}, not {' or '.join(kinds)} results "
                              f"(written by {_commands(kinds)})")
    return value


def read_result(path: str | Path, kinds: Sequence[str]) -> dict[str, Any]:
    """The result file at ``path`` when it is one of ``kinds``; ResultFileError when it
    cannot be read, is not JSON, or is not such a result."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except OSError as err:
        raise ResultFileError(f"could not read {path}: {err.strerror or err}") from None
    except ValueError as err:
        raise ResultFileError(f"{path} is not valid JSON: {err}") from None
    return check_result(value, str(path), kinds)


def result_kind(path: str | Path) -> str | None:
    """The kind a JSON file says it holds; None when it cannot be read or says none."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    kind = value.get(KIND_FIELD) if isinstance(value, dict) else None
    return kind if isinstance(kind, str) else None


def result_records(value: Mapping[str, Any], where: str
                   ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The records of a result (the list its ``"records"`` names) and its other fields
    (the two tags left out); ResultFileError when ``"records"`` names no list of
    objects."""
    key = value.get(RECORDS_FIELD)
    records = value.get(key) if isinstance(key, str) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        kind = RESULT_KINDS.get(str(value.get(KIND_FIELD)))
        again = f"; re-create it with {kind.command}" if kind else ""
        raise ResultFileError(f"{where}: its \"{RECORDS_FIELD}\" field must name a list of "
                              f"objects in the file, got {key!r}{again}")
    return list(records), {k: v for k, v in value.items()
                           if k not in (KIND_FIELD, RECORDS_FIELD, key)}
