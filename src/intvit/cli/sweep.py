"""``intvit sweep``: a W&B sweep file's grid run locally (:mod:`intvit.train.sweep`).

Each run's flags are those of ``intvit train`` (the sweep file's command, its parameters,
``--set`` overrides), so they are matched against that command's own flags: an override
replaces the option it names, whatever spelling or alias, and each run's argv is parsed
by ``intvit train``'s parser into a :class:`~intvit.train.options.TrainConfig`, which
:func:`~intvit.train.sweep.run_sweep` trains.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shlex
from pathlib import Path
from typing import Any

from ..train.sweep import SweepError, SweepRun, load_sweep, run_name, train_argv

# Flags of the sweep file a local run leaves out: no W&B here.
LOCAL_DROPS = ("wandb_project", "wandb_entity")


# --------------------------------------------------------------- flags of `intvit train`


def _train_options() -> dict[str, argparse.Action]:
    """Option string -> action of ``intvit train`` (its own argument function)."""
    from .common import declared_options
    from .train import train_arguments

    return declared_options(train_arguments)


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


# ------------------------------------------------------------------------------ the runs


def _parse(argv: list[str]) -> tuple[argparse.Namespace | None, str | None]:
    """The CLI's own parse of ``argv``; (None, argparse's message) when it rejects it."""
    from . import build_parser

    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return build_parser().parse_args(argv), None
    except SystemExit:
        lines = [line for line in captured.getvalue().splitlines() if line.strip()]
        return None, lines[-1] if lines else f"invalid arguments: {shlex.join(argv)}"


def sweep_run(name: str, params: dict[str, Any], argv: list[str]) -> SweepRun:
    """The run of ``intvit`` ``argv``: its training configuration, as ``intvit train``
    would build it, or the error that stops it (the flags rejected, an approximation
    that does not exist, an output that cannot be written)."""
    from .common import check_outputs
    from .train import train_config

    args, error = _parse(argv)
    if args is None:
        return SweepRun(name, params, argv, error=error)
    if args.resume:
        return SweepRun(name, params, argv, error="a sweep run starts afresh: drop --resume")
    try:
        check_outputs(args, {}, {"--output-dir": "output_dir"},
                      {"--checkpoint": "checkpoint", "--weights": "weights"})
        return SweepRun(name, params, argv, train_config(args))
    except Exception as err:  # noqa: BLE001  (any failure is the run's result)
        return SweepRun(name, params, argv, error=f"{type(err).__name__}: {err}")


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
    from ..train.sweep import report, run_sweep

    fixed, grid = load_sweep(args.sweep)
    fixed = _drop(fixed, set(LOCAL_DROPS), _train_options())
    fixed, grid = apply_overrides(fixed, grid, list(args.overrides or []))
    check_conflicts(fixed, grid)
    out = Path(args.out)
    argvs = [(run_name(i, params), params) for i, params in enumerate(grid, 1)]
    argvs = [(name, params, train_argv(fixed, params, out / name)) for name, params in argvs]
    if args.dry_run:
        for name, _, argv in argvs:
            _, error = _parse(argv)
            print("intvit " + shlex.join(argv)
                  + ("" if error is None else f"  # rejected: {error}"))
        return 0
    runs = [sweep_run(name, params, argv) for name, params, argv in argvs]
    records = run_sweep(args.sweep, fixed, runs, out, args.command_line, args.json)
    text = report(args.sweep, fixed, records)
    print(f"\n{text}\ntable: {out / 'sweep.md'}, records: {out / 'sweep.json'}"
          + (f" and {args.json}" if args.json else ""))
    return 0 if all(r["status"] == "ok" for r in records) else 1
