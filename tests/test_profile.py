"""The int engine's profile by op class (``intvit bench --profile``), its table, and the
spec that carries a program and its images to a fresh process's profile."""

import json

import torch
from conftest import SMALL
from test_engine import FAMILIES, calibrated, images

from intvit.engine import export_program
from intvit.engine.profile import (CLASSES, op_class, profile_int, profile_markdown,
                                   read_profile_spec, write_profile_spec)
from intvit.engine.runtime import IntRuntime
from intvit.models import model_config


def table_ms(table: str) -> dict[str, list[float]]:
    """The milliseconds per batch column of each row (op class or total) of a
    :func:`profile_markdown` table."""
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = [float(ms) for ms in cells[1::2]]
    return rows


def test_op_classes():
    assert op_class("linear") == op_class("matmul") == "int8 products"
    assert op_class("lookup") == "GELU" and op_class("layernorm") == "LayerNorm"
    assert op_class("transpose") == op_class("concat") == "data movement"


def test_profile_covers_every_class_and_prints_a_table():
    program = export_program(calibrated(model_config("custom", **SMALL), FAMILIES["ivit"]))
    profiles = {b: profile_int(program, images(b, seed=b), repeats=1) for b in (1, 4)}
    for profile in profiles.values():
        assert list(profile) == list(CLASSES)
        assert all(v >= 0 for v in profile.values())
        assert all(profile[c] > 0 for c in ("int8 products", "requantization", "GELU",
                                            "Softmax", "LayerNorm", "data movement"))
    table = profile_markdown("small", profiles)
    assert "| small: op class | batch 1: ms | share | batch 4: ms | share |" in table
    assert table.count("\n") == len(CLASSES) + 2
    ms = table_ms(table)
    assert list(ms) == [*CLASSES, "total"]
    for column, b in enumerate((1, 4)):
        assert all(abs(ms[c][column] - profiles[b][c]) <= 0.051 for c in CLASSES)
        assert abs(ms["total"][column] - sum(profiles[b].values())) <= 0.051


def test_profile_spec_carries_the_program_and_images_through_json(tmp_path):
    model = calibrated(model_config("custom", **SMALL), FAMILIES["ivit"])
    program = export_program(model)
    batches = {1: images(1, seed=1), 3: images(3, seed=3)}
    spec = json.loads(json.dumps(write_profile_spec(program, batches, 2, tmp_path / "spec")))
    assert spec["threads"] == 2
    loaded, back = read_profile_spec(spec)
    assert list(back) == [1, 3] and all(torch.equal(back[b], batches[b]) for b in batches)
    assert torch.equal(IntRuntime(loaded)(back[3]), model.forward_int(batches[3]).value)
