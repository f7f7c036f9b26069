"""The int engine's profile by op class (``intvit bench --profile``)."""

from conftest import SMALL
from test_engine import FAMILIES, calibrated, images

from intvit.engine import export_program
from intvit.engine.profile import CLASSES, op_class, profile_int, profile_markdown
from intvit.models import model_config


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
