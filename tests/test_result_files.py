"""Result files say what they hold: the kind and the key of the records written by
tag_result, read back by read_result and result_records, and clear errors for a file
that cannot be read as the kind asked for; every command's ``--json FILE`` is such a
file."""

import json
import re

import pytest

from intvit.cli import main
from intvit.result_files import (RESULT_KINDS, ResultFileError, read_result, result_kind,
                                 result_records, tag_result, write_result)

ARCH = ["--model", "custom", "--input-size", "32", "--patch-size", "8", "--embed-dim", "32",
        "--depth", "2", "--num-heads", "2"]
TINY = [*ARCH, "--layer-type", "ppoly", "--layernorm", "ibert", "--data", "synthetic",
        "--batch-size", "16", "--val-limit", "16", "--no-progress"]


def test_a_tagged_result_reads_back_with_its_records(tmp_path):
    payload = tag_result("sweep", {"sweep": "s.yaml", "runs": [{"run": "a"}, {"run": "b"}]})
    assert list(payload)[:2] == ["kind", "records"]
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(payload))
    value = read_result(path, ["sweep"])
    assert result_kind(path) == "sweep"
    assert result_records(value, str(path)) == ([{"run": "a"}, {"run": "b"}],
                                                {"sweep": "s.yaml"})
    assert tag_result("demo", {"fp32": {"top1": 1.0}}) == {"kind": "demo",
                                                          "fp32": {"top1": 1.0}}


@pytest.mark.parametrize("kind,payload,needle", [
    ("sweep", {"sweep": "s.yaml"}, "holds its records as a list under 'runs'"),
    ("search", {"entries": [], "kind": "x"}, "may not be named ['kind']"),
    ("nonsense", {}, "unknown result kind 'nonsense'; kinds: analysis,"),
])
def test_tag_result_refuses_what_would_not_read_back(kind, payload, needle):
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("(", r"\(")):
        tag_result(kind, payload)


def test_write_result_writes_a_file_that_reads_back_as_its_kind(tmp_path):
    path = write_result(tmp_path / "deep" / "qat.json", "qat-step-benchmark",
                        {"meta": {"torch": "x"}, "results": [{"ratio": 2.5}]})
    value = read_back(path, "qat-step-benchmark", "bench")
    assert result_records(value, str(path)) == ([{"ratio": 2.5}], {"meta": {"torch": "x"}})
    with pytest.raises(ValueError, match="holds its records as a list under 'results'"):
        write_result(tmp_path / "bad.json", "qat-step-benchmark", {"meta": {}})
    assert not (tmp_path / "bad.json").exists()


def test_files_that_cannot_be_read_as_the_kind_asked_for(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps([{"run": "a"}]))
    with pytest.raises(ResultFileError, match=r"no \"kind\" field.*re-create it with "
                                              r"`intvit sweep` \(its sweep.json\)"):
        read_result(old, ["sweep"])
    assert result_kind(old) is None
    other = tmp_path / "other.json"
    other.write_text(json.dumps(tag_result("evaluation", {"top1": 1.0})))
    with pytest.raises(ResultFileError, match=r"holds evaluation results \(written by "
                                              r"`intvit eval --json FILE` or `intvit "
                                              r"calibrate --json FILE`\), not search"):
        read_result(other, ["search"])
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ResultFileError, match="is not valid JSON"):
        read_result(broken, ["search"])
    assert result_kind(broken) is None and result_kind(tmp_path / "missing.json") is None
    with pytest.raises(ResultFileError, match="could not read"):
        read_result(tmp_path / "missing.json", ["search"])
    with pytest.raises(ResultFileError, match=r"got 'runs'; re-create it with `intvit sweep`"):
        result_records({"kind": "sweep", "records": "runs", "runs": [1]}, "x")


def test_every_kind_with_records_names_a_key():
    for kind in RESULT_KINDS.values():
        assert kind.command.startswith(("`intvit ", "`python benchmarks/"))
        assert kind.records is None or kind.records.isidentifier()


def read_back(path, kind, wrong):
    """``path`` reads back as ``kind`` (its records, when the kind has them, are objects),
    and is refused as ``wrong`` with a message naming both kinds and their commands."""
    value = read_result(path, [kind])
    assert result_kind(path) == kind
    if RESULT_KINDS[kind].records:
        records, _ = result_records(value, str(path))
        assert records
    expected = (f"{path} holds {kind} results (written by {RESULT_KINDS[kind].command}), "
                f"not {wrong} results (written by {RESULT_KINDS[wrong].command})")
    with pytest.raises(ResultFileError, match=re.escape(expected)):
        read_result(path, [wrong])
    return value


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A calibrated tiny checkpoint (``calibrate --json`` checked on the way)."""
    root = tmp_path_factory.mktemp("results")
    ck, js = root / "ck.safetensors", root / "calibrate.json"
    assert main(["calibrate", *TINY, "--batches", "1", "--out", str(ck), "--json",
                 str(js)]) == 0
    value = read_back(js, "evaluation", "training")
    assert value["engine"] == "model" and "images" not in value
    return ck


def test_train_json_is_a_training_result(tmp_path):
    js = tmp_path / "train.json"
    assert main(["train", *TINY, "--epochs", "1", "--train-limit", "16", "--calib-batches",
                 "1", "--output-dir", str(tmp_path / "run"), "--json", str(js)]) == 0
    value = read_back(js, "training", "evaluation")
    assert [epoch["epoch"] for epoch in value["history"]] == [1]
    assert value["checkpoint"] == str(tmp_path / "run" / "last.safetensors")


def test_verify_and_inspect_json_are_their_kinds(checkpoint, tmp_path):
    prog, graph, golden = tmp_path / "p.safetensors", tmp_path / "p.onnx", tmp_path / "golden"
    for out, extra in ((prog, []), (graph, []), (golden, ["--format", "golden"])):
        assert main(["export", "--checkpoint", str(checkpoint), *extra, "--out", str(out)]) == 0

    js = tmp_path / "verify.json"
    assert main(["verify", "--checkpoint", str(checkpoint), "--engines", "model,int",
                 "--limit", "4", "--json", str(js)]) == 0
    value = read_back(js, "verify", "golden-verify")
    assert value["reference"] == "model" and value["engines"]["int"]["differing_logits"] == 0

    js = tmp_path / "golden.json"
    assert main(["verify", "--golden", str(golden), "--json", str(js)]) == 0
    value = read_back(js, "golden-verify", "verify")
    assert value["nodes"] > 0 and value["mismatches"] == []

    js = tmp_path / "program.json"
    assert main(["inspect", str(prog), "--json", str(js)]) == 0
    value = read_back(js, "program-graph", "onnx-nodes")
    assert value["format"] == "intvit-program" and "c_memory" in value

    js = tmp_path / "onnx.json"
    assert main(["inspect", str(graph), "--json", str(js)]) == 0
    value = read_back(js, "onnx-nodes", "program-graph")
    assert value["file"] == str(graph)
    assert any(node["op"] == "MatMulInteger" for node in value["nodes"])


def test_bench_json_is_a_bench_result(tmp_path, monkeypatch):
    """The timing itself is :mod:`intvit.engine.bench`'s (tested there); here, what
    ``bench --json`` writes of its rows."""
    from intvit.engine import bench

    row = bench.Row("deit_tiny", 1, "int", median_ms=2.0, p10_ms=1.9, p90_ms=2.1, exact=True)
    monkeypatch.setattr(bench, "run_bench", lambda *args: ([row], []))
    js = tmp_path / "bench.json"
    assert main(["bench", "--models", "deit_tiny", "--batch-sizes", "1", "--engines", "int",
                 "--json", str(js)]) == 0
    value = read_back(js, "bench", "verify")
    assert value["rows"] == [{"model": "deit_tiny", "batch": 1, "engine": "int",
                              "median_ms": 2.0, "p10_ms": 1.9, "p90_ms": 2.1, "speedup": 0.0,
                              "exact": True, "setup_s": 0.0}]
    assert value["header"].startswith("`intvit bench --models deit_tiny")
