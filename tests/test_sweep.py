"""The W&B sweep file and the local sweep runner (``intvit sweep``).

The sweep file is checked against the real ``intvit train`` argument parser: a sweep
whose parameters or fixed flags ``intvit train`` rejects fails every run of the sweep
(the bug of the original extension's sweep file), and here fails the tests instead.
"""

import argparse
import copy
import json
import math
import struct
from pathlib import Path

import pytest
import yaml

from intvit.cli import COMMANDS, build_parser, main
from intvit.cli import sweep
from intvit.cli.common import quant_config
from intvit.cli.sweep import apply_overrides, check_conflicts
from intvit.fileio import command_line, read_run_manifest
from intvit.quant import BitWidths
from intvit.train.sweep import SweepError, load_sweep, param_flags, train_argv

SWEEP_YAML = Path(__file__).resolve().parents[1] / "sweep.yaml"
TINY = ["--model", "custom", "--input-size", "32", "--patch-size", "8", "--embed-dim", "32",
        "--depth", "2", "--num-heads", "2", "--data", "synthetic", "--train-limit", "64",
        "--val-limit", "32", "--batch-size", "32", "--calib-batches", "1", "--lr", "1e-3"]


def write_sweep(path: Path, parameters: dict, fixed: list[str] = TINY, **extra) -> Path:
    config = {"method": "grid", "parameters": parameters, **extra,
              "command": ["${env}", "${interpreter}", "-m", "intvit", "train", *fixed,
                          "${args}"]}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def sweep_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="intvit sweep")
    sweep.add_arguments(parser)
    args = parser.parse_args(list(argv))
    args.command_line = command_line(["sweep", *argv])  # main sets it
    return args


def train_options() -> dict[str, argparse.Action]:
    parser = argparse.ArgumentParser()
    COMMANDS["train"][1](parser)
    return parser._option_string_actions


def problems(path: Path) -> list[str]:
    """Everything in a sweep file that `intvit train` would not accept as W&B runs it."""
    fixed, grid = load_sweep(path)
    options, found = train_options(), []
    for token in fixed:
        if token.startswith("-") and token.split("=")[0] not in options:
            found.append(f"fixed flag {token} is not a flag of intvit train (exactly)")
    for params in grid:
        for name in params:
            if f"--{name}" not in options:
                found.append(f"parameter {name}: --{name} is not a flag of intvit train")
        argv = train_argv(fixed, params)
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:
            found.append(f"intvit {' '.join(argv)} does not parse")
            continue
        for name, value in params.items():
            action = options.get(f"--{name}")
            if action is not None:
                expected = action.type(str(value)) if action.type else str(value)
                if getattr(args, action.dest) != expected:
                    found.append(f"--{name}={value} parsed as {getattr(args, action.dest)!r}")
        try:
            quant_config(args)
        except ValueError as err:  # an approximation the op has no family for
            found.append(f"{params}: {err}")
    return found


# ---------------------------------------------------------------------------- sweep.yaml


def test_sweep_yaml_grid_is_layer_types_by_bitwidths():
    fixed, grid = load_sweep(SWEEP_YAML)
    assert len(grid) == 12
    assert {g["layer-type"] for g in grid} == {"ivit", "ibert", "ppoly"}
    assert {g["layernorm"] for g in grid} == {"ivit", "ibert"}  # LayerNorm has no ppoly
    assert {g["bitwidth"] for g in grid} == {"8", "8,8,8,8,8,8,16,16"}
    assert len({tuple(g.items()) for g in grid}) == 12  # the full cartesian product
    assert grid[0] == {"layer-type": "ivit", "layernorm": "ivit", "bitwidth": "8"}
    assert grid[1]["bitwidth"] == "8,8,8,8,8,8,16,16"  # W&B's order: the last fastest
    assert "${args}" not in fixed and fixed[fixed.index("--data") + 1] == "fashion-mnist"
    assert fixed[fixed.index("--model") + 1] == "custom"


def test_sweep_yaml_every_run_parses_with_intvit_train():
    assert problems(SWEEP_YAML) == []
    fixed, grid = load_sweep(SWEEP_YAML)
    check_conflicts(fixed, grid)  # no option set both fixed and swept
    for params in grid:
        args = build_parser().parse_args(train_argv(fixed, params))
        q = quant_config(args)
        assert (q.gelu, q.softmax, q.layernorm) == (params["layer-type"],) * 2 \
            + (params["layernorm"],)
        assert q.bits == BitWidths.parse(params["bitwidth"])
        assert args.model == "custom" and args.data == "fashion-mnist"


def test_the_check_catches_a_flag_intvit_train_rejects(tmp_path):
    """The original extension's bug: a swept name its training script did not accept."""
    bad = write_sweep(tmp_path / "bad.yaml", {"quant_mode": {"values": ["int"]},
                                              "layer_type": {"values": ["ivit"]}},
                      fixed=[*TINY, "--bit-width", "8"])
    found = problems(bad)
    assert any("--bit-width" in p for p in found)
    assert any("quant_mode" in p for p in found)
    assert not any(p.startswith("parameter layer_type") for p in found)  # an alias
    ppoly_ln = write_sweep(tmp_path / "ln.yaml", {"layer-type": {"values": ["ppoly"]}})
    assert any("layernorm" in p for p in problems(ppoly_ln))


def test_sweep_yaml_as_the_wandb_agent_builds_the_command():
    pytest.importorskip("wandb", reason="wandb not installed (pip install wandb)")
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    config = yaml.safe_load(SWEEP_YAML.read_text())
    fixed, grid = load_sweep(SWEEP_YAML)
    for params in grid:
        # what wandb.wandb_agent.Agent._command_run does with a command of the server
        command = sweep_utils.create_sweep_command(copy.deepcopy(config["command"]))
        sweep_vars = sweep_utils.create_sweep_command_args(
            {"args": {k: {"value": v} for k, v in params.items()}})
        sweep_vars.update(interpreter=["python"], env=["/usr/bin/env"])
        argv = []
        for chunk in map(str, command):
            argv += sweep_vars.get(chunk[2:-1]) or [] if chunk.startswith("${") else [chunk]
        assert argv[:4] == ["/usr/bin/env", "python", "-m", "intvit"]
        assert argv[4:] == train_argv(fixed, params)
        build_parser().parse_args(argv[4:])


# --------------------------------------------------------------------------- the reader


def test_load_sweep_grid_and_single_values(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", {"a": {"values": [1, 2]}, "b": {"value": "x"},
                                             "c": {"values": ["p", "q", "r"]}})
    fixed, grid = load_sweep(path)
    assert fixed == TINY
    assert grid == [{"a": a, "b": "x", "c": c} for a in (1, 2) for c in "pqr"]
    assert param_flags(grid[0]) == ["--a=1", "--b=x", "--c=p"]


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(command=["${env}", "${interpreter}", "train.py", "${args}"]),
     "intvit train"),
    (lambda c: c["command"].__setitem__(-1, "${args_no_hyphens}"), "${args}"),
    (lambda c: c.update(parameters={"lr": {"distribution": "log_uniform_values"}}),
     "cannot sample"),
    (lambda c: c.pop("command"), "command"),
])
def test_load_sweep_rejects_what_cannot_run_locally(tmp_path, edit, message):
    path = write_sweep(tmp_path / "s.yaml", {"a": {"values": [1]}})
    config = yaml.safe_load(path.read_text())
    edit(config)
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SweepError, match=message.replace("$", r"\$")
                       .replace("{", r"\{").replace("}", r"\}")):
        load_sweep(path)


def test_overrides_replace_fixed_flags_and_pin_parameters():
    fixed = ["--epochs", "5", "--layer_type=ivit", "--no-quant", "--lr", "0.1"]
    grid = [{"bitwidth": b, "layernorm": ln} for b in (8, 16) for ln in ("ivit", "ibert")]
    fixed2, grid2 = apply_overrides(fixed, grid, ["epochs=1", "--layer-type=ppoly",
                                                  "no_quant=false", "bitwidth=4"])
    assert fixed2 == ["--lr", "0.1", "--epochs=1", "--layer-type=ppoly", "--bitwidth=4"]
    assert grid2 == [{"layernorm": "ivit"}, {"layernorm": "ibert"}]  # bitwidth pinned
    assert apply_overrides([], grid, ["no-quant"])[0] == ["--no-quant"]
    with pytest.raises(SweepError, match="no flag"):
        apply_overrides(fixed, grid, ["not-a-flag=1"])
    with pytest.raises(SweepError, match="takes a value"):
        apply_overrides(fixed, grid, ["epochs"])
    with pytest.raises(SweepError, match="also set"):
        check_conflicts(["--bitwidth", "8"], grid)


# ------------------------------------------------------------------------ local running


def test_local_sweep_runs_the_grid_and_writes_table_and_json(tmp_path, capsys):
    path = write_sweep(tmp_path / "s.yaml", {"layer-type": {"values": ["ppoly"]},
                                             "layernorm": {"values": ["ivit", "ibert"]},
                                             "bitwidth": {"value": 8}},
                       fixed=[*TINY, "--epochs", "3", "--wandb-project", "nowhere"])
    out, records_file = tmp_path / "out", tmp_path / "records.json"
    assert sweep.run(sweep_args(str(path), "--dry-run", "--out", str(out))) == 0
    dry = capsys.readouterr().out.strip().splitlines()
    assert len(dry) == 2 and all(line.startswith("intvit train ") for line in dry)
    assert "rejected" not in dry[0] and not out.exists()

    code = sweep.run(sweep_args(str(path), "--out", str(out), "--json", str(records_file),
                                "--set", "epochs=1"))
    assert code == 0
    printed = capsys.readouterr().out
    payload = json.loads(records_file.read_text())
    assert payload == json.loads((out / "sweep.json").read_text())
    assert payload["kind"] == "sweep" and payload["sweep"] == str(path)
    records = payload[payload["records"]]
    assert [r["params"]["layernorm"] for r in records] == ["ivit", "ibert"]
    for r in records:
        assert r["status"] == "ok" and r["error"] is None, r
        assert r["epochs"] == 1  # --set epochs=1 replaced the fixed --epochs 3
        assert 0 <= r["best_top1"] <= 100 and math.isfinite(r["final_val_loss"])
        assert Path(r["checkpoint"]).is_file()
        assert Path(r["checkpoint"]).parent.parent == out
        assert "--wandb-project" not in r["command"]  # no W&B in a local sweep
        run_manifest = read_run_manifest(Path(r["checkpoint"]).parent)
        assert run_manifest["command"] == r["command"]  # the run's own, not the sweep's
    assert read_run_manifest(out)["outputs"]["records"] == str(out / "sweep.json")
    assert read_run_manifest(out)["command"] == command_line(
        ["sweep", str(path), "--out", str(out), "--json", str(records_file), "--set", "epochs=1"])
    table = (out / "sweep.md").read_text()
    assert "| run | layer-type | layernorm | bitwidth | status |" in table
    assert table.count("| ok |") == 2 and "2 of 2 runs succeeded" in table
    assert "| layer-type | layernorm |" in printed


def test_a_failing_combination_is_recorded_and_the_sweep_goes_on(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", {"layer-type": {"values": ["ppoly"]},
                                             "layernorm": {"values": ["ppoly", "ivit"]},
                                             "depth": {"values": ["two", 2]}},
                       fixed=[*TINY[:TINY.index("--depth")],
                              *TINY[TINY.index("--depth") + 2:], "--epochs", "1"])
    out = tmp_path / "out"
    assert sweep.run(sweep_args(str(path), "--out", str(out))) == 1
    records = json.loads((out / "sweep.json").read_text())["runs"]
    assert [r["status"] for r in records] == ["failed", "failed", "failed", "ok"]
    assert "invalid positive_int value: 'two'" in records[0]["error"]  # rejected by the parser
    assert "ppoly" in records[1]["error"] and "layernorm" in records[1]["error"].lower()
    assert records[1]["checkpoint"] is None and records[3]["best_top1"] is not None
    table = (out / "sweep.md").read_text()
    assert "1 of 4 runs succeeded" in table and table.count("| failed |") == 3


# ----------------------------------------------------------------------------------- W&B


def read_wandb_log(path: Path):
    """The records of an offline run's transaction log (run-ID.wandb): a ':W&B' header,
    then a LevelDB-style log of 32 KiB blocks holding protobuf ``Record`` messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, chunks = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B", "not a W&B transaction log"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def test_train_logs_config_and_metrics_to_an_offline_wandb_run(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="wandb not installed (pip install wandb)")
    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path),
                       "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": str(tmp_path / "cfg"),
                       "WANDB_CACHE_DIR": str(tmp_path / "cache"),
                       "WANDB_DATA_DIR": str(tmp_path / "data"),
                       "WANDB_DISABLE_CODE": "true"}.items():
        monkeypatch.setenv(key, value)
    try:
        assert main(["train", *TINY, "--layer-type", "ppoly", "--layernorm", "ivit",
                     "--epochs", "1", "--output-dir", str(tmp_path / "run"),
                     "--wandb-project", "intvit-test"]) == 0
    finally:
        wandb.teardown()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    logs = list(runs[0].glob("run-*.wandb"))
    assert len(logs) == 1
    config, history, summary, project = {}, {}, {}, None
    for record in read_wandb_log(logs[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            project = record.run.project
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            history.update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                            for i in record.history.item})
        elif kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                            for i in record.summary.update})
    assert project == "intvit-test"
    assert config["model"] == "custom" and config["epochs"] == 1
    assert config["quant"]["gelu"] == "ppoly" and config["quant"]["layernorm"] == "ivit"
    assert config["model_config"]["embed_dim"] == 32
    assert math.isfinite(history["train/loss"]) and 0 <= history["val/top1"] <= 100
    assert "val/loss" in summary and summary["best_top1"] == history["val/top1"]
