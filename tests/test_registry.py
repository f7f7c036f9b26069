"""Names of approximations: the I-ViT extension's syntax, canonical names, errors."""

import pytest

from intvit.approx import REGISTRY, UnknownApproximation, build, families, parse_name


def test_every_op_has_every_family():
    assert set(REGISTRY) == {"gelu", "softmax", "layernorm", "exp"}
    for op in ("gelu", "softmax", "exp"):
        assert families(op) == ["float", "ivit", "ibert", "ppoly"]
    assert families("layernorm") == ["float", "ivit", "ibert"]


def test_parse_extension_names():
    assert parse_name("ivit") == ("ivit", {})
    assert parse_name("ivit_n_20") == ("ivit", {"n": "20"})
    assert parse_name("ppoly_seg_16_deg_2_scale-bits_22_backend_float") == (
        "ppoly", {"seg": "16", "deg": "2", "scale-bits": "22", "backend": "float"})


def test_parameters_reach_the_kernel():
    approx = build("gelu", "ppoly_seg_16_deg_2_scale-bits_22_backend_float")
    assert approx.args == {"seg": 16, "deg": 2, "scale-bits": 22, "bounds": "uniform",
                           "backend": "float"}
    kernel = approx.prepare(0.0625)
    assert not kernel.integer_only
    assert build("softmax", "ivit_n_12").prepare(0.1).n == 12
    assert build("gelu", "ibert_n_14").prepare(0.1).n == 14


def test_canonical_names_drop_defaults_and_round_trip():
    assert build("gelu", "ivit_n_23").name == "ivit"
    assert build("gelu", "ivit_n_20").name == "ivit_n_20"
    name = build("exp", "ppoly_deg_3_seg_8").name
    assert name == "ppoly_seg_8_deg_3"
    assert build("exp", name) == build("exp", "ppoly_deg_3_seg_8")


@pytest.mark.parametrize("op,name,needle", [
    ("gelu", "ivitt", "accepted"),
    ("gelu", "ivit_m_3", "accepted: n, sig-bits"),
    ("gelu", "ivit_n", "malformed"),
    ("gelu", "ivit_n_x", "bad value"),
    ("gelu", "ivit_n_0", "positive"),
    ("gelu", "ivit_n_3_n_4", "repeats"),
    ("gelu", "ppoly_backend_gpu", "int, float"),
    ("layernorm", "ppoly", "accepted"),
    ("attention", "ivit", "ops: gelu"),
])
def test_bad_names_say_what_is_accepted(op, name, needle):
    with pytest.raises(UnknownApproximation, match=needle):
        build(op, name)


def test_unknown_family_lists_families_and_parameters():
    with pytest.raises(UnknownApproximation) as err:
        build("softmax", "shiftmax")
    message = str(err.value)
    for family in ("float", "ivit", "ibert", "ppoly", "scale-bits"):
        assert family in message


def test_approx_objects_pass_through_and_check_their_op():
    gelu = build("gelu", "ibert")
    assert build("gelu", gelu) is gelu
    with pytest.raises(UnknownApproximation, match="gelu variant"):
        build("softmax", gelu)
