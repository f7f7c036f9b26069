"""The integer engine: export, bit-exact engines for every family and model, the
program file's guards, the ONNX graph's integer-only body, golden vectors, the CLI."""

import runpy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL, randomize

from intvit.cli import main
from intvit.engine import IntProgram, ProgramError, export_program
from intvit.engine.engines import make_engine
from intvit.engine.golden import check_golden, write_golden
from intvit.engine.onnx_export import op_types, to_onnx
from intvit.engine.runtime import IntRuntime
from intvit.models import build_quant_model, family, model_config, short_names
from intvit.models.checkpoint import save_checkpoint
from intvit.quant import Mode, QuantConfig

FAMILIES = {"ivit": dict(gelu="ivit", softmax="ivit", layernorm="ivit"),
            "ibert": dict(gelu="ibert", softmax="ibert", layernorm="ibert"),
            "ppoly": dict(gelu="ppoly", softmax="ppoly", layernorm="ivit"),
            "mixed": dict(gelu="ibert", softmax="ppoly_seg_8", layernorm="ibert")}
SEVEN = list(short_names())


def images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def calibrated(cfg, quant: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_quant_model(cfg, QuantConfig(**quant))
    randomize(model)
    model.set_mode(Mode.CALIBRATE)
    with torch.no_grad():
        model(images(16, cfg.img_size, seed=1))
    return model.eval()


def small(name: str):
    """A model of the named family's widths and heads, shrunk to a few tokens and blocks."""
    cfg = replace(model_config(name), num_classes=10)
    return family(cfg.arch).shrink(cfg)


def all_engines(program: IntProgram) -> dict:
    kinds = ["int", "onnx"] + (["tvm"] if tvm_available() else [])
    return {k: make_engine(k, program) for k in kinds}


def tvm_available() -> bool:
    from intvit.engine.tvm import tvm_available as available
    return available()


def assert_engines_agree(model, x: torch.Tensor) -> IntProgram:
    program = export_program(model)
    expected = model.forward_int(x).value
    for kind, engine in all_engines(program).items():
        got = engine(x)
        assert got.dtype == torch.int64, kind
        assert torch.equal(got, expected), f"{kind} differs in {int((got != expected).sum())}"
    return program


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_gives_identical_logits_on_every_engine(family):
    cfg = model_config("custom", **SMALL)
    assert_engines_agree(calibrated(cfg, FAMILIES[family]), images(12, seed=3))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_on_swin_with_shifted_padded_windows(family):
    cfg = model_config("custom", arch="swin", img_size=24, patch_size=2, embed_dim=16,
                       depths=(2, 2), heads=(1, 2), window_size=5, num_classes=10)
    assert_engines_agree(calibrated(cfg, FAMILIES[family]), images(6, 24, seed=3))


@pytest.mark.parametrize("name", SEVEN)
def test_each_model_family_small(name):
    cfg = small(name)
    assert_engines_agree(calibrated(cfg, FAMILIES["ivit"]), images(3, cfg.img_size, seed=3))


def test_full_size_deit_tiny_is_bit_exact():
    model = calibrated(model_config("deit_tiny"), FAMILIES["ivit"])
    x = images(2, 224, seed=4)
    program = export_program(model, x)
    expected = model.forward_int(x).value
    for kind, engine in all_engines(program).items():
        assert torch.equal(engine(x), expected), kind
    fp32 = 4 * sum(p.numel() for p in model.parameters())
    assert 0.24 < program.nbytes() / fp32 < 0.30  # int8 weights: about a quarter


def test_debug_mode_checks_int32_and_declared_widths():
    model = calibrated(model_config("custom", **SMALL), FAMILIES["ivit"])
    program = export_program(model)
    x = images(4, seed=5)
    assert torch.equal(IntRuntime(program, debug=True)(x), IntRuntime(program)(x))
    with pytest.raises(ValueError, match="int engine"):
        make_engine("onnx", program, debug=True)
    node = next(n for n in program.nodes if n.op == "linear")
    program.tensors[node.params["weight"]] = torch.full_like(
        program.tensors[node.params["weight"]], 127)
    program.tensors[node.params["bias"]] = torch.full_like(
        program.tensors[node.params["bias"]], 2**31 - 1)
    with pytest.raises(ArithmeticError, match="linear"):
        IntRuntime(program, debug=True)(x)


@pytest.fixture(scope="module")
def program_file(tmp_path_factory):
    model = calibrated(model_config("custom", **SMALL), FAMILIES["ibert"])
    path = tmp_path_factory.mktemp("program") / "model.safetensors"
    export_program(model).save(path)
    return model, path


def test_program_round_trips(program_file):
    model, path = program_file
    program = IntProgram.load(path)
    x = images(5, seed=6)
    assert torch.equal(IntRuntime(program)(x), model.forward_int(x).value)
    floats = sorted(k for k, t in program.tensors.items() if t.dtype.is_floating_point)
    assert floats == ["input.scale", "output.scale"]
    weights = [program.tensors[n.params["weight"]] for n in program.nodes if n.op == "linear"]
    assert weights and all(w.dtype == torch.int8 for w in weights)


def test_truncated_corrupted_and_foreign_files_are_clear_errors(program_file, tmp_path):
    _, path = program_file
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ProgramError, match="truncated or corrupted"):
        IntProgram.load(tmp_path / "cut.safetensors")
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF
    (tmp_path / "flip.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(ProgramError, match="checksum"):
        IntProgram.load(tmp_path / "flip.safetensors")
    model, _ = program_file
    save_checkpoint(tmp_path / "ck.safetensors", model)
    with pytest.raises(ProgramError, match="not an intvit program"):
        IntProgram.load(tmp_path / "ck.safetensors")
    with pytest.raises(ProgramError, match="no program"):
        IntProgram.load(tmp_path / "missing.safetensors")


def test_version_mismatch_is_a_clear_error(program_file, tmp_path, monkeypatch):
    import intvit.engine.program as program_module
    _, path = program_file
    monkeypatch.setattr(program_module, "VERSION", 99)
    with pytest.raises(ProgramError, match="version 2; this intvit reads version 99"):
        IntProgram.load(path)


@pytest.mark.parametrize("kind", ["int", "onnx"])
def test_bad_inputs_are_clear_errors(program_file, kind):
    _, path = program_file
    engine = make_engine(kind, IntProgram.load(path))
    with pytest.raises(ProgramError, match=r"shape \(B, 3, 32, 32\)"):
        engine(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ProgramError, match="float images"):
        engine(torch.zeros(2, 3, 32, 32, dtype=torch.int64))
    with pytest.raises(ProgramError, match="NaN"):
        engine(torch.full((1, 3, 32, 32), float("nan")))


def test_float_reference_families_are_refused():
    model = calibrated(model_config("custom", **SMALL), dict(gelu="ivit", softmax="float",
                                                            layernorm="ivit"))
    with pytest.raises(ProgramError, match="not integer-only"):
        export_program(model)


def test_a_model_without_quantization_is_refused():
    model = build_quant_model(model_config("custom", **SMALL), QuantConfig(enabled=False))
    with pytest.raises(ProgramError, match="quantization off"):
        export_program(model)


def test_onnx_body_is_integer_only(program_file):
    _, path = program_file
    program = IntProgram.load(path)
    nodes = op_types(to_onnx(program))
    ends = {n.module + "/" for n in program.nodes if n.op in ("quantize", "dequantize")}
    ends.add("output/")
    float_types = {"FLOAT", "DOUBLE", "FLOAT16", "BFLOAT16"}
    in_body = [(name, op, types) for name, op, types in nodes
               if not any(name.startswith(prefix) for prefix in ends)]
    assert len(in_body) > 0.9 * len(nodes)
    assert not [n for n in in_body if float_types & set(n[2])]
    assert "?" not in {t for _, _, types in nodes for t in types}
    ops = {op for _, op, _ in in_body}
    assert "MatMulInteger" in ops and "MatMul" not in ops


def test_golden_vectors_replay_and_catch_a_changed_value(program_file, tmp_path):
    _, path = program_file
    program = IntProgram.load(path)
    out = write_golden(program, images(2, seed=7), tmp_path / "golden", progress=False)
    report = check_golden(out, progress=False)
    assert report.ok and report.nodes == len(program.nodes)
    from safetensors.torch import load_file, save_file
    target = sorted((out / "nodes").glob("*_softmax.safetensors"))[0]
    tensors = load_file(str(target))
    tensors["output"] = tensors["output"].clone()
    tensors["output"].view(-1)[0] += 1
    save_file(tensors, str(target))
    report = check_golden(out, progress=False)
    assert len(report.mismatches) == 1 and "softmax" in report.mismatches[0]


def test_cli_export_inspect_verify_eval(program_file, tmp_path, capsys):
    model, _ = program_file
    ck = save_checkpoint(tmp_path / "ck.safetensors", model)
    prog, graph = tmp_path / "p.safetensors", tmp_path / "p.onnx"
    assert main(["export", "--checkpoint", str(ck), "--out", str(prog)]) == 0
    assert main(["export", "--checkpoint", str(ck), "--out", str(graph)]) == 0
    assert main(["export", "--checkpoint", str(ck), "--format", "golden", "--out",
                 str(tmp_path / "golden")]) == 0
    assert main(["inspect", str(prog)]) == 0
    assert main(["inspect", str(graph)]) == 0
    out = capsys.readouterr().out
    assert "MatMulInteger" in out and "intvit program" in out
    assert main(["verify", "--checkpoint", str(ck), "--engines", "model,int,onnx",
                 "--limit", "20", "--json", str(tmp_path / "v.json")]) == 0
    assert "0 of 200 logits differ" in capsys.readouterr().out
    assert main(["verify", "--golden", str(tmp_path / "golden")]) == 0
    results = {}
    for engine in ("model", "int", "onnx"):
        source = ["--checkpoint", str(ck)] if engine == "model" else ["--program", str(prog)]
        assert main(["eval", *source, "--engine", engine, "--data", "synthetic",
                     "--val-limit", "24", "--json", str(tmp_path / f"{engine}.json")]) == 0
        import json
        results[engine] = json.loads((tmp_path / f"{engine}.json").read_text())
    assert results["model"]["top1"] == results["int"]["top1"] == results["onnx"]["top1"]
    assert main(["eval", "--engine", "int", "--data", "synthetic"]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_onnx_floor_division_and_requantize_match_torch_on_extremes():
    """The ONNX emulation of arithmetic shifts against torch, on negative and large values."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from intvit.arith import requantize
    from intvit.engine.onnx_export import GraphWriter
    from intvit.engine.program import IntProgram as P
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randint(-2**31, 2**31, (4000,), generator=gen),
                   torch.tensor([-2**31, 2**31 - 1, -1, 0, 1, -2, 2])])
    m = torch.randint(2**30, 2**31, (x.numel(),), generator=gen)
    e = torch.randint(0, 63, (x.numel(),), generator=gen).clamp(1, 62)
    program = P([], {"m": m, "e": e}, {})
    w = GraphWriter(program)
    w.types["x"] = TensorProto.INT64
    out = w.requantize("x", "m", "e")
    graph = helper.make_graph(w.nodes, "t", [helper.make_tensor_value_info("x", TensorProto.INT64,
                                                                          [x.numel()])],
                              [helper.make_tensor_value_info(out, TensorProto.INT64, [x.numel()])],
                              list(w.inits.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    got = ort.InferenceSession(model.SerializeToString())
    got = got.run(None, {"x": x.numpy()})[0]
    assert np.array_equal(got, requantize(x, m, e, 32).numpy())


def test_onnx_layernorm_runs_the_newton_steps_of_its_declared_variance(program_file):
    """Each LayerNorm's integer sqrt in the ONNX graph unrolls exactly the
    ``newton_steps(B)`` that :func:`intvit.arith.isqrt` runs for the B-bit variance bound
    the kernel declares (one ``Min`` per step), not a fixed maximum."""
    from intvit.approx.rows import variance_max
    from intvit.arith import newton_steps

    program = IntProgram.load(program_file[1])
    graph = to_onnx(program)
    layernorms = [n for n in program.nodes if n.op == "layernorm"]
    assert layernorms
    for node in layernorms:
        length = program.tensors[node.params["beta"]].shape[0]
        bits = variance_max(node.attrs["in_bits"], node.attrs["var_shift"], length).bit_length()
        steps = [n for n in graph.graph.node
                 if n.name.startswith(f"{node.module}/") and n.op_type == "Min"]
        assert len(steps) == newton_steps(bits) < 8


def test_bench_times_every_row_in_its_own_process(tmp_path):
    from intvit.cli.bench import TARGETS
    from intvit.engine.bench import markdown, time_engines, verdicts
    from intvit.models.registry import float_twin
    model = calibrated(model_config("custom", **SMALL), FAMILIES["ivit"])
    rows = time_engines("small", float_twin(model), model, export_program(model), [2],
                        ["int", "onnx"], n_threads=1, warmup=0, repeats=2, workdir=tmp_path)
    assert [r.engine for r in rows] == ["torch_fp32", "ort_fp32", "ort_int8_dynamic", "int",
                                        "onnx"]
    assert rows[0].speedup == 1.0 and all(r.median_ms > 0 for r in rows)
    assert [r.exact for r in rows] == [None, None, None, True, True]
    table = markdown(rows, "header")
    assert "| small | 2 | onnx |" in table
    tiny = [replace(r, model="deit_tiny", batch=1) for r in rows]
    assert "deit_tiny, batch 1" in verdicts(tiny, TARGETS)[0]


def test_bench_rounds_interleave_the_rows_and_keep_each_fastest(tmp_path, monkeypatch):
    """With rounds, all of a batch's rows are timed once, then all again; each row keeps
    its round of the least median, is exact only if every round was, and reports the first
    round's setup (the compile)."""
    from intvit.engine import bench
    from intvit.models.registry import float_twin
    order, medians = [], iter([5.0, 4.0, 3.0, 2.0, 9.0, 1.0, 6.0, 7.0])

    def worker(spec):
        order.append(spec["kind"])
        exact = None if spec["kind"] in bench.BASELINES else len(order) < 5
        return dict(median_ms=next(medians), p10_ms=0.5, p90_ms=9.5, exact=exact,
                    setup_s=float(len(order)))

    monkeypatch.setattr(bench, "run_worker", worker)
    model = calibrated(model_config("custom", **SMALL), FAMILIES["ivit"])
    rows = bench.time_engines("small", float_twin(model), model, export_program(model), [2],
                              ["int"], n_threads=1, warmup=0, repeats=1, workdir=tmp_path,
                              rounds=2)
    kinds = [*bench.BASELINES, "int"]
    assert order == kinds + kinds
    assert [r.median_ms for r in rows] == [5.0, 1.0, 3.0, 2.0]
    assert [r.setup_s for r in rows] == [1.0, 2.0, 3.0, 4.0]
    assert rows[-1].exact is False and rows[0].exact is None
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        bench.run_bench(["deit_tiny"], [1], ["int"], rounds=0)


def test_bench_verdicts_hold_each_model_to_its_goal_at_every_batch():
    from intvit.engine.bench import Goal, Row, verdicts

    def rows(model, batch, fp32, ort, c, tvm):
        return [Row(model, batch, "torch_fp32", fp32, fp32, fp32, 1.0),
                Row(model, batch, "ort_int8_dynamic", ort, ort, ort, fp32 / ort),
                Row(model, batch, "c", c, c, c, fp32 / c, True),
                Row(model, batch, "tvm", tvm, tvm, tvm, fp32 / tvm, True)]

    measured = (rows("deit_small", 1, 100.0, 30.0, 20.0, 24.0)      # 0.67x ORT, 5x FP32
                + rows("deit_small", 8, 800.0, 240.0, 150.0, 210.0)  # 0.62x ORT, 5.3x
                + rows("deit_tiny", 1, 20.0, 10.0, 12.0, 10.5))      # 1.05x ORT
    lines = verdicts(measured, {"deit_small": Goal(0.67, 4.0), "deit_tiny": Goal(1.0),
                                "swin_tiny": Goal(1.0)})
    assert len(lines) == 3  # swin_tiny was not measured
    assert lines[0].startswith("- deit_small, batch 1: fastest integer engine `c`")
    assert lines[0].endswith(": met")
    assert "`c` 150.00 ms = 0.62x" in lines[1] and lines[1].endswith(": met")
    assert "`tvm` 10.50 ms = 1.05x" in lines[2] and lines[2].endswith("**missed**")
    slow = verdicts(measured[:4], {"deit_small": Goal(0.67, 6.0)})  # fast, not 6x FP32
    assert slow[0].endswith("**missed**")


def test_bench_readme_sections_are_named_markers_the_readme_has(tmp_path, capsys):
    from intvit.engine.bench import readme_markers

    assert readme_markers() == ("<!-- latency:start -->", "<!-- latency:end -->")
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for section in ("latency", "latency-avx2", "eval-speed", "eval-speed-avx2"):
        assert all(marker in readme for marker in readme_markers(section))  # per CPU kind
    with pytest.raises(ValueError, match="letters, digits"):
        readme_markers("latency:x -->")
    missing = tmp_path / "README.md"
    missing.write_text("no markers here\n")
    with pytest.raises(SystemExit, match="latency-avx2:start"):  # before any row is timed
        main(["bench", "--models", "deit_tiny", "--update-readme", str(missing),
              "--readme-section", "latency-avx2"])
    assert missing.read_text() == "no markers here\n"
    eval_speed = runpy.run_path(str(Path(__file__).parents[1] / "benchmarks/eval_speed.py"))
    with pytest.raises(SystemExit, match="eval-speed-x:start"):  # before any model is built
        eval_speed["main"](["--update-readme", "--readme-section", "eval-speed-x"])


def test_auto_takes_the_fastest_engine_this_machine_can_build(monkeypatch):
    from intvit.engine import engines

    assert engines.engine_preference() == ("c", "tvm", "int")
    assert engines.fastest_engine() == "c"
    monkeypatch.setenv("PATH", "")  # no compiler, so no c engine
    monkeypatch.delenv("CC", raising=False)
    assert "needs a C compiler" in engines.unavailable("c")
    assert engines.fastest_engine() == "tvm"
    monkeypatch.setattr(engines.importlib.util, "find_spec", lambda name: None)
    assert "needs tvm, which is not installed" in engines.unavailable("tvm")
    assert engines.fastest_engine() == "int"


@pytest.mark.parametrize("kind", ["int", "onnx"])
def test_a_batch_runs_in_chunks_with_the_same_integers(program_file, kind):
    model, path = program_file
    engine = make_engine(kind, IntProgram.load(path))
    x = images(7, seed=8)
    engine.batch_chunk = 3  # chunks of 3, 3 and 1 images
    assert torch.equal(engine(x), model.forward_int(x).value)


def test_make_engine_passes_the_options_its_registry_entry_declares(monkeypatch):
    """No engine is special-cased by name: a registered engine gets ``threads`` when it is
    threaded and ``debug`` when it checks overflow, and overflow checks elsewhere are an
    error naming the engines that have them."""
    from intvit.engine import engines

    built = []

    def build(program, **options):
        built.append(options)
        return program

    monkeypatch.setitem(engines.ENGINES, "checked", engines.EngineKind(
        build, threaded=False, checks_overflow=True))
    monkeypatch.setitem(engines.ENGINES, "pooled", engines.EngineKind(
        build, missing=lambda: "needs a pool"))
    assert make_engine("checked", "p", threads=3, debug=True) == "p"
    assert make_engine("pooled", "p", threads=3) == "p"
    assert built == [{"debug": True}, {"threads": 3}]
    with pytest.raises(ValueError, match="overflow checks run on the int or checked engine"):
        make_engine("pooled", "p", debug=True)
    assert engines.unavailable("pooled") == "needs a pool"
    with pytest.raises(ValueError, match="unknown engine 'nope'"):
        engines.unavailable("nope")
