"""Compiling a generated C library for this host, and the ``c`` engine that runs it.

The network's code (``intvit_model.c``, the kernel instances, the float ends: small) is
compiled with ``-O3 -march=native`` (and ``-fopenmp`` where the compiler has OpenMP) for
the engine, anything else on request (the tests build with sanitizers), and linked with
the constants' objects (:mod:`.weights`: assembled from a binary blob, or compiled from
C text where the toolchain cannot; cached by content, so every program with the same
weights shares them). The linked library is cached too, as
``$INTVIT_CACHE/c/<hash of sources, weights objects, flags and compiler>/`` (default
``~/.cache/intvit``; :func:`.toolchain.cached`: digest checked, written atomically).
Measured on the 2-core host, deit_small: the constants as C text took gcc 61 s at -O0
and 52 s at -O3 (parsing 100 MB of text is the cost, not the optimizer), their blob
objects 0.4 s, the network at -O3 and the link 2.7 s. A cached build hashes the
constants' bytes and checks the digests.

The engine calls ``intvit_model_run_float`` through ctypes, one image at a time: a single
image on the calling thread after ``intvit_model_set_threads(threads)`` (the OpenMP
threads split each node), a batch of several split into ``threads`` runs of consecutive
images, each on its own Python thread with its own scratch buffer and one OpenMP thread
(ctypes releases the GIL during the call; the images are independent, so no thread
waits on another inside an image).
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ...fileio import write_text
from ..engines import Engine
from ..program import IntProgram
from ..timing import threads as torch_threads
from .library import CFLAGS, SOURCES, WEIGHTS_SOURCE, CLibrary, generate
from .toolchain import (cache_root, cached, compiler, compiler_version, has_openmp, key,
                        run_compiler)
from .weights import weight_objects

ENGINE_FLAGS = ("-O3", "-march=native")
NETWORK_SOURCES = tuple(s for s in SOURCES if s != WEIGHTS_SOURCE)
_LOADED: dict[Path, ctypes.CDLL] = {}

__all__ = ["CEngine", "build", "compiler", "engine_flags", "load"]


def engine_flags(cc: str) -> tuple[str, ...]:
    """The engine's build: optimized for this host, with OpenMP threads where available."""
    return ENGINE_FLAGS + (("-fopenmp",) if has_openmp(cc) else ())


def build(library: CLibrary, flags: tuple[str, ...] | None = None, cc: str | None = None,
          shared: bool = True, extra_sources: dict[str, str] | None = None,
          weights: str = "auto") -> Path:
    """Compile (or find in the cache) the library; returns the shared object or program.
    ``weights``: how the constants are compiled (:func:`.weights.weight_objects`)."""
    cc = cc or compiler()
    flags = engine_flags(cc) if flags is None else flags
    constants = weight_objects(library, cc, weights)
    files = {**library.code, "intvit_weights.h": constants.header, **(extra_sources or {})}
    name = key(*(f"{n}\0{t}" for n, t in sorted(files.items())),
               *(p.name for p in constants.objects), cc, compiler_version(cc), *flags,
               str(shared))
    target = cache_root() / name / ("libintvit_model.so" if shared else "intvit_model_test")

    def link(out: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for n, text in files.items():
                write_text(Path(tmp) / n, text)
            sources = [*NETWORK_SOURCES, *(extra_sources or {})]
            run_compiler([cc, *CFLAGS, *flags, *(("-shared", "-fPIC") if shared else ()),
                          "-o", os.path.abspath(out), *sources,
                          *map(os.path.abspath, constants.objects)],
                         f"the C export ({cc} {' '.join(flags)})", tmp)

    return cached(target, link, executable=not shared)


def load(path: Path) -> ctypes.CDLL:
    """The compiled library, loaded once per path. Loading it sets ``OMP_WAIT_POLICY=passive``
    unless the environment says otherwise, for the processes started after it: on a machine
    whose cores other processes share, a thread that spins at a barrier takes the core from
    the thread it waits for (measured on the 2-core host: a 2-thread deit_tiny image
    40-1060 ms spinning, 19-56 ms passive). In this process the setting comes too late: the
    library's ``libgomp.so.1`` is the one PyTorch loaded with ``import torch``, which read
    its settings then, so set the variable before Python starts to choose this process's
    waits."""
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
                 cc: str | None = None, weights: str = "auto",
                 extra_sources: dict[str, str] | None = None) -> None:
        super().__init__(program)
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.threads = threads or 1
        library = library or generate(program)
        self.lib = load(build(library, flags, cc, extra_sources=extra_sources,
                              weights=weights))
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
        with torch_threads():  # the library sets OpenMP threads, which PyTorch shares
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
        return torch.from_numpy(logits.astype(np.int64))
