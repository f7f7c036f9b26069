"""``intvit demo``: the main job on a built-in default (see :mod:`intvit.demo`), then its
HTML report."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import fileio
from .common import device_argument, quant_arguments, quant_config


def demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="where to write results")
    quant_arguments(p)
    device_argument(p)


def run_demo(args: argparse.Namespace) -> int:
    from ..analysis.report import REPORT_FILE, build_report, discover
    from ..demo import run_demo as demo, table
    from . import build_parser
    from .analysis import run_analyze

    out = Path(args.out)
    analyze_args = build_parser().parse_args(["analyze", "--op", "all", "--out",
                                              str(out / "analysis"), "--json",
                                              str(out / "analysis" / "analysis.json")])
    analyze_args.command_line = args.command_line
    run_analyze(analyze_args)
    results = demo(out, quant_config(args), args.device)
    fileio.write_run_manifest(out, args.command_line, {}, {
        "analysis": out / "analysis", "results": out / "results.json",
        "engines": results["engines"]["program"], "report": out / REPORT_FILE})
    found = discover(out)
    engines = results["engines"]
    found["extra_tables"] = found.get("extra_tables", {}) | {
        "Engine parity: integer logits that differ from the eval-mode model's":
            [dict(engine=name, **counts) for name, counts in engines["parity"].items()],
        "Latency (ms; speed-up against PyTorch FP32 eager)": engines["latency"]}
    report = build_report(out / REPORT_FILE, title=f"intvit demo: {out}", run_dir=out,
                          **found)
    print(f"\n{table(results)}\n\nreport: {report} (open it in a browser)\n"
          f"results: {out}/results.json, checkpoints: {out}/, plots: {out}/analysis/")
    return 0
