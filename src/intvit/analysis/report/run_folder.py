"""The report of a run folder (``intvit report --run DIR``): its inputs found by what the
folder's run manifests and result files say they are, not by their contents' shape.

A result file goes to the input of the report that shows its kind (:data:`INPUT_OF_KIND`;
the file says its kind, :mod:`intvit.result_files`): first those named among the
outputs of the ``run.json`` of the folder and of its ``analysis/`` and ``search/``
folders (:func:`~intvit.fileio.read_run_manifest`), then the other ``.json`` files of
those folders. A folder written before result files said their kind has only the files
the commands write under their own names (:data:`STANDARD_FILES`): they go to their
sections, which say which command re-creates them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ...fileio import read_run_manifest
from ...result_files import result_kind
from .inputs import PathLike
from .page import DEFAULT_TITLE, build_report

REPORT_FILE = "report.html"
SUBFOLDERS = ("analysis", "search")
# The input of build_report that shows each kind of result.
INPUT_OF_KIND = {"analysis": "analysis_json", "demo": "accuracy_json",
                 "evaluation": "accuracy_json", "search": "search_json",
                 "sweep": "extra_tables"}
# The files each command writes under its own name, and the input each goes to.
STANDARD_FILES = (("analysis/analysis.json", "analysis_json"),
                  ("analysis.json", "analysis_json"),
                  ("results.json", "accuracy_json"),
                  ("search/search.json", "search_json"),
                  ("search.json", "search_json"),
                  ("sweep.json", "extra_tables"))


def _manifest_outputs(manifest: dict[str, Any]) -> Iterator[Path]:
    for value in manifest.get("outputs", {}).values():
        for path in value if isinstance(value, list) else [value]:
            if isinstance(path, str):
                yield Path(path)


def _result_files(root: Path, manifests: list[dict[str, Any]]) -> dict[str, Path]:
    """Input of build_report -> the result file it shows: the first file of its kind
    named in a manifest, else in the folder or its subfolders, else the command's own
    file name (which its section reads, and names the command that re-creates it)."""
    folders = [root, *(root / name for name in SUBFOLDERS)]
    tagged = [path for m in manifests for path in _manifest_outputs(m)]
    tagged += [path for folder in folders if folder.is_dir()
               for path in sorted(folder.glob("*.json"))]
    found: dict[str, Path] = {}
    for path in tagged:
        role = INPUT_OF_KIND.get(result_kind(path)) if path.suffix == ".json" else None
        if role is not None:
            found.setdefault(role, path)
    for name, role in STANDARD_FILES:
        if (root / name).is_file():
            found.setdefault(role, root / name)
    return found


def _pngs(folder: Path | None) -> list[Path]:
    return sorted(folder.glob("*.png")) if folder is not None and folder.is_dir() else []


def discover(run_dir: PathLike) -> dict[str, Any]:
    """The report's inputs found in a run folder of ``intvit demo`` (or of ``intvit
    analyze --out``, ``intvit search``, ``intvit sweep``): keyword arguments for
    :func:`~.page.build_report`, only those found. The command line comes from the
    folder's ``run.json`` (or its analysis folder's); ValueError if one of the folder's
    ``run.json`` files is not a manifest."""
    root = Path(run_dir)
    if not root.is_dir():
        raise ValueError(f"no run folder {root}")
    manifests = {folder: read_run_manifest(folder)
                 for folder in (root, *(root / name for name in SUBFOLDERS))
                 if folder.is_dir()}
    files = _result_files(root, [m for m in manifests.values() if m is not None])
    found: dict[str, Any] = {role: path for role, path in files.items()
                             if role != "extra_tables"}
    if "extra_tables" in files:
        found["extra_tables"] = {f"Sweep ({files['extra_tables'].name})":
                                 files["extra_tables"]}
    analysis = files.get("analysis_json")
    plot_dir = next((d for d in ([analysis.parent] if analysis else []) + [root / "analysis"]
                     if _pngs(d)), None)
    if plot_dir is not None:
        found["plots_dir"] = plot_dir
    search = files.get("search_json")
    search_dir = search.parent if search is not None else root / "search"
    if search_dir != plot_dir and _pngs(search_dir):
        found["search_plot"] = sorted(_pngs(search_dir),
                                      key=lambda p: ("pareto" not in p.stem, p.name))
    manifest = manifests.get(root) or (read_run_manifest(plot_dir) if plot_dir else None)
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
