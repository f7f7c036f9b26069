"""IOStats: per-layer integer statistics and input samples of a calibrated model, and
the approximations measured on those samples (analysis.from_stats)."""

import csv
import json
import math

import pytest
import torch
from conftest import randomize, small_model

from intvit.analysis.from_stats import (analyze_from_stats, load_samples, markdown_report,
                                        results_dict, summary)
from intvit.analysis.iostats import COLUMNS, IOStats, Reservoir, samples_path
from intvit.approx import REGISTRY
from intvit.arith import qrange
from intvit.evaluation import evaluate
from intvit.quant import QT, Mode, QuantModule, calibrate
from intvit.quant.modules import QuantLinear
from intvit.quant.nonlinear import KernelModule

BATCHES, BATCH = 3, 4
SAMPLE_SIZE = 512


def synthetic(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(BATCH, 3, 32, 32, generator=g),
             torch.randint(0, 10, (BATCH,), generator=g)) for _ in range(n)]


def calibrated_model():
    model = randomize(small_model())
    calibrate(model, synthetic(3, seed=1), 3, progress=False)
    return model.eval()


class Capture:
    """Independent record of every QuantModule's output shape and kernel inputs."""

    def __init__(self, model):
        self.shapes, self.inputs = {}, {}
        self.handles = []
        for name, m in model.named_modules():
            if isinstance(m, QuantModule):
                self.handles.append(m.register_forward_hook(self.hook(name, m)))

    def hook(self, name, module):
        def record(_, args, output):
            self.shapes[name] = tuple(output.value.shape)
            if isinstance(module, KernelModule):
                q = args[0].value
                rows = q.reshape(-1, 1) if module.op == "gelu" else q.reshape(-1, q.shape[-1])
                self.inputs.setdefault(name, []).append(rows)
        return record

    def close(self):
        for h in self.handles:
            h.remove()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    model = calibrated_model()
    capture = Capture(model)
    with IOStats(model, sample_size=SAMPLE_SIZE, seed=3) as stats:
        evaluate(model, synthetic(BATCHES, seed=2), progress=False)
    capture.close()
    path = tmp_path_factory.mktemp("iostats") / "io.csv"
    table, samples = stats.save(path)
    with table.open() as f:
        rows = list(csv.DictReader(f))
    return dict(model=model, stats=stats, rows=rows, csv=table, samples=samples,
                capture=capture)


def quant_modules(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantModule)]


def test_csv_has_one_row_per_quant_module_with_calls_counted(recorded):
    rows, model = recorded["rows"], recorded["model"]
    assert list(rows[0]) == list(COLUMNS)
    modules = quant_modules(model)
    assert [r["layer"] for r in rows] == [n for n, _ in modules]
    for row, (_, module) in zip(rows, modules):
        assert row["type"] == type(module).__name__
        assert row["mode"] == "int"
        assert int(row["calls"]) == BATCHES
        if isinstance(module, KernelModule):
            assert row["op"] == module.op and row["approx"] == module.approx.name
            assert 0 < int(row["samples"]) <= SAMPLE_SIZE
        else:
            assert row["op"] == "" and int(row["samples"]) == 0


def test_integer_ranges_fit_declared_widths_and_scales_are_positive(recorded):
    checked = 0
    for row in recorded["rows"]:
        for slot in ("in", "in2", "out"):
            if not row[f"{slot}_dtype"]:
                assert slot == "in2"
                continue
            if row[f"{slot}_dtype"] != "int64":  # the float image entering input_act
                assert row["layer"] == "input_act" and slot == "in"
                assert row[f"{slot}_scale_min"] == ""
                continue
            lo, hi = int(row[f"{slot}_min"]), int(row[f"{slot}_max"])
            assert lo <= hi
            s_lo, s_hi = float(row[f"{slot}_scale_min"]), float(row[f"{slot}_scale_max"])
            assert 0 < s_lo <= s_hi and math.isfinite(s_hi)
            if row[f"{slot}_bits"]:
                bits, signed = int(row[f"{slot}_bits"]), bool(int(row[f"{slot}_signed"]))
                q_lo, q_hi = qrange(bits, signed)
                assert q_lo <= lo and hi <= q_hi, (row["layer"], slot)
                assert int(row[f"{slot}_bits_used"]) <= bits
                checked += 1
    assert checked > 40
    by_layer = {r["layer"]: r for r in recorded["rows"]}
    softmax = by_layer["blocks.0.attn.softmax"]
    assert (softmax["out_bits"], softmax["out_signed"]) == ("8", "0")
    assert int(softmax["out_min"]) >= 0


def test_shapes_numel_and_per_channel_scales(recorded):
    rows, capture = recorded["rows"], recorded["capture"]
    for row in rows:
        shape = capture.shapes[row["layer"]]
        assert row["out_shape"] == "x".join(map(str, shape))
        assert int(row["out_numel"]) == BATCHES * math.prod(shape)
    by_layer = {r["layer"]: r for r in rows}
    assert by_layer["blocks.0.mlp.act"]["in_shape"] == f"{BATCH}x17x128"
    assert by_layer["blocks.0.attn.softmax"]["in_shape"] == f"{BATCH}x2x17x17"
    assert by_layer["blocks.0.attn.scores"]["in2_shape"] == f"{BATCH}x2x16x17"
    assert by_layer["blocks.0.add1"]["in2_shape"] == f"{BATCH}x17x32"  # the residual
    for name, module in quant_modules(recorded["model"]):
        if isinstance(module, QuantLinear):
            assert int(by_layer[name]["out_scale_numel"]) == module.out_features
            assert int(by_layer[name]["in_scale_numel"]) == 1


def test_varying_batch_dimension_is_a_star_and_calls_accumulate():
    model = calibrated_model()
    with IOStats(model, sample_size=0) as stats:
        model(torch.randn(4, 3, 32, 32))
    with stats:  # statistics accumulate over blocks
        model(torch.randn(2, 3, 32, 32))
    row = {r["layer"]: r for r in stats.rows()}["blocks.1.mlp.fc2"]
    assert row["calls"] == 2 and row["out_shape"] == "*x17x32"
    assert row["out_numel"] == 6 * 17 * 32
    model(torch.randn(1, 3, 32, 32))  # detached: nothing more recorded
    assert {r["layer"]: r for r in stats.rows()}["blocks.1.mlp.fc2"]["calls"] == 2
    assert all(r["samples"] == 0 for r in stats.rows())


def test_error_inside_a_hook_propagates_and_hooks_are_removed(monkeypatch):
    model = calibrated_model()
    stats = IOStats(model)

    def boom(*args, **kwargs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(stats, "record", boom)
    with pytest.raises(RuntimeError, match="injected failure"):
        with stats:
            evaluate(model, synthetic(1, seed=5), progress=False)
    monkeypatch.undo()
    model(torch.randn(1, 3, 32, 32))  # no hook left behind
    assert all(r["calls"] == 0 for r in stats.rows())


def test_changed_input_scale_is_an_error_not_mixed_samples():
    model = calibrated_model()
    gelu = model.blocks[0].mlp.act
    stats = IOStats(model, sample_size=64)
    layer = stats.layers["blocks.0.mlp.act"]
    q = torch.randint(-100, 100, (2, 5))
    with stats:
        gelu(QT(q, torch.tensor(0.05), 8))
        with pytest.raises(ValueError, match="input scale of blocks.0.mlp.act changed"):
            gelu(QT(q, torch.tensor(0.06), 8))
    assert layer.reservoir.seen == 10


def test_samples_round_trip_and_are_real_inputs(recorded):
    samples = load_samples(recorded["samples"])
    assert recorded["samples"] == samples_path(recorded["csv"])
    assert load_samples(recorded["csv"]).keys() == samples.keys()  # CSV path works too
    model, capture = recorded["model"], recorded["capture"]
    kernels = {n: m for n, m in quant_modules(model) if isinstance(m, KernelModule)}
    assert list(samples) == list(kernels)
    by_layer = {r["layer"]: r for r in recorded["rows"]}
    for name, sample in samples.items():
        module, meta, values = kernels[name], sample.meta, sample.values
        real = torch.cat(capture.inputs[name])
        length = real.shape[1]
        assert values.dtype == torch.int64
        assert meta["op"] == module.op and meta["in_bits"] == module.in_bits
        assert meta["in_scale"] == float(by_layer[name]["in_scale_min"])
        assert meta["seen"] == real.shape[0] and meta["seed"] >= 3
        kept = min(real.shape[0], max(1, SAMPLE_SIZE // length))
        assert meta["kept"] == kept == int(by_layer[name]["samples"])
        if module.op == "gelu":
            assert values.shape == (kept,) and meta["row_length"] is None
        else:
            assert values.shape == (kept, length) == (kept, meta["row_length"])
        lo, hi = qrange(module.in_bits)
        assert lo <= int(values.min()) and int(values.max()) <= hi
        # every kept row (value) is one the layer really received
        rows = values.reshape(kept, -1)
        matches = (rows[:, None, :] == real[None]).all(-1)
        assert bool(matches.any(1).all())
    # the same seed keeps the same sample
    again = IOStats(model, sample_size=SAMPLE_SIZE, seed=3)
    with again:
        evaluate(model, synthetic(BATCHES, seed=2), progress=False)
    for name, stats in again.layers.items():
        if name in samples:
            assert torch.equal(stats.reservoir.sample().reshape(samples[name].values.shape),
                               samples[name].values)


def test_reservoir_is_uniform_and_handles_shared_slots():
    n, capacity, trials = 100, 10, 400
    hits = torch.zeros(n)
    for seed in range(trials):
        r = Reservoir(capacity, seed)
        for chunk in torch.arange(n).split(7):
            r.add(chunk[:, None])
        kept = r.sample().flatten()
        assert r.seen == n and kept.numel() == capacity and kept.unique().numel() == capacity
        hits[kept] += 1
    freq = hits / trials
    assert abs(float(freq[:50].mean()) - 0.1) < 0.01
    assert abs(float(freq[50:].mean()) - 0.1) < 0.01
    one = Reservoir(1, 0)
    one.add(torch.arange(1000)[:, None])  # many items draw slot 0 in one batch
    assert one.kept == 1 and 0 <= int(one.sample()) < 1000
    short = Reservoir(50, 0)
    short.add(torch.arange(20).reshape(10, 2))
    assert torch.equal(short.sample(), torch.arange(20).reshape(10, 2))


def test_analyze_from_stats_every_family_on_real_inputs(recorded):
    results = analyze_from_stats(recorded["csv"], out_bits=8)
    samples = load_samples(recorded["samples"])
    assert [a.domain.layer for a in results] == list(samples)
    for analysis in results:
        meta = samples[analysis.domain.layer].meta
        assert analysis.domain.input_scale() == meta["in_scale"]
        assert analysis.domain.bits == meta["in_bits"]
        if analysis.op == "layernorm":
            assert analysis.domain.dim == 32
        if analysis.op == "softmax":
            assert analysis.inputs.shape[-1] == 17 == analysis.domain.length
        assert list(analysis.variants) == list(REGISTRY[analysis.op])
        for name, r in analysis.variants.items():
            assert r.error is None, (analysis.domain.layer, name, r.error)
            assert all(math.isfinite(v) for v in (r.max_abs_error, r.mean_abs_error,
                                                  r.rms_error))
        bound = analysis.lsb * (1.0 if analysis.op == "softmax" else 0.5)
        assert analysis.variants["float"].max_abs_error <= bound + 1e-12
    assert {a.op for a in results} == {"gelu", "softmax", "layernorm"}
    data = json.loads(json.dumps(results_dict(results, recorded["csv"]), allow_nan=False))
    assert list(data["summary"]) == ["gelu", "softmax", "layernorm"]
    assert data["summary"]["gelu"]["float"]["max_abs_error_lsb"] <= 0.5 + 1e-9
    assert data["layers"][0]["domain"]["layer"] == data["layers"][0]["layer"]
    report = markdown_report(results)
    assert "**softmax** over 2 recorded layer(s)" in report and "| ivit |" in report


def test_variant_that_cannot_run_is_an_error_entry(recorded):
    results = analyze_from_stats(recorded["samples"], {"gelu": ["float", "ivit_n_30"]},
                                 ops=["gelu"])
    assert {a.op for a in results} == {"gelu"} and len(results) == 2
    for analysis in results:
        assert "overflows 32 bits" in analysis.variants["ivit_n_30"].error
        assert analysis.variants["float"].error is None
    entry = summary(results)["gelu"]["ivit_n_30"]
    assert entry["layers"] == 0 and len(entry["failed"]) == 2
    assert "n/a" in markdown_report(results, per_layer=False)
    with pytest.raises(ValueError, match="no layer records"):
        analyze_from_stats(recorded["samples"], ops=["exp"])


def test_default_variants_add_the_one_the_layer_ran(recorded, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(recorded["samples"]), framework="pt") as f:
        metadata = f.metadata()
    layers = json.loads(metadata["layers"])
    for meta in layers.values():
        if meta["op"] == "gelu":
            meta["approx"] = "ivit_n_20"
    path = tmp_path / "edited.samples.safetensors"
    save_file(load_file(str(recorded["samples"])), str(path),
              dict(metadata, layers=json.dumps(layers)))
    for analysis in analyze_from_stats(path, ops=["gelu", "softmax"]):
        extra = ["ivit_n_20"] if analysis.op == "gelu" else []
        assert list(analysis.variants) == list(REGISTRY[analysis.op]) + extra


def test_no_samples_and_parquet_need(recorded, tmp_path):
    model = recorded["model"]
    with IOStats(model, sample_size=0) as stats:
        model(torch.randn(1, 3, 32, 32))
    table, samples = stats.save(tmp_path / "plain.csv")
    assert table.exists() and samples is None
    with pytest.raises(FileNotFoundError, match="no input samples"):
        load_samples(table)
    try:
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pandas and pyarrow"):
            stats.to_parquet(tmp_path / "t.parquet")
    else:
        assert stats.to_parquet(tmp_path / "t.parquet").exists()


def test_fake_mode_records_integers_of_the_fake_quantized_values():
    model = calibrated_model().train()
    with IOStats(model, sample_size=64) as stats, torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    row = {r["layer"]: r for r in stats.rows()}["blocks.0.mlp.act"]
    assert row["mode"] == "fake" and row["in_dtype"] == "float32"
    assert isinstance(row["in_min"], int) and -128 <= row["in_min"] <= row["in_max"] <= 127
    assert row["samples"] == 64


def _float_rows(model):
    model.set_mode(Mode.FLOAT)
    with IOStats(model, sample_size=0) as stats, torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    return {r["layer"]: r for r in stats.rows()}


def test_float_mode_declares_output_widths_and_no_input_format_it_was_not_given():
    """A float model's modules declare their own output widths as in INT mode; their
    input widths come from the values they are given, and float values have no format:
    empty (bits and signedness both) until a FAKE/INT call, then that call's."""
    model = small_model()
    rows = _float_rows(model)
    for name in ("blocks.0.attn.qkv", "blocks.0.attn.scores", "blocks.0.mlp.act",
                 "blocks.0.norm1"):
        row = rows[name]
        assert row["mode"] == "float" and row["in_dtype"] == "float32"
        assert row["in_bits"] is row["in_signed"] is row["in2_bits"] is row["in2_signed"] is None
        assert row["out_bits"] is not None and row["out_signed"] is not None
    assert (rows["blocks.0.mlp.act"]["out_bits"], rows["blocks.0.attn.qkv"]["out_bits"]) == (8, 32)

    model = calibrated_model()
    with IOStats(model, sample_size=0) as stats:
        model(torch.randn(2, 3, 32, 32))
    integer = {r["layer"]: r for r in stats.rows()}
    rows = _float_rows(model)
    for name, row in rows.items():
        assert row["mode"] == "float"
        for field in ("in_bits", "in_signed", "in2_bits", "in2_signed", "out_bits",
                      "out_signed"):
            assert row[field] == integer[name][field], (name, field)
    assert rows["blocks.0.attn.scores"]["in2_bits"] == 8
