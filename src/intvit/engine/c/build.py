"""Compiling a generated C library for this host, and the ``c`` engine that runs it.

The library is compiled once per program and flags, cached under
``$INTVIT_CACHE/c/<sha256 of sources, flags and compiler>/`` (default
``~/.cache/intvit``): ``-O3 -march=native`` (and ``-fopenmp`` where the compiler has
OpenMP) for the engine, anything else on request (the tests build with sanitizers). The
engine calls ``intvit_model_run_float`` through ctypes, one image at a time: a single
image on the calling thread after ``intvit_model_set_threads(threads)`` (the OpenMP
threads split each node), a batch of several split into ``threads`` runs of consecutive
images, each on its own Python thread with its own scratch buffer and one OpenMP thread
(ctypes releases the GIL during the call; the images are independent, so no thread
waits on another inside an image).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ...fileio import write_text
from ..engines import Engine
from ..program import IntProgram, ProgramError
from .library import CFLAGS, SOURCES, CLibrary, generate

ENGINE_FLAGS = ("-O3", "-march=native")
_LOADED: dict[Path, ctypes.CDLL] = {}
_OPENMP: dict[str, bool] = {}


def compiler() -> str:
    """``$CC``, else ``cc``/``gcc``/``clang`` on the PATH."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    raise ProgramError("the c engine needs a C compiler: install gcc or clang, or set CC")


def has_openmp(cc: str) -> bool:
    """Whether ``cc -fopenmp`` compiles and links a program that includes ``omp.h``."""
    if cc not in _OPENMP:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "omp.c"
            src.write_text("#include <omp.h>\nint main(void) { return omp_get_max_threads() < 1; }\n")
            done = subprocess.run([cc, "-fopenmp", "-o", str(Path(tmp) / "omp"), str(src)],
                                  capture_output=True)
            _OPENMP[cc] = done.returncode == 0
    return _OPENMP[cc]


def engine_flags(cc: str) -> tuple[str, ...]:
    """The engine's build: optimized for this host, with OpenMP threads where available."""
    return ENGINE_FLAGS + (("-fopenmp",) if has_openmp(cc) else ())


def cache_root() -> Path:
    return Path(os.environ.get("INTVIT_CACHE", Path.home() / ".cache" / "intvit")) / "c"


def build(library: CLibrary, flags: tuple[str, ...] | None = None, cc: str | None = None,
          shared: bool = True, extra_sources: dict[str, str] | None = None) -> Path:
    """Compile (or find in the cache) the library; returns the shared object or program."""
    cc = cc or compiler()
    flags = engine_flags(cc) if flags is None else flags
    extra = extra_sources or {}
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    sha = hashlib.sha256()
    for name, text in sorted({**library.files, **extra}.items()):
        sha.update(f"{name}\0{text}\0".encode())
    sha.update(f"{cc}\0{version}\0{' '.join(flags)}\0{shared}".encode())
    folder = cache_root() / sha.hexdigest()[:24]
    target = folder / ("libintvit_model.so" if shared else "intvit_model_test")
    if target.is_file():
        return target
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        work = library.write(tmp)
        for name, text in extra.items():
            write_text(work / name, text)
        sources = [str(work / s) for s in (*SOURCES, *extra)]
        link = ["-shared", "-fPIC"] if shared else []
        out = work / target.name
        done = subprocess.run([cc, *CFLAGS, *flags, *link, "-o", str(out), *sources],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise ProgramError(f"compiling the C export failed ({cc} {' '.join(flags)}):\n"
                               f"{done.stderr[-4000:]}")
        try:
            work.rename(folder)
        except OSError:  # another process built it first
            pass
    return target


def load(path: Path) -> ctypes.CDLL:
    """The compiled library, loaded once per path. Its OpenMP threads wait passively
    (``OMP_WAIT_POLICY=passive`` unless the environment says otherwise, read when the
    OpenMP runtime loads): on a machine whose cores other processes share, a thread that
    spins at a barrier takes the core from the thread it waits for (measured on the 2-core
    host: a 2-thread deit_tiny image 40-1060 ms spinning, 19-56 ms passive)."""
    if path not in _LOADED:
        os.environ.setdefault("OMP_WAIT_POLICY", "passive")
        lib = ctypes.CDLL(str(path))
        lib.intvit_model_run_float.restype = ctypes.c_int32
        lib.intvit_model_run_float.argtypes = [ctypes.c_void_p] * 3
        lib.intvit_model_set_threads.restype = None
        lib.intvit_model_set_threads.argtypes = [ctypes.c_int32]
        _LOADED[path] = lib
    return _LOADED[path]


class CEngine(Engine):
    """``c``: the exported C library, compiled for this host, called through ctypes, with
    ``threads`` threads (1 when not given): OpenMP threads inside a single image, or one
    thread per run of images in a batch. ``extra_sources`` are compiled into the library
    beside it (the profile hook)."""

    name = "c"

    def __init__(self, program: IntProgram, threads: int | None = None,
                 flags: tuple[str, ...] | None = None, library: CLibrary | None = None,
                 cc: str | None = None, extra_sources: dict[str, str] | None = None) -> None:
        super().__init__(program)
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.threads = threads or 1
        library = library or generate(program)
        self.lib = load(build(library, flags, cc, extra_sources=extra_sources))
        self.classes = library.plan.values[library.plan.logits].numel
        self.scratch_bytes = library.scratch_bytes
        self.scratches: list[tuple[np.ndarray, int]] = []

    def scratch(self, worker: int) -> int:
        """The 64-byte aligned address of worker ``worker``'s scratch buffer."""
        while len(self.scratches) <= worker:
            buf = np.zeros(self.scratch_bytes + 64, dtype=np.uint8)
            self.scratches.append((buf, buf.ctypes.data + (-buf.ctypes.data) % 64))
        return self.scratches[worker][1]

    def _run_images(self, x: np.ndarray, logits: np.ndarray, worker: int, threads: int) -> None:
        self.lib.intvit_model_set_threads(threads)
        scratch = self.scratch(worker)
        for b in range(x.shape[0]):
            image = np.ascontiguousarray(x[b])
            self.lib.intvit_model_run_float(image.ctypes.data, logits[b].ctypes.data, scratch)

    def run(self, images: torch.Tensor) -> torch.Tensor:
        x = images.numpy()
        logits = np.zeros((x.shape[0], self.classes), dtype=np.int32)
        workers = min(self.threads, x.shape[0])
        # the library sets the calling thread's OpenMP threads, which PyTorch shares: restored
        torch_threads = torch.get_num_threads()
        try:
            if workers <= 1:
                self._run_images(x, logits, 0, self.threads)
            else:
                bounds = np.linspace(0, x.shape[0], workers + 1).astype(int)
                for w in range(workers):
                    self.scratch(w)  # allocated before the threads start
                with ThreadPoolExecutor(workers) as pool:
                    runs = [pool.submit(self._run_images, x[lo:hi], logits[lo:hi], w, 1)
                            for w, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))]
                    for run in runs:
                        run.result()
        finally:
            torch.set_num_threads(torch_threads)
        return torch.from_numpy(logits.astype(np.int64))
