"""The report as one HTML page: its sections in order under a navigation bar, written
atomically (:func:`build_report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...fileio import write_text
from .inputs import (ACCURACY_KINDS, ANALYSIS_KINDS, SEARCH_KINDS, PathLike, extra_sources,
                     load_input, png_paths)
from .markup import CSS, esc
from .sections import (accuracy_section, analysis_section, extra_section, raw_section,
                       search_section, summary_section)

DEFAULT_TITLE = "intvit report"


def render_report(analysis_json: Any = None, plots_dir: Any = None, search_json: Any = None,
                  search_plot: Any = None, accuracy_json: Any = None,
                  title: str = DEFAULT_TITLE, extra_tables: Any = None,
                  command: str | None = None, run_dir: PathLike | None = None) -> str:
    """The report's HTML text (see :func:`build_report`)."""
    from ... import __version__

    analysis = load_input("approximation analysis", analysis_json, ANALYSIS_KINDS)
    accuracy = load_input("accuracy", accuracy_json, ACCURACY_KINDS)
    search = load_input("search results", search_json, SEARCH_KINDS)
    extras = extra_sources(extra_tables)
    plots = png_paths(plots_dir)
    search_plots = png_paths(search_plot)
    sources = [accuracy, analysis, search, *(s for _, s in extras)]
    sections = [("summary", "Summary"), ("accuracy", "Accuracy"),
                ("analysis", "Approximation analysis"), ("search", "Search results")]
    if extras:
        sections.append(("extra", "More tables"))
    sections.append(("raw", "Raw data"))
    nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in sections)
    body = [summary_section(sources, plots + search_plots,
                            Path(run_dir) if run_dir else None, command, accuracy),
            accuracy_section(accuracy), analysis_section(analysis, plots),
            search_section(search, search_plots)]
    if extras:
        body.append(extra_section(extras))
    body.append(raw_section(sources))
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

    Every input is optional. The JSON inputs are paths of result files or results
    already loaded, each of the kind its section shows (the file says what it holds:
    :mod:`intvit.result_files`): ``analysis_json`` an ``analysis`` (``intvit analyze
    --json``), ``accuracy_json`` a ``demo`` result (a demo's ``results.json``: ``data``,
    ``fp32``, ``ptq``, ``qat``, any part missing) or an ``evaluation`` (``intvit eval
    --json``), ``search_json`` a ``search`` result, or a list of records; its records are
    rendered column by column, rows with a true ``pareto`` flag highlighted. An input of
    another kind, or without one, is not guessed at: its section says why it was left
    out and which command writes what it needs. ``plots_dir`` is a folder of PNGs
    (``<op>.png`` goes under its op's table) or a list of PNG paths; ``search_plot`` a
    PNG path or a list of them. ``extra_tables`` maps titles to records (a list of
    dicts, or a result that holds records, or the path of one) or text (str).
    ``command`` is the command line of the run, ``run_dir`` its folder (both shown in
    the summary)."""
    text = render_report(analysis_json, plots_dir, search_json, search_plot, accuracy_json,
                         title, extra_tables, command, run_dir)
    return write_text(Path(out_html), text)
