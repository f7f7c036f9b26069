"""The intvit command line: analyze's table, JSON and plots; clear errors."""

import json
import shlex
import subprocess
import sys

import pytest

from intvit.cli import main
from intvit.fileio import read_run_manifest


def test_analyze_json_schema(tmp_path, capsys):
    out = tmp_path / "gelu.json"
    assert main(["analyze", "--op", "gelu", "--variants", "float,ivit_n_20,ppoly_seg_8",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["kind"] == "analysis" and result["records"] == "ops"
    [data] = result["ops"]
    assert data["op"] == "gelu"
    assert list(data["variants"]) == ["float", "ivit_n_20", "ppoly_seg_8"]
    for result in data["variants"].values():
        assert set(result) == {"max_abs_error", "mean_abs_error", "rms_error", "cost"}
        assert 0 <= result["mean_abs_error"] <= result["rms_error"] <= result["max_abs_error"]
    cost = data["variants"]["ivit_n_20"]["cost"]
    assert {"mul", "shift", "add", "div", "cmp", "widest_bits"} <= set(cost)
    assert "| ivit_n_20 |" in capsys.readouterr().out


def test_analyze_all_ops_writes_plots_and_table(tmp_path):
    out = tmp_path / "report"
    assert main(["analyze", "--rows", "16", "--out", str(out), "--json",
                 str(tmp_path / "all.json")]) == 0
    for op in ("gelu", "softmax", "layernorm", "exp"):
        png = out / f"{op}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "approximations.md").read_text()
    assert "**layernorm**" in table and "![softmax](softmax.png)" in table
    ops = [entry["op"] for entry in json.loads((tmp_path / "all.json").read_text())["ops"]]
    assert ops == ["gelu", "exp", "softmax", "layernorm"]
    manifest = read_run_manifest(out)
    assert manifest["command"] == "intvit " + shlex.join(["analyze", "--rows", "16", "--out",
                                                          str(out), "--json",
                                                          str(tmp_path / "all.json")])
    assert manifest["outputs"]["plots"] == [str(out / f"{op}.png") for op in ops]
    assert manifest["outputs"]["table"] == str(out / "approximations.md")
    assert set(manifest["versions"]) == {"intvit", "torch", "python"}


def test_variant_that_cannot_run_is_reported_not_dropped(tmp_path):
    out = tmp_path / "a.json"
    assert main(["analyze", "--op", "gelu", "--bits", "16", "--variants", "ivit,ibert",
                 "--json", str(out)]) == 0
    [op] = json.loads(out.read_text())["ops"]
    variants = op["variants"]
    assert "ivit_n_18" in variants["ivit"]["error"]
    assert "max_abs_error" in variants["ibert"]


@pytest.mark.parametrize("argv,needle", [
    (["analyze", "--op", "gelu", "--variants", "shiftgelu"], "unknown gelu approximation"),
    (["analyze", "--variants", "ivit"], "needs a single --op"),
])
def test_bad_input_is_a_clear_error(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--bits", "40"], ["--scale", "-1"], ["--op", "relu"]])
def test_bad_flags_exit_nonzero(flag):
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", *flag])
    assert exit_info.value.code == 2


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "intvit.cli", "analyze", "--op", "exp",
                             "--variants", "ivit"], capture_output=True, text=True, check=True)
    assert "| ivit |" in result.stdout


HEAVY = ("tvm", "onnxruntime", "wandb")


def test_help_and_analyze_do_not_import_the_heavy_backends():
    """Commands are imported lazily: listing them, a command's help, or analyzing loads
    no engine backend and no W&B (one fresh interpreter runs all three)."""
    script = ("import sys\nfrom intvit.cli import main\n"
              "for argv in (['--help'], ['analyze', '--help'],\n"
              "             ['analyze', '--op', 'exp', '--variants', 'ivit']):\n"
              "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
              f"print('LOADED', sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)}))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)
    assert "| ivit |" in result.stdout and "{analyze," in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "LOADED []", result.stdout[-500:]


def test_the_cli_passes_its_command_line_to_the_library(tmp_path, monkeypatch):
    """``fileio.command_line`` reads no global: the caller passes the argv it means; main
    without arguments passes this process's."""
    from intvit import fileio

    with pytest.raises(TypeError):
        fileio.command_line()  # noqa: the argv is required
    assert fileio.command_line(["eval", "--data", "a b"]) == "intvit eval --data 'a b'"
    out = tmp_path / "plots"
    monkeypatch.setattr(sys, "argv", ["intvit", "analyze", "--op", "gelu", "--variants",
                                      "float", "--rows", "4", "--out", str(out)])
    assert main() == 0
    assert read_run_manifest(out)["command"] == ("intvit analyze --op gelu --variants float "
                                                 f"--rows 4 --out {shlex.quote(str(out))}")
