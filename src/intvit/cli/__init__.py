"""The ``intvit`` command line: one sub-command per job, kept in a registry.

Each command group lives in its own module of this package (``analysis``, ``train``,
``sweep``, ``evaluate``, ``engine``, ``bench``, ``demo``), which parses the flags into
typed configurations and calls the library. :data:`COMMANDS` names, for each command, its
help text and the module and functions that add its flags and run it; the module is
imported only when its parser is built or it runs, so ``intvit --help`` and ``intvit
analyze`` do not import TVM, ONNX Runtime or wandb. No library module imports this
package.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable

from .. import fileio, progress
from ..approx import UnknownApproximation
from ..train.options import TrainingStopped

Arguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]

# name -> (help, add the command's flags to a parser, run it on the parsed flags)
COMMANDS: dict[str, tuple[str, Arguments, Run]] = {}


def module_command(name: str, help: str, module: str, arguments: str = "add_arguments",
                   run: str = "run") -> None:
    """Register a command whose ``arguments(p)`` and ``run(args)`` functions live in
    ``module`` (relative to this package, imported when the command is built or run)."""
    def load():
        return importlib.import_module(module, __package__)

    COMMANDS[name] = (help, lambda p: getattr(load(), arguments)(p),
                      lambda args: getattr(load(), run)(args))


module_command("analyze", "measure approximations against the exact float function",
               ".analysis", "analyze_arguments", "run_analyze")
module_command("calibrate", "post-training quantization: set activation ranges, save a "
               "checkpoint", ".train", "calibrate_arguments", "run_calibrate")
module_command("train", "quantization-aware training (float with --no-quant)", ".train",
               "train_arguments", "run_train")
module_command("eval", "evaluate a checkpoint (the integer model) on a dataset", ".evaluate",
               "eval_arguments", "run_eval")
module_command("demo", "the main job on a built-in default: analysis, float baseline, PTQ, "
               "QAT", ".demo", "demo_arguments", "run_demo")
module_command("sweep", "run a W&B sweep file's grid locally, without W&B: one training per "
               "combination, a results table", ".sweep")
module_command("search", "search the best combination of GELU/Softmax/LayerNorm "
               "approximations (PTQ accuracy vs hardware cost, Pareto front)", ".analysis",
               "search_arguments", "run_search")
module_command("report", "one self-contained HTML report of a run folder: accuracy, "
               "approximation analysis, search results, plots embedded", ".analysis",
               "report_arguments", "run_report")
module_command("export", "export a quantized checkpoint as an integer program, an ONNX graph "
               "or golden test vectors", ".engine", "export_arguments", "run_export")
module_command("verify", "check that engines give identical integer logits (or replay golden "
               "vectors)", ".engine", "verify_arguments", "run_verify")
module_command("bench", "latency of the integer engines against PyTorch FP32, ONNX Runtime "
               "FP32 and ONNX Runtime's dynamic int8 (speed-ups measured in one run)",
               ".bench")
module_command("inspect", "describe an integer program or an exported ONNX graph (ops, "
               "dtypes, sizes)", ".engine", "inspect_arguments", "run_inspect")


def build_parser(only_given: bool = False) -> argparse.ArgumentParser:
    """The parser; ``only_given`` leaves out every default, so that parsing tells which
    options the user typed."""
    parser = argparse.ArgumentParser(prog="intvit", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, arguments, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        arguments(p)
        p.add_argument("--no-progress", action="store_true",
                       help="no progress bars (in a log file they are plain lines anyway)")
        if only_given:
            for action in p._actions:
                action.default = argparse.SUPPRESS
        else:
            p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``intvit ARGV`` (default: this process's arguments) and return its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.given = set(vars(build_parser(only_given=True).parse_args(argv))) - {"command"}
    args.command_line = fileio.command_line(argv)
    progress.enable(not args.no_progress)
    try:
        return args.run(args)
    except (UnknownApproximation, ValueError, OverflowError) as err:
        print(f"intvit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except TrainingStopped as err:
        print(f"intvit {args.command}: stopped: {err}", file=sys.stderr)
        return 3
