"""A Weights & Biases sweep file, read and run locally without W&B (``intvit sweep``).

The sweep file (``sweep.yaml`` at the repository root) is an ordinary W&B sweep: its
``command`` runs ``intvit train`` with fixed flags followed by ``${args}``, which the W&B
agent replaces with one ``--NAME=VALUE`` per parameter. :func:`load_sweep` reads the same
file into the fixed flags and the grid (the cartesian product of every parameter's
``values``), and :func:`run` trains every combination in this process, one after the
other, each in its own folder under ``--out``, then writes a table (``sweep.md``) and one
JSON record per run (``sweep.json``, and ``--json FILE``). A run that fails (flags the
parser rejects, an approximation that cannot be built, an overflow, a non-finite loss)
is recorded with its error and the sweep goes on.

Only ``${args}`` is understood as the place of the parameters (W&B's other argument
macros, ``${args_no_hyphens}``, ``${args_json}``..., do not produce flags for
``intvit train``), and every parameter needs ``value`` or ``values``: a local grid cannot
sample a ``distribution``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import re
import shlex
import time
from pathlib import Path
from typing import Any

from ..fileio import command_line, write_json, write_run_manifest, write_text
from ..tables import markdown_cell, markdown_table

ARGS_MACRO = "${args}"
# W&B's ${envvar:NAME} macro, expanded as the agent does (left as NAME when unset).
ENVVAR_MACRO = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")
# Flags of the sweep file a local run leaves out: no W&B here.
LOCAL_DROPS = ("wandb_project", "wandb_entity")
RESULT_FILE = "result.json"


class SweepError(ValueError):
    """The sweep file or an override cannot be run (a ValueError: the CLI reports it)."""


# ------------------------------------------------------------------------------ reading


def _read_yaml(path: str | Path) -> dict[str, Any]:
    try:
        import yaml
    except ImportError:
        raise SweepError("reading a sweep file needs PyYAML: pip install pyyaml "
                         "(pip install wandb brings it)") from None
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"no sweep file {path}")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SweepError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(config, dict):
        raise SweepError(f"{path}: a sweep file is a YAML mapping (method, parameters, "
                         f"command)")
    return config


def _fixed_from_command(config: dict[str, Any], path: str | Path) -> list[str]:
    command = config.get("command")
    if not isinstance(command, list) or not command:
        raise SweepError(f"{path}: needs a `command:` list that runs `intvit train "
                         f"... {ARGS_MACRO}` (e.g. ${{env}} ${{interpreter}} -m intvit "
                         f"train --model custom ... {ARGS_MACRO})")
    tokens = [ENVVAR_MACRO.sub(lambda m: os.environ.get(m.group(1), m.group(1)), str(t))
              for t in command]
    if "train" not in tokens:
        raise SweepError(f"{path}: the command must run `intvit train`, got "
                         f"{shlex.join(tokens)}")
    cut = tokens.index("train")
    if not any(t == "intvit" or t.endswith(("/intvit", "\\intvit")) for t in tokens[:cut]):
        raise SweepError(f"{path}: the command must run `intvit train` (`-m intvit train` "
                         f"or the intvit script), got {shlex.join(tokens)}")
    after = tokens[cut + 1:]
    if after.count(ARGS_MACRO) != 1:
        raise SweepError(f"{path}: the command needs {ARGS_MACRO} exactly once after "
                         f"`train` (where W&B puts --NAME=VALUE per parameter)")
    macros = [t for t in after if t.startswith("${") and t != ARGS_MACRO]
    if macros:
        raise SweepError(f"{path}: {', '.join(macros)} cannot be run locally: only "
                         f"{ARGS_MACRO} gives flags `intvit train` understands")
    return [t for t in after if t != ARGS_MACRO]


def _axes(config: dict[str, Any], path: str | Path) -> dict[str, list[Any]]:
    params = config.get("parameters") or {}
    if not isinstance(params, dict):
        raise SweepError(f"{path}: `parameters` is a mapping NAME: {{values: [...]}}")
    axes: dict[str, list[Any]] = {}
    for name, spec in params.items():
        if not isinstance(spec, dict):
            raise SweepError(f"{path}: parameter {name!r} needs `value:` or `values:`")
        if "parameters" in spec:
            raise SweepError(f"{path}: parameter {name!r} is nested; W&B would pass it as "
                             f"one dictionary, which no `intvit train` flag takes")
        if "values" in spec:
            values = spec["values"]
            if not isinstance(values, list) or not values:
                raise SweepError(f"{path}: parameter {name!r}: `values` must be a "
                                 f"non-empty list")
            axes[str(name)] = list(values)
        elif "value" in spec:
            axes[str(name)] = [spec["value"]]
        else:
            raise SweepError(f"{path}: parameter {name!r} has no `value`/`values`; a local "
                             f"grid cannot sample {spec.get('distribution', 'a distribution')}")
    return axes


def load_sweep(path: str | Path) -> tuple[list[str], list[dict[str, Any]]]:
    """The fixed ``intvit train`` flags of a W&B sweep file (its command after ``train``,
    without ``${args}``) and its grid: one dict NAME -> VALUE per combination of the
    parameters' values, in W&B's grid order (the last parameter varies fastest)."""
    config = _read_yaml(path)
    fixed = _fixed_from_command(config, path)
    axes = _axes(config, path)
    grid = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
    return fixed, grid


def param_flags(params: dict[str, Any]) -> list[str]:
    """The flags the W&B agent puts in place of ``${args}``: ``--NAME=VALUE``, the value
    formatted by ``str`` (so a YAML ``true`` becomes ``--NAME=True``)."""
    return [f"--{name}={value}" for name, value in params.items()]


def train_argv(fixed: list[str], params: dict[str, Any], output_dir: str | Path | None = None,
               json_file: str | Path | None = None) -> list[str]:
    """The ``intvit`` argv of one run: ``train``, the fixed flags, the parameters and,
    when given, the run's own ``--output-dir`` and ``--json``."""
    argv = ["train", *fixed, *param_flags(params)]
    if output_dir is not None:
        argv += ["--output-dir", str(output_dir)]
    if json_file is not None:
        argv += ["--json", str(json_file)]
    return argv


# --------------------------------------------------------------- flags of `intvit train`


def _train_options() -> dict[str, argparse.Action]:
    """Option string -> action of ``intvit train`` (its own argument function, so this
    follows cli.py)."""
    from ..cli import COMMANDS

    parser = argparse.ArgumentParser(prog="intvit train", add_help=False)
    COMMANDS["train"][1](parser)
    return dict(parser._option_string_actions)


def _lookup(options: dict[str, argparse.Action], key: str) -> argparse.Action | None:
    name = key.lstrip("-")
    for candidate in (name, name.replace("_", "-"), name.replace("-", "_")):
        if f"--{candidate}" in options:
            return options[f"--{candidate}"]
    return None


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def _split_flags(tokens: list[str], options: dict[str, argparse.Action]
                 ) -> list[tuple[argparse.Action | None, list[str]]]:
    """The tokens grouped as (action, [flag, value?]); unknown tokens stand alone."""
    groups, i = [], 0
    while i < len(tokens):
        token = tokens[i]
        action = options.get(token.split("=", 1)[0]) if token.startswith("--") else None
        width = 2 if action and "=" not in token and _takes_value(action) else 1
        groups.append((action, tokens[i:i + width]))
        i += width
    return groups


def _drop(tokens: list[str], dests: set[str], options: dict[str, argparse.Action]) -> list[str]:
    return [t for action, group in _split_flags(tokens, options)
            if action is None or action.dest not in dests for t in group]


def apply_overrides(fixed: list[str], grid: list[dict[str, Any]], overrides: list[str]
                    ) -> tuple[list[str], list[dict[str, Any]]]:
    """``--set KEY=VALUE`` (or ``--set FLAG`` for a switch such as ``no-quant``): KEY is a
    flag of ``intvit train`` with or without its dashes; its fixed value is replaced, or a
    grid parameter setting the same option is pinned to VALUE (duplicates removed)."""
    options = _train_options()
    for item in overrides:
        key, has_value, value = item.partition("=")
        action = _lookup(options, key)
        if action is None or action.dest == "help":
            raise SweepError(f"--set {item}: `intvit train` has no flag --{key.lstrip('-')}")
        fixed = _drop(fixed, {action.dest}, options)
        pinned = []
        for combo in grid:
            combo = {k: v for k, v in combo.items()
                     if getattr(_lookup(options, k), "dest", None) != action.dest}
            if combo not in pinned:
                pinned.append(combo)
        grid = pinned
        flag = action.option_strings[0]
        if _takes_value(action):
            if not has_value:
                raise SweepError(f"--set {item}: {flag} takes a value (--set {key}=VALUE)")
            fixed.append(f"{flag}={value}")
        elif value.lower() not in ("false", "0", "no", "off"):
            fixed.append(flag)
    return fixed, grid


def check_conflicts(fixed: list[str], grid: list[dict[str, Any]]) -> None:
    """A parameter must not set an option the fixed flags set too (which wins would
    depend on where ``${args}`` stands)."""
    options = _train_options()
    fixed_dests = {a.dest for a, _ in _split_flags(fixed, options) if a is not None}
    names = {name for combo in grid for name in combo}
    both = sorted(n for n in names if getattr(_lookup(options, n), "dest", None) in fixed_dests)
    if both:
        raise SweepError(f"parameter(s) {', '.join(both)} also set by the fixed flags of the "
                         f"command; keep one")


# ------------------------------------------------------------------------------ running


def _parse(argv: list[str]) -> tuple[argparse.Namespace | None, str | None]:
    """The CLI's own parse of ``argv``; (None, argparse's message) when it rejects it."""
    from ..cli import build_parser

    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return build_parser().parse_args(argv), None
    except SystemExit:
        lines = [line for line in captured.getvalue().splitlines() if line.strip()]
        return None, lines[-1] if lines else f"invalid arguments: {shlex.join(argv)}"


def run_one(argv: list[str], json_file: str | Path) -> dict[str, Any]:
    """Run ``intvit`` with ``argv`` in this process; the result JSON it wrote, read back,
    or ``{"error": ...}``."""
    args, error = _parse(argv)
    if args is None:
        return {"error": error}
    args.command_line = command_line(argv)
    try:
        code = args.run(args)
    except Exception as err:  # noqa: BLE001  (any failure is the run's result)
        return {"error": f"{type(err).__name__}: {err}"}
    if code:
        return {"error": f"exit status {code}"}
    try:
        return json.loads(Path(json_file).read_text())
    except (OSError, ValueError) as err:
        return {"error": f"no result JSON {json_file}: {err}"}


def run_name(index: int, params: dict[str, Any]) -> str:
    text = "_".join(f"{k}={v}" for k, v in params.items()) or "run"
    return f"{index:02d}_" + re.sub(r"[^A-Za-z0-9.=_+-]+", "-", text)


def record(name: str, params: dict[str, Any], argv: list[str], out: dict[str, Any],
           seconds: float) -> dict[str, Any]:
    history = out.get("history") or []
    last = history[-1] if history else {}
    return {"run": name, "params": params, "status": "failed" if "error" in out else "ok",
            "best_top1": out.get("best_top1"), "final_val_top1": last.get("val_top1"),
            "final_val_loss": last.get("val_loss"), "epochs": len(history),
            "checkpoint": out.get("checkpoint"), "error": out.get("error"),
            "seconds": round(seconds, 2), "command": "intvit " + shlex.join(argv)}


def records_table(records: list[dict[str, Any]]) -> str:
    """The Markdown table of the run records: one row per run, one column per parameter."""
    names = list(dict.fromkeys(k for r in records for k in r["params"]))
    head = ["run", *names, "status", "best top-1 (%)", "final val loss", "checkpoint / error"]
    rows = [[r["run"], *(markdown_cell(r["params"].get(n)) for n in names), r["status"],
             markdown_cell(r["best_top1"], ".2f"), markdown_cell(r["final_val_loss"], ".4f"),
             markdown_cell(r["error"] if r["status"] == "failed" else r["checkpoint"])]
            for r in records]
    return markdown_table(head, rows)


def report(path: str | Path, fixed: list[str], records: list[dict[str, Any]]) -> str:
    ok = sum(r["status"] == "ok" for r in records)
    return (f"# Sweep {path}\n\n{ok} of {len(records)} runs succeeded. Fixed flags: "
            f"`{shlex.join(fixed)}`\n\n{records_table(records)}\n")


def _write(out: Path, json_file: str | None, text: str, records: list[dict[str, Any]]) -> None:
    write_text(out / "sweep.md", text)
    write_json(out / "sweep.json", records)
    if json_file:
        write_json(json_file, records)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="a W&B sweep file whose command runs `intvit train ... "
                                 "${args}` (e.g. sweep.yaml)")
    p.add_argument("--out", default="runs/sweep", metavar="DIR",
                   help="one folder per run, sweep.md and sweep.json (default runs/sweep)")
    p.add_argument("--json", metavar="FILE", help="also write the records (one per run) here")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--set", action="append", default=[], dest="overrides",
                   metavar="KEY=VALUE",
                   help="override a flag of `intvit train` (repeatable), e.g. --set epochs=1 "
                        "--set train-limit=2048; a swept parameter is pinned to VALUE")


def run(args: argparse.Namespace) -> int:
    """Run the sweep file's grid locally; 0 when every run succeeded, 1 otherwise (the
    failures are in the table and the JSON)."""
    from ..progress import tqdm

    fixed, grid = load_sweep(args.sweep)
    fixed = _drop(fixed, set(LOCAL_DROPS), _train_options())
    fixed, grid = apply_overrides(fixed, grid, list(args.overrides or []))
    check_conflicts(fixed, grid)
    out = Path(args.out)
    runs = []
    for i, params in enumerate(grid, 1):
        name = run_name(i, params)
        result = out / name / RESULT_FILE
        runs.append((name, params, train_argv(fixed, params, out / name, result), result))
    if args.dry_run:
        for name, _, argv, _ in runs:
            args_ok, error = _parse(argv)
            print("intvit " + shlex.join(argv) + ("" if args_ok else f"  # rejected: {error}"))
        return 0
    records: list[dict[str, Any]] = []
    bar = tqdm(runs, desc="sweep", unit="run")
    for name, params, argv, result in bar:
        bar.set_postfix_str(name)
        if result.exists():
            result.unlink()  # a stale result from an earlier sweep must not count
        start = time.perf_counter()
        records.append(record(name, params, argv, run_one(argv, result),
                              time.perf_counter() - start))
        if records[-1]["status"] == "failed":
            tqdm.write(f"{name} failed: {records[-1]['error']}")
        _write(out, args.json, report(args.sweep, fixed, records), records)
    bar.close()
    text = report(args.sweep, fixed, records)
    _write(out, args.json, text, records)
    write_run_manifest(out, command_line(), {"sweep": args.sweep}, {
        "table": out / "sweep.md", "records": out / "sweep.json", "json": args.json,
        "runs": [out / name for name, *_ in runs]})
    print(f"\n{text}\ntable: {out / 'sweep.md'}, records: {out / 'sweep.json'}"
          + (f" and {args.json}" if args.json else ""))
    return 0 if all(r["status"] == "ok" for r in records) else 1
