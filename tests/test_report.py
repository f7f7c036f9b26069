"""The self-contained HTML report (``intvit report``): every section, plots embedded as
PNG data: URIs, nothing fetched from outside, all text escaped, optional inputs optional,
and the discovery of a demo's run folder."""

import argparse
import base64
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from intvit.analysis import report  # noqa: E402
from intvit.analysis.report import PNG_SIGNATURE, build_report  # noqa: E402
from intvit.cli import analysis as analysis_cli  # noqa: E402
from intvit.fileio import RUN_MANIFEST, write_run_manifest  # noqa: E402

SECTIONS = {"summary", "accuracy", "analysis", "search", "raw"}
EVIL = "<script>alert('x')</script>"
CHROMIUM = Path("/usr/bin/chromium")


class Page(HTMLParser):
    """The parsed report: tags with their attributes, ids, and the text."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str) -> list[dict]:
        return [attrs for t, attrs in self.tags if t == tag]

    @property
    def ids(self) -> set[str]:
        return {attrs["id"] for _, attrs in self.tags if attrs.get("id")}

    @property
    def plain(self) -> str:
        return "".join(self.text)


def write_png(path: Path, color: str = "tab:blue") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1, 2], [0, 1, 0], color=color)
    fig.savefig(path, dpi=40)
    plt.close(fig)
    return path


def variant(max_err: float, integer: bool = True) -> dict:
    return {"max_abs_error": max_err, "mean_abs_error": max_err / 4, "rms_error": max_err / 3,
            "cost": {"mul": 2, "shift": 3, "add": 4, "div": 0, "cmp": 2, "per_row": {},
                     "widest_bits": 24, "requant_bits": 40, "integer_only": integer}}


ANALYSIS = {"kind": "analysis", "records": "ops", "ops": [
    {"op": "gelu", "out_bits": 8, "output_lsb": 0.0625,
     "domain": {"bits": 8, "description": "every 8-bit integer at scale 0.0625"},
     "variants": {"float": variant(0.03, integer=False), "ivit": variant(0.19),
                  EVIL: variant(0.05), "ivit_n_18": {"error": "constant too wide <16 bits>"}}},
    {"op": "softmax", "out_bits": 8, "output_lsb": 0.0039,
     "domain": {"description": "256 rows of 197 logits"},
     "variants": {"ivit": dict(variant(0.001), cost=dict(variant(0)["cost"],
                                                         per_row={"div": 1}))}},
]}
RESULTS = {"kind": "demo", "data": "synthetic",
           "fp32": {"top1": 80.0, "top3": 95.0, "top5": 98.0, "loss": 0.61,
                    "images_per_s": 900.0, "images": 2000},
           "ptq": {"top1": 78.5, "top3": 94.0, "top5": 97.5, "loss": 0.70,
                   "images_per_s": 120.0, "images": 2000},
           "qat": {"top1": 79.25, "top3": 94.5, "top5": 97.9, "loss": 0.65,
                   "images_per_s": 118.0, "images": 2000}}
SEARCH = [
    {"gelu": "ibert", "softmax": "ivit", "layernorm": "ivit", "top1": 79.1, "loss": 0.66,
     "cost": {"ops": 120, "widest_bits": 32}, "pareto": True},
    {"gelu": "ivit", "softmax": "ppoly", "layernorm": EVIL, "top1": 78.0, "loss": 0.71,
     "cost": {"ops": 150, "widest_bits": 40}, "pareto": False},
    {"gelu": "ppoly", "softmax": "ibert", "layernorm": "ivit", "top1": 77.2, "loss": 0.75,
     "cost": {"ops": 90, "widest_bits": 24}, "pareto": True},
]


@pytest.fixture
def inputs(tmp_path):
    plots = tmp_path / "plots"
    files = {"analysis_json": tmp_path / "analysis.json", "plots_dir": plots,
             "search_json": tmp_path / "search.json",
             "search_plot": write_png(tmp_path / "pareto.png", "tab:red"),
             "accuracy_json": tmp_path / "results.json"}
    files["analysis_json"].write_text(json.dumps(ANALYSIS))
    files["accuracy_json"].write_text(json.dumps(RESULTS))
    files["search_json"].write_text(json.dumps({"kind": "search", "records": "entries",
                                                "entries": SEARCH}))
    write_png(plots / "gelu.png")
    write_png(plots / "softmax.png", "tab:green")
    write_png(plots / "extra.png", "tab:orange")
    return files


def build(tmp_path, **kwargs) -> tuple[Path, str, Page]:
    path = build_report(tmp_path / "out" / "report.html", **kwargs)
    text = path.read_text(encoding="utf-8")
    return path, text, Page(text)


def decoded_images(page: Page) -> list[bytes]:
    out = []
    for attrs in page.all("img"):
        src = attrs["src"]
        assert src.startswith("data:image/png;base64,"), src[:60]
        out.append(base64.b64decode(src.split(",", 1)[1], validate=True))
    return out


def test_report_parses_and_has_every_section(tmp_path, inputs):
    path, text, page = build(tmp_path, title="tiny run", command="intvit demo --out x",
                             **inputs)
    assert path == tmp_path / "out" / "report.html"
    assert text.startswith("<!DOCTYPE html>")
    assert SECTIONS <= page.ids
    assert [a["id"] for a in page.all("section")] == ["summary", "accuracy", "analysis",
                                                      "search", "raw"]
    assert {a["href"] for a in page.all("a")} == {f"#{s}" for s in SECTIONS}
    plain = page.plain
    for needle in ("tiny run", "intvit demo --out x", "intvit version", "synthetic",
                   "report generated", "gelu", "softmax", "ivit_n_18", "ibert"):
        assert needle in plain, needle
    # The raw inputs, collapsible, one per JSON input.
    assert len(page.all("details")) == 3
    assert '"max_abs_error": 0.19' in plain


def test_every_plot_is_an_embedded_png(tmp_path, inputs):
    _, _, page = build(tmp_path, **inputs)
    images = decoded_images(page)
    files = [inputs["plots_dir"] / n for n in ("gelu.png", "softmax.png", "extra.png")]
    files.append(inputs["search_plot"])
    assert len(images) == len(files)
    assert all(data.startswith(PNG_SIGNATURE) for data in images)
    assert sorted(images) == sorted(f.read_bytes() for f in files)


def test_no_external_resources(tmp_path, inputs):
    _, text, page = build(tmp_path, **inputs)
    for tag, attrs in page.tags:
        for name in ("src", "href", "srcset", "action", "data", "poster"):
            value = attrs.get(name) or ""
            assert not value.lower().startswith(("http:", "https:", "//", "file:")), \
                (tag, name, value[:80])
    assert "http://" not in text and "https://" not in text
    assert not page.all("script") and not page.all("link") and not page.all("iframe")
    assert "url(" not in text and "@import" not in text
    assert len(page.all("style")) == 1  # the CSS is inline


def test_text_is_escaped(tmp_path, inputs):
    _, text, page = build(tmp_path, title=f"title {EVIL}", **inputs)
    assert "<script" not in text.lower()
    assert not page.all("script")
    assert "&lt;script&gt;" in text
    # Escaped, the names read as they were given: variant, search record, title.
    assert page.plain.count(EVIL) >= 4
    assert "constant too wide <16 bits>" in page.plain


def test_tables_hold_the_numbers(tmp_path, inputs):
    _, text, page = build(tmp_path, **inputs)
    plain = page.plain
    # Accuracy: top-1 and the difference to FP32.
    for needle in ("80.00", "78.50", "-1.50", "79.25", "-0.75", "+0.00", "0.6100"):
        assert needle in plain, needle
    # Analysis: errors, max error in LSBs, costs, the failed variant's message.
    assert "0.19" in plain and "3.04" in plain and "1 div" in plain
    assert text.count('class="failed"') == 1
    assert text.count('class="best"') == 2  # one per op
    # Search: every (flattened) column, the Pareto rows highlighted.
    headers = [t for t, _ in page.tags if t == "th"]
    assert headers
    for column in ("gelu", "softmax", "layernorm", "top1", "loss", "cost.ops",
                   "cost.widest_bits", "pareto"):
        assert f"<th>{column}</th>" in text, column
    assert text.count('class="pareto"') == 2


def test_missing_inputs_are_tolerated(tmp_path):
    _, text, page = build(tmp_path)
    assert SECTIONS <= page.ids
    assert not page.all("img")
    assert "no accuracy results" in page.plain and "no search results" in page.plain

    partial = {"kind": "demo", "fp32": {"top1": 70.0}, "qat": {"top1": 69.0, "loss": 1.0}}
    missing = tmp_path / "does-not-exist.json"
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "broken.png").write_bytes(b"not a png")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    _, text, page = build(tmp_path, analysis_json=missing, accuracy_json=partial,
                          search_json=bad, plots_dir=tmp_path / "plots",
                          extra_tables={"notes": "free <b>text</b>",
                                        "records": [{"a": 1, "b": None}]})
    plain = page.plain
    assert "-1.00" in plain and "missing: PTQ (integer model)" in plain
    assert "could not read" in plain and "is not valid JSON" in plain
    assert "broken.png left out" in plain and not page.all("img")
    assert "free <b>text</b>" in plain and "<b>" not in text
    assert "extra" in page.ids


def test_accuracy_of_one_evaluation_and_analysis_of_one_op(tmp_path, inputs):
    one_op = {"kind": "analysis", "records": "ops", "ops": [ANALYSIS["ops"][1]]}
    evaluation = {"kind": "evaluation", **RESULTS["ptq"]}
    wrapped = {"kind": "search", "records": "results", "objective": "top1", "results": SEARCH}
    _, _, page = build(tmp_path, analysis_json=one_op, accuracy_json=evaluation,
                       search_json=wrapped)
    plain = page.plain
    assert "78.50" in plain and "softmax" in plain and "objective" in plain
    assert "no FP32 baseline" in plain
    assert "3 combinations" in plain


def search_entry(rank, gelu, top1, weighted, pareto, error=None) -> dict:
    cost = {"weighted": weighted, "by_op": {"gelu": weighted // 2}, "counts": {"mul": 7},
            "widest_bits": 32, "requant_bits": 48, "widest_by_op": {"gelu": 32},
            "integer_only": True, "float_ops": []}
    return {"rank": rank, "pareto": pareto, "label": f"{gelu}/ivit/ivit",
            "candidate": {"gelu": gelu, "softmax": "ivit", "layernorm": "ivit",
                          "overrides": {}},
            "top1": top1, "top5": None if error else 99.0, "loss": None if error else 0.5,
            "cost": None if error else cost, "error": error, "seconds": 1.5, "qat": None,
            "images": 64}


def test_search_json_as_intvit_search_writes_it(tmp_path):
    """An object with its records under "entries", longer lists of other dicts beside."""
    search = {"kind": "search", "records": "entries", "model": {"depth": 2}, "images": 64, "lists": {"gelu": ["ivit", "ibert"]},
              "sites": [{"name": f"blocks.{i}.mlp.act", "op": "gelu"} for i in range(12)],
              "entries": [search_entry(1, "ibert", 80.0, 1000, True),
                          search_entry(2, "ivit", 79.0, 900, True),
                          search_entry(None, "bad", None, 0, False, error="overflow <!>")],
              "pareto": ["ivit/ivit/ivit", "ibert/ivit/ivit"], "seconds": 12.5}
    _, text, page = build(tmp_path, search_json=search)
    for column in ("rank", "label", "candidate.gelu", "cost.weighted", "cost.by_op.gelu",
                   "cost.counts.mul", "top1", "error"):
        assert f"<th>{column}</th>" in text, column
    assert "<th>#</th>" not in text  # the records have their own rank
    assert "<th>op</th>" not in text  # the sites are not taken for the records
    assert text.count('class="pareto"') == 2 and text.count('class="failed"') == 1
    assert "3 combinations" in page.plain and "overflow <!>" in page.plain
    assert "images" in page.plain and "longer fields" in page.plain


def make_run(root: Path) -> Path:
    analysis = root / "analysis"
    analysis.mkdir(parents=True)
    (analysis / "analysis.json").write_text(json.dumps(ANALYSIS))
    (analysis / "approximations.md").write_text("# x\n")
    write_run_manifest(root, "intvit demo --out r", {}, {"analysis": analysis})
    write_png(analysis / "gelu.png")
    write_png(analysis / "softmax.png")
    (root / "results.json").write_text(json.dumps(RESULTS))
    (root / "search").mkdir()
    (root / "search" / "search.json").write_text(json.dumps(
        {"kind": "search", "records": "combinations", "combinations": SEARCH}))
    write_png(root / "search" / "pareto.png", "tab:red")
    return root


def test_discover_without_manifest_has_no_command_and_rejects_a_foreign_one(tmp_path):
    root = make_run(tmp_path / "demo")
    (root / RUN_MANIFEST).unlink()
    found = report.discover(root)
    assert "command" not in found and found["accuracy_json"] == root / "results.json"
    (root / RUN_MANIFEST).write_text(json.dumps({"command": "x"}))
    with pytest.raises(ValueError, match="not an intvit run manifest"):
        report.discover(root)


def untagged(value: dict) -> dict:
    return {k: v for k, v in value.items() if k not in ("kind", "records")}


def test_result_files_without_their_kind_are_not_guessed_at(tmp_path):
    """A run folder written before result files said what they hold: every section says
    so and names the command that re-creates its file; nothing is read from them."""
    root = tmp_path / "old"
    (root / "analysis").mkdir(parents=True)
    (root / "analysis" / "analysis.json").write_text(json.dumps(untagged(ANALYSIS)))
    (root / "results.json").write_text(json.dumps(untagged(RESULTS)))
    (root / "search").mkdir()
    (root / "search" / "search.json").write_text(json.dumps({"entries": SEARCH}))
    (root / "sweep.json").write_text(json.dumps([{"run": "01_gelu=ivit", "status": "ok"}]))
    plain = Page(report.write_run_report(root).read_text()).plain
    assert plain.count('does not say what it holds (no "kind" field)') == 4
    for command in ("`intvit analyze --json FILE`", "`intvit demo` (its results.json)",
                    "`intvit search` (its search.json)"):
        assert f"re-create it with {command}" in plain, command
    assert "or `intvit sweep` (its sweep.json)" in plain  # a table of any kind of records
    assert "ivit_n_18" not in plain and "79.25" not in plain and "01_gelu" not in plain
    assert "no JSON inputs" in plain


def test_a_result_of_another_kind_or_without_its_records_is_named(tmp_path):
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"kind": "sweep", "records": "runs", "runs": []}))
    _, _, page = build(tmp_path, search_json=sweep, accuracy_json={"kind": "mystery"},
                       analysis_json={"kind": "analysis", "records": "layers", "ops": []},
                       extra_tables={"runs": {"kind": "sweep", "records": "runs",
                                              "runs": [1, 2]}})
    plain = page.plain
    assert (f"{sweep} holds sweep results (written by `intvit sweep` (its sweep.json)), "
            "not search results (written by `intvit search` (its search.json))") in plain
    assert "the accuracy input holds results of an unknown kind 'mystery'" in plain
    assert ('its "records" field must name a list of objects in the file, got \'layers\'; '
            "re-create it with `intvit analyze --json FILE`") in plain
    assert "the runs input: its \"records\" field must name a list of objects" in plain
    assert "no approximation analysis" not in plain and "0 combinations" not in plain


def test_discover_follows_the_manifests_and_the_kinds(tmp_path):
    """``intvit search --out DIR`` beside an analysis whose JSON is elsewhere: each result
    file is found through a run.json or in the folder, and taken for the kind it says; a
    JSON that says no kind is taken for nothing."""
    root = tmp_path / "run"
    (root / "analysis").mkdir(parents=True)
    ranked = root / "ranked.json"
    ranked.write_text(json.dumps({"kind": "search", "records": "entries", "entries": SEARCH}))
    elsewhere = tmp_path / "elsewhere" / "a.json"
    elsewhere.parent.mkdir()
    elsewhere.write_text(json.dumps(ANALYSIS))
    (root / "analysis" / "ops.json").write_text(json.dumps(untagged(ANALYSIS)))
    write_run_manifest(root, "intvit search --out run", {}, {
        "plot": write_png(root / "pareto.png"), "records": ranked, "json": None})
    write_run_manifest(root / "analysis", "intvit analyze --out run/analysis", {},
                       {"json": elsewhere})
    found = report.discover(root)
    assert found == {"search_json": ranked, "search_plot": [root / "pareto.png"],
                     "analysis_json": elsewhere, "command": "intvit search --out run"}

    (root / "analysis" / "run.json").unlink()
    evaluation = root / "analysis" / "eval.json"
    evaluation.write_text(json.dumps({"kind": "evaluation", **RESULTS["ptq"]}))
    found = report.discover(root)
    assert "analysis_json" not in found and found["accuracy_json"] == evaluation


def report_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="intvit report")
    analysis_cli.report_arguments(parser)
    return parser.parse_args(argv)


def test_run_discovers_a_demo_folder(tmp_path, capsys):
    root = make_run(tmp_path / "demo")
    found = report.discover(root)
    assert found["analysis_json"] == root / "analysis" / "analysis.json"
    assert found["plots_dir"] == root / "analysis"
    assert found["accuracy_json"] == root / "results.json"
    assert found["search_json"] == root / "search" / "search.json"
    assert found["search_plot"] == [root / "search" / "pareto.png"]
    assert found["command"] == "intvit demo --out r"

    assert analysis_cli.run_report(report_args("--run", str(root))) == 0
    out = root / "report.html"
    assert capsys.readouterr().out.strip() == str(out)
    text = out.read_text()
    page = Page(text)
    assert SECTIONS <= page.ids
    assert len(decoded_images(page)) == 3
    assert "intvit demo --out r" in page.plain and "79.25" in page.plain
    assert text.count('class="pareto"') == 2

    other = tmp_path / "elsewhere" / "r.html"
    assert analysis_cli.run_report(report_args("--run", str(root), "--out", str(other),
                                  "--title", "T")) == 0
    assert other.is_file() and "<title>T</title>" in other.read_text()


def test_run_on_a_folder_with_only_results(tmp_path, capsys):
    root = tmp_path / "partial"
    root.mkdir()
    (root / "results.json").write_text(json.dumps({"kind": "demo", "fp32": RESULTS["fp32"]}))
    assert analysis_cli.run_report(report_args("--run", str(root))) == 0
    assert "no approximation analysis" in Page((root / "report.html").read_text()).plain


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p])
def test_run_without_anything_to_report_is_an_error(tmp_path, make):
    with pytest.raises(ValueError):
        analysis_cli.run_report(report_args("--run", str(make(tmp_path))))


def test_report_of_a_real_analysis(tmp_path):
    """The schema `intvit analyze` really writes (one op, two variants)."""
    from intvit.cli import main

    out = tmp_path / "run" / "analysis"
    assert main(["analyze", "--op", "gelu", "--variants", "float,ivit", "--out", str(out),
                 "--json", str(out / "analysis.json")]) == 0
    assert analysis_cli.run_report(report_args("--run", str(tmp_path / "run"))) == 0
    page = Page((tmp_path / "run" / "report.html").read_text())
    assert len(decoded_images(page)) == 1
    assert "ivit" in page.plain and "every 8-bit integer" in page.plain


def test_arguments_leave_args_run_to_the_cli(tmp_path):
    """The CLI keeps each command's function in ``args.run``: --run must not take it."""
    parser = argparse.ArgumentParser()
    analysis_cli.report_arguments(parser)
    parser.set_defaults(run=analysis_cli.run_report)
    args = parser.parse_args(["--run", str(tmp_path)])
    assert args.run is analysis_cli.run_report and args.run_dir == str(tmp_path)


def test_run_folder_of_a_sweep(tmp_path, capsys):
    records = [{"run": "01_gelu=ivit", "params": {"gelu": "ivit"}, "status": "ok",
                "best_top1": 71.5}]
    (tmp_path / "sweep.json").write_text(json.dumps({"kind": "sweep", "records": "runs",
                                                     "runs": records}))
    assert analysis_cli.run_report(report_args("--run", str(tmp_path))) == 0
    text = (tmp_path / "report.html").read_text()
    assert "<th>params.gelu</th>" in text and "71.5" in text
    assert "extra" in Page(text).ids


def test_cli_report_command(tmp_path, capsys):
    from intvit.cli import COMMANDS, main

    if "report" not in COMMANDS:
        pytest.skip("`intvit report` is not registered in intvit.cli yet")
    root = make_run(tmp_path / "demo")
    assert main(["report", "--run", str(root)]) == 0
    assert capsys.readouterr().out.strip() == str(root / "report.html")
    assert main(["report", "--run", str(tmp_path / "nothing")]) == 2


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium")
def test_renders_offline_in_headless_chromium(tmp_path):
    """The report renders with every network route closed: a solid red plot shows."""
    import numpy as np

    red = tmp_path / "plots" / "red.png"
    red.parent.mkdir()
    plt.imsave(red, np.tile(np.array([1.0, 0.0, 0.0]), (120, 400, 1)))
    path = build_report(tmp_path / "report.html", plots_dir=red.parent)
    shot = tmp_path / "shot.png"
    profile = tmp_path / "profile"
    try:
        subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
                        f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9",
                        "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1000,1400",
                        f"--screenshot={shot}", path.resolve().as_uri()],
                       capture_output=True, timeout=90, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip("chromium did not finish in time")
    if not shot.is_file():
        pytest.skip("chromium wrote no screenshot here")
    pixels = plt.imread(shot)[..., :3]
    reds = (pixels[..., 0] > 0.9) & (pixels[..., 1] < 0.1) & (pixels[..., 2] < 0.1)
    assert reds.sum() > 10_000  # the embedded image, decoded and drawn
    shutil.rmtree(profile, ignore_errors=True)
