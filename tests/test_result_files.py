"""Result files say what they hold: the kind and the key of the records written by
tag_result, read back by read_result and result_records, and clear errors for a file
that cannot be read as the kind asked for."""

import json

import pytest

from intvit.result_files import (RESULT_KINDS, ResultFileError, read_result, result_kind,
                                 result_records, tag_result)


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
                                              r"`intvit eval --json FILE`\), not search"):
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
        assert kind.command.startswith("`intvit ")
        assert kind.records is None or kind.records.isidentifier()
