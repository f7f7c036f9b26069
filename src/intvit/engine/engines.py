"""The engines that run an integer program, by name: ``int`` (PyTorch integer ops),
``onnx`` (ONNX Runtime on :func:`~.onnx_export.to_onnx`'s graph), ``tvm`` (that
graph compiled by Apache TVM) and ``c`` (the C export, :mod:`.c`, compiled for the host).
Each maps float images to int64 logits and checks its input the same way;
``exact_logits`` gives the float64 logits (integer times scale). :func:`fastest_engine`
names the fastest one this machine can build."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..device import CPU_BATCH_CHUNK, cpu_chunks
from .program import IntProgram, ProgramError
from .runtime import IntRuntime, check_images


class Engine:
    """Base: ``engine(images) -> int64 logits (B, classes)``. A batch larger than
    ``batch_chunk`` runs in chunks of that many images (:func:`~intvit.device.cpu_chunks`),
    so that no engine gets slower per image as the batch grows: a chunk's activations
    stay in cache."""

    name = ""
    batch_chunk = CPU_BATCH_CHUNK

    def __init__(self, program: IntProgram) -> None:
        self.program = program
        self.scale = program.tensors["output.scale"].to(torch.float64)

    def run(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        check_images(self.program, images)
        images = images.to(torch.float32)
        return torch.cat([self.run(chunk.contiguous())
                          for chunk in cpu_chunks(images, self.batch_chunk)])

    def exact_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self(images).to(torch.float64) * self.scale


class IntEngine(Engine):
    name = "int"

    def __init__(self, program: IntProgram, debug: bool = False) -> None:
        super().__init__(program)
        self.runtime = IntRuntime(program, debug=debug)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        check_images(self.program, images)  # before the split: an empty batch is an error
        return torch.cat([self.runtime(chunk) for chunk in cpu_chunks(images, self.batch_chunk)])


class OnnxEngine(Engine):
    name = "onnx"

    def __init__(self, program: IntProgram, threads: int | None = 2) -> None:
        import onnxruntime as ort

        from .onnx_export import to_onnx
        super().__init__(program)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(to_onnx(program).SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])

    def run(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.session.run(["logits"], {self.program.input: images.numpy()})[0]
        return torch.from_numpy(np.asarray(logits))


class TvmEngine(Engine):
    name = "tvm"

    def __init__(self, program: IntProgram, threads: int | None = 2) -> None:
        from .onnx_export import to_onnx
        from .tvm import TvmModule
        super().__init__(program)
        self.module = TvmModule(to_onnx(program), threads=threads or 2)

    def run(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.module(images.numpy())[0]))


def c_engine(program: IntProgram, threads: int | None = None) -> Engine:
    """The exported C library compiled for this host (:mod:`.c.build`), ``threads``
    OpenMP threads."""
    from .c.build import CEngine
    return CEngine(program, threads)


def _needs_module(module: str, kind: str) -> Callable[[], str | None]:
    """Why an engine that imports ``module`` cannot be built (None: it is installed)."""
    def missing() -> str | None:
        if importlib.util.find_spec(module) is None:
            return f"the {kind} engine needs {module}, which is not installed"
        return None
    return missing


def _needs_compiler() -> str | None:
    """Why the C engine cannot be built: no C compiler (None: there is one)."""
    from .c.build import compiler
    try:
        compiler()
    except ProgramError as err:
        return str(err)
    return None


@dataclass(frozen=True)
class EngineKind:
    """A registered engine: ``build(program, **options)`` makes it; ``threaded``: it
    sizes its own thread pool (``threads=``; the others run on PyTorch's);
    ``checks_overflow``: it takes ``debug=`` (overflow checks of every integer op);
    ``missing()`` says why this machine cannot build it (None: it can)."""

    build: Callable[..., Engine]
    threaded: bool = True
    checks_overflow: bool = False
    missing: Callable[[], str | None] = lambda: None


ENGINES: dict[str, EngineKind] = {
    "int": EngineKind(IntEngine, threaded=False, checks_overflow=True),
    "onnx": EngineKind(OnnxEngine, missing=_needs_module("onnxruntime", "onnx")),
    "tvm": EngineKind(TvmEngine, missing=_needs_module("tvm", "tvm")),
    "c": EngineKind(c_engine, missing=_needs_compiler)}


def engine_preference() -> tuple[str, ...]:
    """The engines by evaluation speed, fastest first (``benchmarks/eval_speed.py`` and
    ``intvit bench`` measure them; every one gives the same integers). The C library
    leads on every CPU measured at the batch of 8 an engine runs at a time: with AMX or
    AVX-512 VNNI its 8-bit product kernels, with AVX2 only its int16 multiply-add kernels
    (where TVM and PyTorch have only generic int8 products). TVM is next; the int engine,
    PyTorch's integer ops, is last."""
    return ("c", "tvm", "int")


def unavailable(kind: str) -> str | None:
    """Why engine ``kind`` cannot be built on this machine (None: it can)."""
    if kind not in ENGINES:
        raise ValueError(f"unknown engine {kind!r}; engines: {', '.join(ENGINES)}")
    return ENGINES[kind].missing()


def fastest_engine() -> str:
    """The first engine of :func:`engine_preference` that this machine can build."""
    return next(kind for kind in engine_preference() if unavailable(kind) is None)


def make_engine(kind: str, program: IntProgram, threads: int | None = 2,
                debug: bool = False) -> Engine:
    """An engine by name. ``threads`` sizes the pool of an engine that has its own (ONNX
    Runtime's, TVM's, the C library's OpenMP threads); ``debug`` (overflow checks) exists
    for an engine that ``checks_overflow`` (the int engine)."""
    if kind not in ENGINES:
        raise ValueError(f"unknown engine {kind!r}; engines: {', '.join(ENGINES)}")
    entry = ENGINES[kind]
    if debug and not entry.checks_overflow:
        checking = [k for k, e in ENGINES.items() if e.checks_overflow]
        raise ValueError(f"overflow checks run on the {' or '.join(checking)} engine (its "
                         f"arithmetic is the one the others compile); use --engine "
                         f"{checking[0]} --debug-overflow")
    options: dict[str, object] = {}
    if entry.threaded:
        options["threads"] = threads
    if entry.checks_overflow:
        options["debug"] = debug
    return entry.build(program, **options)
