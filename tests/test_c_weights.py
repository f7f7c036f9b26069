"""The c engine's weights objects: the blob and the text routes hold the same bytes
(every element type, its extreme values, odd sizes) and give the int engine's logits;
a second build calls no compiler, a program that shares the linear weights reuses their
object, a corrupted or missing cache entry is rebuilt, and the text fallback is taken
where the blob cannot be used."""

import ctypes
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SMALL
from test_c_export import TEST_FLAGS
from test_engine import FAMILIES, calibrated, images
from test_new_approximation import LeakyRelu

from intvit.approx.registry import REGISTRY, register
from intvit.engine import ProgramError, export_program
from intvit.engine.c import generate
from intvit.engine.c import weights as cweights
from intvit.engine.c.build import CEngine, build, compiler
from intvit.engine.c.library import Constant
from intvit.engine.c.weights import ALIGN, group_object, symbol, weight_objects
from intvit.engine.engines import make_engine
from intvit.models import model_config
from intvit.quant.config import BitWidths

# every element type at its ends, odd sizes, and a lone value
EDGES = [("int8_t", ctypes.c_int8, [-128, 127, 0, -1, 5]),
         ("uint8_t", ctypes.c_uint8, [255, 0, 1]),
         ("int16_t", ctypes.c_int16, [-32768, 32767, -1, 0, 1, 2, 3]),
         ("int32_t", ctypes.c_int32, [-(1 << 31), (1 << 31) - 1, -1]),
         ("int32_t", ctypes.c_int32, [-(1 << 31)])]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INTVIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def compiles(monkeypatch, cache):
    """The cache entries (final paths) that compiler commands write from now on: each
    command writes a temporary ``.NAME.PID.XXXX.tmp`` beside its entry ``NAME``."""
    outputs = []
    run = subprocess.run

    def spy(command, *args, **kwargs):
        if "-o" in command and command[command.index("-o") + 1].startswith(str(cache)):
            tmp = Path(command[command.index("-o") + 1])
            outputs.append(tmp.with_name(tmp.name[1:].rsplit(".", 3)[0]))
        return run(command, *args, **kwargs)
    monkeypatch.setattr(subprocess, "run", spy)
    return outputs


@pytest.fixture(scope="module")
def programs():
    """name -> (model, program): ivit and ibert share their linear weights; the leaky
    GELU with a 12-bit output is frozen as int16 tables."""
    register(LeakyRelu)
    try:
        quants = {**FAMILIES, "leaky16": dict(gelu="leaky", bits=BitWidths(mlp_out=12))}
        out = {}
        for name in ("ivit", "ibert", "leaky16"):
            model = calibrated(model_config("custom", **SMALL), quants[name])
            out[name] = model, export_program(model)
        return out
    finally:
        del REGISTRY["gelu"]["leaky"]


@pytest.mark.parametrize("route", ["blob", "text"])
def test_objects_hold_every_type_at_its_ends(route, tmp_path):
    cc = compiler()
    consts = [Constant(f"c{i}", f"t{i}", ctype, torch.tensor(values))
              for i, (ctype, _, values) in enumerate(EDGES)]
    symbols = [symbol(c) for c in consts]
    obj = group_object(symbols, cc, route)
    lib_path = tmp_path / "w.so"
    subprocess.run([cc, "-shared", "-o", str(lib_path), str(obj)], check=True)
    lib = ctypes.CDLL(str(lib_path))
    for s, (_, ctype, values) in zip(symbols, EDGES):
        got = (ctype * len(values)).in_dll(lib, s.name)
        assert list(got) == values
        if route == "blob":
            assert ctypes.addressof(got) % ALIGN == 0


@pytest.mark.parametrize("ctype,value", [("int8_t", 128), ("uint8_t", -1), ("int16_t", -32769),
                                         ("int32_t", 1 << 31)])
def test_a_value_past_its_type_is_refused_not_wrapped(ctype, value):
    with pytest.raises(ValueError, match=f"past {ctype}"):
        Constant("c0", "t", ctype, torch.tensor([0, value])).data()


@pytest.mark.parametrize("ctype,values,want", [
    ("int8_t", torch.tensor([-128, 127, -1], dtype=torch.int8), b"\x80\x7f\xff"),
    ("int32_t", torch.tensor([-(1 << 31), 258], dtype=torch.int32),
     b"\x00\x00\x00\x80\x02\x01\x00\x00"),
    ("uint8_t", torch.tensor([True, False]), b"\x01\x00"),
    ("int16_t", torch.tensor([[-2], [300]], dtype=torch.int32), b"\xfe\xff\x2c\x01")])
def test_constant_bytes_are_its_values_little_endian(ctype, values, want):
    """Stored in the C type itself or converted to it (checked, then cast)."""
    assert Constant("c0", "t", ctype, values).data() == want


@pytest.mark.parametrize("name", ["ivit", "leaky16"])
def test_blob_and_text_builds_equal_the_int_engine(programs, name):
    model, program = programs[name]
    library = generate(program)
    x = images(6, 32, seed=2)
    want = make_engine("int", program)(x)
    assert torch.equal(want, model.forward_int(x).value)
    for route in ("blob", "text"):
        assert weight_objects(library, compiler(), route).route == route
        got = CEngine(program, flags=TEST_FLAGS, library=library, weights=route)(x)
        assert torch.equal(got, want), route


def test_second_build_calls_no_compiler(programs, compiles):
    library = generate(programs["ivit"][1])
    first = build(library, TEST_FLAGS)
    linear, other = weight_objects(library, compiler()).objects
    assert compiles == [linear, other, first]
    compiles.clear()
    assert build(library, TEST_FLAGS) == first and compiles == []


def test_program_with_the_same_linear_weights_reuses_their_object(programs, compiles):
    a, b = (generate(programs[n][1]) for n in ("ivit", "ibert"))
    cc = compiler()
    objects_a = weight_objects(a, cc).objects
    compiles.clear()
    objects_b = weight_objects(b, cc).objects
    assert objects_a[0] == objects_b[0]  # the linear weights: same bytes, same object
    assert objects_a[1] != objects_b[1]  # the biases and multipliers differ
    assert compiles == [objects_b[1]]  # only those were assembled


def test_corrupted_or_missing_cache_entries_are_rebuilt(programs, compiles):
    model, program = programs["ivit"]
    library = generate(program)
    target = build(library, TEST_FLAGS)
    linear = weight_objects(library, compiler()).objects[0]
    good = linear.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 1
    linear.write_bytes(bytes(data))
    compiles.clear()
    assert build(library, TEST_FLAGS) == target
    assert linear.read_bytes() == good and compiles == [linear]  # the altered one only
    linear.with_name(linear.name + ".sha256").unlink()
    target.write_bytes(target.read_bytes()[:100])  # a truncated library
    compiles.clear()
    build(library, TEST_FLAGS)
    assert compiles == [linear, target]  # the object without a digest, the library
    compiles.clear()
    build(library, TEST_FLAGS)
    assert compiles == []


def test_text_fallback_where_the_blob_cannot_be_used(programs, monkeypatch):
    model, program = programs["leaky16"]
    library = generate(program)
    cc = compiler()
    monkeypatch.setitem(cweights._BLOB_PROBE, cc, "no GNU as here")
    assert weight_objects(library, cc).route == "text"
    with pytest.raises(ProgramError, match="no GNU as here"):
        weight_objects(library, cc, "blob")
    x = images(3, 32, seed=7)
    assert torch.equal(CEngine(program, flags=TEST_FLAGS, library=library)(x),
                       model.forward_int(x).value)
    monkeypatch.delitem(cweights._BLOB_PROBE, cc)
    monkeypatch.setattr(sys, "byteorder", "big")
    assert weight_objects(library, cc).route == "text"
    with pytest.raises(ProgramError, match="big-endian"):
        weight_objects(library, cc, "blob")


def test_probe_finds_this_toolchain_can_and_routes_are_checked(programs):
    cc = compiler()
    assert cweights.blob_unsupported(cc) is None  # gcc and GNU as on ELF, little-endian
    with pytest.raises(ValueError, match="accepted: auto, blob, text"):
        weight_objects(generate(programs["ivit"][1]), cc, "asm")
