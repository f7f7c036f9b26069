"""A Weights & Biases sweep file, read and run locally without W&B (``intvit sweep``).

The sweep file (``sweep.yaml`` at the repository root) is an ordinary W&B sweep: its
``command`` runs ``intvit train`` with fixed flags followed by ``${args}``, which the W&B
agent replaces with one ``--NAME=VALUE`` per parameter. :func:`load_sweep` reads the same
file into the fixed flags and the grid (the cartesian product of every parameter's
``values``), and :func:`run_sweep` trains every combination (a :class:`SweepRun`, whose
:class:`~intvit.train.options.TrainConfig` the command line builds from the run's flags,
:mod:`intvit.cli.sweep`) in this process with :func:`~intvit.train.loop.run_training`,
one after the other, each in its own folder, then writes a table (``sweep.md``) and one
JSON record per run (``sweep.json``, and a second file if asked). A run that fails (flags
the parser rejects, an approximation that cannot be built, an overflow, a non-finite
loss) is recorded with its error and the sweep goes on.

Only ``${args}`` is understood as the place of the parameters (W&B's other argument
macros, ``${args_no_hyphens}``, ``${args_json}``..., do not produce flags for
``intvit train``), and every parameter needs ``value`` or ``values``: a local grid cannot
sample a ``distribution``.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..fileio import command_line, write_json, write_run_manifest, write_text
from ..result_files import tag_result
from ..tables import markdown_cell, markdown_table
from .options import TrainConfig

ARGS_MACRO = "${args}"
# W&B's ${envvar:NAME} macro, expanded as the agent does (left as NAME when unset).
ENVVAR_MACRO = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")


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


def train_argv(fixed: list[str], params: dict[str, Any], output_dir: str | Path | None = None
               ) -> list[str]:
    """The ``intvit`` argv of one run: ``train``, the fixed flags, the parameters and,
    when given, the run's own ``--output-dir``."""
    argv = ["train", *fixed, *param_flags(params)]
    if output_dir is not None:
        argv += ["--output-dir", str(output_dir)]
    return argv


# ------------------------------------------------------------------------------ running


@dataclass
class SweepRun:
    """One combination of the grid: its name, parameters and ``intvit`` argv, and the
    training configuration of those flags, or why there is none (``error``)."""

    name: str
    params: dict[str, Any]
    argv: list[str]
    config: TrainConfig | None = None
    error: str | None = None


def train_one(run: SweepRun) -> dict[str, Any]:
    """:func:`~intvit.train.loop.run_training` of the run's configuration: its result, or
    ``{"error": ...}`` (any failure is the run's result)."""
    from .loop import run_training

    if run.config is None:
        return {"error": run.error or "no training configuration"}
    try:
        result = run_training(run.config)
    except Exception as err:  # noqa: BLE001  (any failure is the run's result)
        return {"error": f"{type(err).__name__}: {err}"}
    write_run_manifest(run.config.output_dir, command_line(run.argv),
                       {"data": run.config.data}, {"checkpoint": result.get("checkpoint")})
    return result


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
            "seconds": round(seconds, 2), "command": command_line(argv)}


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


def _write(out: Path, json_file: str | Path | None, text: str, path: str | Path,
           records: list[dict[str, Any]]) -> None:
    write_text(out / "sweep.md", text)
    payload = tag_result("sweep", {"sweep": str(path), "runs": records})
    write_json(out / "sweep.json", payload)
    if json_file:
        write_json(json_file, payload)


def run_sweep(path: str | Path, fixed: list[str], runs: list[SweepRun], out: str | Path,
              command: str, json_file: str | Path | None = None) -> list[dict[str, Any]]:
    """Train every run, one after the other; after each, write the table (``out/sweep.md``)
    and the records (``out/sweep.json``, and ``json_file`` when given). ``command`` is
    the sweep's command line, recorded in ``out/run.json``; each run's own folder records
    the command of its argv (:func:`train_one`). Returns the records, one per run, in
    order."""
    from ..progress import tqdm

    out = Path(out)
    records: list[dict[str, Any]] = []
    bar = tqdm(runs, desc="sweep", unit="run")
    for run in bar:
        bar.set_postfix_str(run.name)
        start = time.perf_counter()
        records.append(record(run.name, run.params, run.argv, train_one(run),
                              time.perf_counter() - start))
        if records[-1]["status"] == "failed":
            tqdm.write(f"{run.name} failed: {records[-1]['error']}")
        _write(out, json_file, report(path, fixed, records), path, records)
    bar.close()
    _write(out, json_file, report(path, fixed, records), path, records)
    write_run_manifest(out, command, {"sweep": str(path)}, {
        "table": out / "sweep.md", "records": out / "sweep.json", "json": json_file,
        "runs": [out / run.name for run in runs]})
    return records
