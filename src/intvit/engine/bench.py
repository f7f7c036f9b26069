"""``intvit bench``: batch-1 and batch-8 latency of the integer engines against the
float baselines, each as a speed-up over PyTorch FP32 eager measured in the same run.

Per model (random weights of a trained model's magnitude, calibrated on random images:
latency does not depend on the values), the rows are PyTorch FP32 eager, ONNX Runtime
FP32, ONNX Runtime's dynamic int8 quantization of the float model (float non-linears),
and intvit's engines on the exported integer program. Every row is timed in a fresh
process (``python -m intvit.engine.bench SPEC``), so that no engine's thread pool (OpenMP
threads spinning after PyTorch ops, ONNX Runtime's spinning workers) slows another: the
median of ``--repeats`` runs after ``--warmup`` runs, with ``--threads`` threads. The
integer engines' logits are compared with the eval-mode model's (``exact``). With
``--profile`` the ``int`` engine's time by op class is measured here, and the ``c`` and
``tvm`` engines' each in a fresh process too (:func:`profile_in_fresh_process`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
from ..progress import tqdm

from ..models.init import trained_scale_init
from ..models.registry import (build_quant_model, config_from_timm, create_timm,
                               load_float_weights, model_config)
from ..quant import Mode, QuantConfig
from ..tables import markdown_table
from .engines import ENGINES, make_engine, unavailable
from .export import export_program, probe_images
from .timing import measure, threads

MODELS = ("deit_tiny", "deit_small", "deit_base", "swin_tiny")
BASELINES = ("torch_fp32", "ort_fp32", "ort_int8_dynamic")
README_SECTION = "latency"


def readme_markers(section: str = README_SECTION) -> tuple[str, str]:
    """The marker lines between which a benchmark's ``--update-readme`` writes its table:
    one section per table and kind of host CPU in the README (the table of an AVX-512 host
    and that of an AVX2-only host do not compare)."""
    if not section or not all(c.isalnum() or c in "-_" for c in section):
        raise ValueError(f"a README section is a name of letters, digits, - and _; got "
                         f"{section!r}")
    return f"<!-- {section}:start -->", f"<!-- {section}:end -->"


def require_readme_markers(readme: Path, section: str) -> tuple[str, str]:
    """``section``'s markers, checked to be in ``readme`` before a benchmark runs (not
    after it): SystemExit, saying what to add, where they are missing."""
    markers = readme_markers(section)
    text = readme.read_text() if readme.is_file() else ""
    if not all(marker in text for marker in markers):
        raise SystemExit(f"error: {readme} has no {markers[0]} ... {markers[1]} lines for "
                         "--update-readme to write between; add them, or choose another "
                         "--readme-section")
    return markers


@dataclass
class Row:
    model: str
    batch: int
    engine: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    speedup: float = 0.0
    exact: bool | None = None
    setup_s: float = 0.0


def quantized_twin(name: str, family: str, seed: int = 0):
    """A timm float model with trained-magnitude random weights and the intvit model with
    the same weights, calibrated on random images."""
    cfg = model_config(name)
    float_model = trained_scale_init(create_timm(cfg), seed=seed + 1).eval()
    qcfg = QuantConfig(gelu=family, softmax=family,
                       layernorm=family if family != "ppoly" else "ivit")
    model = build_quant_model(config_from_timm(float_model, cfg.timm_name), qcfg)
    load_float_weights(model, float_model.state_dict())
    model.set_mode(Mode.CALIBRATE)
    with torch.no_grad():
        model(probe_images(model, 8, seed))
    return float_model, model.eval()


@dataclass(frozen=True)
class ProfileWorker:
    """An engine profiled by op class in a fresh process: ``python -m module SPEC`` (SPEC
    from :func:`intvit.engine.profile.write_profile_spec`) prints
    ``{"profiles": {batch: {class: ms}}}`` or ``{"fallback": why not}``; ``title`` names
    its table (``{threads}``: the spec's thread count)."""

    module: str
    title: str


PROFILE_WORKERS = {
    "c": ProfileWorker("intvit.engine.c.profile",
                       "c engine ({threads} OpenMP threads, images one after another)"),
    "tvm": ProfileWorker("intvit.engine.tvm.profile", "tvm engine"),
}


def bench_model(name: str, batches: list[int], engines: list[str], family: str, n_threads: int,
                warmup: int, repeats: int, workdir: Path, profile: bool = False,
                rounds: int = 1) -> tuple[list[Row], str]:
    """The model's rows, and with ``profile`` the ``int`` engine's time by op class and
    that of each engine of :data:`PROFILE_WORKERS` among ``engines`` that this machine can
    build (:func:`profile_in_fresh_process`)."""
    with threads(n_threads):
        float_model, model = quantized_twin(name, family)
    program = export_program(model)
    tables = []
    if profile:
        from .profile import profile_int, profile_markdown, write_profile_spec
        images = {b: probe_images(model, b, seed=b) for b in batches}
        with threads(n_threads):
            tables.append(profile_markdown(f"{name}, int engine", {
                b: profile_int(program, x) for b, x in images.items()}))
        spec = write_profile_spec(program, images, n_threads, workdir / name)
        tables += [profile_in_fresh_process(engine, name, spec) for engine in engines
                   if engine in PROFILE_WORKERS and unavailable(engine) is None]
    return time_engines(name, float_model, model, program, batches, engines,
                        n_threads, warmup, repeats, workdir / name, rounds), "\n\n".join(tables)


def profile_in_fresh_process(engine: str, name: str, spec: dict) -> str:
    """``engine``'s time by op class per batch size of the program and images of ``spec``
    (model ``name``), as a table: measured in a fresh process (its
    :data:`PROFILE_WORKERS` module), as every row is timed, so that this process's
    PyTorch threads and memory do not slow it; a line saying why not when the engine
    cannot profile that program (tvm: built per input shape)."""
    from .profile import profile_markdown

    entry = PROFILE_WORKERS[engine]
    label = f"{name}, {entry.title.format(threads=spec['threads'])}"
    result = run_module(entry.module, spec, f"profiling {engine}")
    if "fallback" in result:
        return f"{label}: no profile ({result['fallback']})"
    return profile_markdown(label, {int(b): profile for b, profile in result["profiles"].items()})


def time_engines(label: str, float_model: torch.nn.Module, model, program, batches: list[int],
                 engines: list[str], n_threads: int, warmup: int, repeats: int,
                 workdir: Path, rounds: int = 1) -> list[Row]:
    """Time the float baselines of ``float_model`` (a timm model of ``model.cfg``) and the
    integer engines on ``program`` (exported from ``model``), per batch size, each in its
    own process; speed-ups against PyTorch FP32 eager of the same batch. With ``rounds``
    > 1 every row is timed that many times, the rounds interleaved (all the batch's rows,
    then all of them again), and each row keeps its fastest round (:func:`fastest_round`):
    a shared host slows down by phases, and a phase that hits one row's only round skews
    every ratio against it."""
    from safetensors.torch import save_file

    from .baselines import export_float_onnx, ort_dynamic_int8

    workdir.mkdir(parents=True, exist_ok=True)
    files = {"program": str(program.save(workdir / "program.safetensors")),
             "weights": str(workdir / "float.safetensors"),
             "ort_fp32": str(workdir / "model_fp32.onnx"),
             "ort_int8_dynamic": str(workdir / "model_int8_dynamic.onnx")}
    save_file({k: v.contiguous() for k, v in float_model.state_dict().items()},
              files["weights"])
    example = probe_images(model, 1)
    export_float_onnx(float_model, example, files["ort_fp32"])
    ort_dynamic_int8(files["ort_fp32"], files["ort_int8_dynamic"])
    rows: list[Row] = []
    for batch in batches:
        images = probe_images(model, batch, seed=batch)
        with torch.no_grad():
            expected = model.forward_int(images).value
        inputs = workdir / f"inputs_{batch}.safetensors"
        save_file({"images": images.contiguous(), "expected": expected.contiguous()},
                  str(inputs))
        kinds = [*BASELINES, *engines]
        timed: dict[str, list[dict]] = {kind: [] for kind in kinds}
        for _ in range(rounds):
            for kind in kinds:
                spec = dict(files, kind=kind, inputs=str(inputs), config=model.cfg.as_dict(),
                            threads=n_threads, warmup=warmup, repeats=repeats)
                timed[kind].append(run_worker(spec))
        batch_rows = [Row(label, batch, kind, **fastest_round(timed[kind])) for kind in kinds]
        base = next(r.median_ms for r in batch_rows if r.engine == "torch_fp32")
        for row in batch_rows:
            row.speedup = base / row.median_ms
        rows += batch_rows
    return rows


def fastest_round(results: list[dict]) -> dict:
    """One row's result from its rounds (:func:`worker`'s dicts, in the order run): the
    round of the least median, exact only if every round was, and the first round's setup
    (the one that compiled and filled the caches)."""
    best = dict(min(results, key=lambda r: r["median_ms"]))
    exact = [r["exact"] for r in results]
    best["exact"] = None if exact[0] is None else all(exact)
    best["setup_s"] = results[0]["setup_s"]
    return best


def run_module(module: str, spec: dict, what: str) -> dict:
    """``python -m module SPEC`` in a fresh Python process; its last output line, JSON, is
    the result (an error quoting its stderr when it fails)."""
    done = subprocess.run([sys.executable, "-m", module, json.dumps(spec)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_worker(spec: dict) -> dict:
    """Time one row in a fresh Python process."""
    return run_module("intvit.engine.bench", spec, f"timing {spec['kind']}")


def worker(spec: dict) -> dict:
    """Set up one engine or baseline, check its logits where it is integer, time it."""
    from safetensors.torch import load_file

    from ..models.config import ModelConfig
    from .baselines import INPUT_NAME, ort_session
    from .program import IntProgram

    kind = spec["kind"]
    # PyTorch computes only in these two; elsewhere it merely checks the input, and its
    # OpenMP threads would spin against the engine's own thread pool.
    torch.set_num_threads(spec["threads"] if kind in ("torch_fp32", "int") else 1)
    data = load_file(spec["inputs"])
    images, exact = data["images"], None
    start = time.perf_counter()
    if kind == "torch_fp32":
        net = create_timm(ModelConfig(**spec["config"])).eval()
        net.load_state_dict(load_file(spec["weights"]))

        def fn():
            with torch.inference_mode():
                return net(images)
    elif kind in BASELINES:
        session, feed = ort_session(spec[kind], spec["threads"]), {INPUT_NAME: images.numpy()}

        def fn():
            return session.run(None, feed)
    else:
        engine = make_engine(kind, IntProgram.load(spec["program"]), threads=spec["threads"])
        exact = torch.equal(engine(images), data["expected"])

        def fn():
            return engine(images)
    setup = time.perf_counter() - start
    t = measure(fn, warmup=spec["warmup"], repeats=spec["repeats"])
    return dict(median_ms=t.median_ms, p10_ms=t.p10_ms, p90_ms=t.p90_ms, exact=exact,
                setup_s=setup)


@dataclass(frozen=True)
class Goal:
    """What the fastest integer-only engine of a model should reach at every batch
    measured: at most ``vs_ort_int8`` times the latency of ONNX Runtime's dynamic int8
    and, if given, at least ``vs_fp32`` times the speed of PyTorch FP32 eager."""

    vs_ort_int8: float = 1.0
    vs_fp32: float | None = None


def markdown(rows: list[Row], header: str, targets: Mapping[str, Goal] | None = None
             ) -> str:
    """The rows as a Markdown table under ``header``, then :func:`verdicts` for
    ``targets``."""
    cells = [[r.model, r.batch, r.engine, f"{r.median_ms:.2f}", f"{r.speedup:.2f}x",
              "" if r.exact is None else ("yes" if r.exact else "**NO**"), f"{r.setup_s:.1f}"]
             for r in rows]
    table = markdown_table(["model", "batch", "engine", "median ms",
                            "speed-up vs PyTorch FP32", "bit-exact", "setup s"], cells,
                           align="lrlrrlr")
    return "\n".join([header, "", table, "", *verdicts(rows, targets or {})])


def verdicts(rows: list[Row], targets: Mapping[str, Goal]) -> list[str]:
    """One line per model of ``targets`` and batch that ``rows`` measure: the fastest
    integer engine's latency against ONNX Runtime's dynamic int8 and its speed-up over
    PyTorch FP32, each against the model's :class:`Goal`."""
    lines = []
    for model, goal in targets.items():
        for batch in sorted({r.batch for r in rows if r.model == model}):
            here = [r for r in rows if r.model == model and r.batch == batch]
            mine = [r for r in here if r.engine in ENGINES]
            dynamic = [r for r in here if r.engine == "ort_int8_dynamic"]
            if not mine or not dynamic:
                continue
            best = min(mine, key=lambda r: r.median_ms)
            ratio = best.median_ms / dynamic[0].median_ms
            met = ratio <= goal.vs_ort_int8 and (goal.vs_fp32 is None
                                                 or best.speedup >= goal.vs_fp32)
            fp32 = f" (goal {goal.vs_fp32}x)" if goal.vs_fp32 is not None else ""
            lines.append(f"- {model}, batch {batch}: fastest integer engine `{best.engine}` "
                         f"{best.median_ms:.2f} ms = {ratio:.2f}x ORT dynamic int8's "
                         f"{dynamic[0].median_ms:.2f} ms (goal <= {goal.vs_ort_int8}x), "
                         f"{best.speedup:.2f}x FP32{fp32}: {'met' if met else '**missed**'}")
    return lines


def run_bench(models: Sequence[str], batches: Sequence[int], engines: Sequence[str],
              family: str = "ivit", n_threads: int = 2, warmup: int = 3, repeats: int = 10,
              profile: bool = False, rounds: int = 1) -> tuple[list[Row], list[str]]:
    """Every model's rows (see :func:`bench_model`; ``rounds`` as :func:`time_engines`),
    and with ``profile`` the ``int`` engine's (and the ``c`` and ``tvm`` engines') time by
    op class per model; ValueError for an unknown engine or fewer than one round."""
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        raise ValueError(f"unknown engines {unknown}; engines: {', '.join(ENGINES)}")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    rows: list[Row] = []
    profiles: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in tqdm(models, desc="bench"):
            model_rows, table = bench_model(name, list(batches), list(engines), family,
                                            n_threads, warmup, repeats, Path(tmp), profile,
                                            rounds)
            rows += model_rows
            profiles += [table] if table else []
    return rows, profiles


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))))
