"""One self-contained HTML report of a run (``intvit report``).

:func:`build_report` gathers what the other commands wrote - the approximation analysis
(``intvit analyze --json``) and its plots, the accuracy of the float, PTQ and QAT models
(``results.json`` of ``intvit demo``), the ranked combinations of ``intvit search`` and
its Pareto plot - into a single HTML file: inline CSS, every plot embedded as a base64
``data:image/png`` URI, no scripts and no reference to anything outside the file, so it
reads the same offline, attached to a mail or archived. Every text is HTML-escaped, and
every input is optional: a part that is missing, unreadable or not the kind of result
its section shows (each result file says what it holds, :mod:`intvit.result_files`)
leaves its section with a note saying why, instead of failing the report. The raw JSON
inputs are attached in collapsible ``<details>`` blocks.

:func:`write_run_report` is ``intvit report --run DIR``: it finds the result files of a
run folder by its run manifests and their kinds (:mod:`.run_folder`) and writes
``DIR/report.html``.

The parts: :mod:`.markup` (HTML pieces), :mod:`.inputs` (reading the inputs),
:mod:`.sections` (one function per section), :mod:`.page` (the page),
:mod:`.run_folder` (a run folder's inputs).
"""

from .markup import PNG_SIGNATURE, esc, flatten, png_data_uri, records_table
from .page import DEFAULT_TITLE, build_report, render_report
from .run_folder import REPORT_FILE, discover, write_run_report

__all__ = ["DEFAULT_TITLE", "PNG_SIGNATURE", "REPORT_FILE", "build_report", "discover",
           "esc", "flatten", "png_data_uri", "records_table", "render_report",
           "write_run_report"]
