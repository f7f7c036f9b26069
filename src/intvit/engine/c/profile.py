"""The ``c`` engine's time per program node: the library built with ``-DINTVIT_PROFILE``
and ``kernels/intvit_profile.c``, whose hook records a monotonic timestamp each time a
node is done (the C network runs one statement group per program node, in program
order, so C node ``i`` is program node ``i``).

``python -m intvit.engine.c.profile SPEC`` profiles a program by op class in a fresh
process (:func:`worker`), as ``intvit bench --profile`` runs it."""

from __future__ import annotations

import ctypes
import importlib.resources
import json
import sys

import numpy as np
import torch

from ..profile import profile_c, read_profile_spec
from ..program import IntProgram, ProgramError
from ..timing import threads as torch_threads
from .build import CEngine, compiler, engine_flags
from .library import CLibrary

PROFILE_SOURCE = "intvit_profile.c"


def profile_source() -> str:
    return importlib.resources.files(__package__).joinpath(
        f"kernels/{PROFILE_SOURCE}").read_text()


class ProfiledCEngine(CEngine):
    """The ``c`` engine's profile build (by default the engine's own flags plus
    ``-DINTVIT_PROFILE``) of ``library`` (default: the program's): the same logits, and
    :meth:`node_seconds`."""

    def __init__(self, program: IntProgram, threads: int | None = None,
                 flags: tuple[str, ...] | None = None, library: CLibrary | None = None,
                 cc: str | None = None) -> None:
        cc = cc or compiler()
        flags = (*(engine_flags(cc) if flags is None else flags), "-DINTVIT_PROFILE")
        super().__init__(program, threads, flags, library, cc,
                         extra_sources={PROFILE_SOURCE: profile_source()})
        self.lib.intvit_profile_run.restype = ctypes.c_int32
        self.lib.intvit_profile_run.argtypes = [ctypes.c_void_p] * 4
        self.nodes = len(program.nodes)

    def node_seconds(self, images: torch.Tensor, repeats: int = 3
                     ) -> tuple[np.ndarray, torch.Tensor]:
        """Seconds per program node of running ``images`` one after another on
        ``threads`` OpenMP threads, each node's median over ``repeats`` runs after one
        warm-up run (a median, not a mean: on a shared machine one descheduled thread
        puts milliseconds on whichever node it was in), and their logits."""
        if repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {repeats}")
        x = images.to(torch.float32).numpy()
        logits = np.zeros((x.shape[0], self.classes), dtype=np.int32)
        ticks = np.zeros(self.nodes + 1, dtype=np.int64)
        runs = np.zeros((repeats, self.nodes), dtype=np.int64)
        scratch = self.scratch(0)
        with torch_threads():  # the library sets OpenMP threads, which PyTorch shares
            self.lib.intvit_model_set_threads(self.threads)
            for run in range(repeats + 1):
                for b in range(x.shape[0]):
                    image = np.ascontiguousarray(x[b])
                    if self.lib.intvit_profile_run(image.ctypes.data, logits[b].ctypes.data,
                                                   scratch, ticks.ctypes.data) != 0:
                        raise ProgramError("the profiled C model failed")
                    if run:
                        runs[run - 1] += np.diff(ticks)
        return np.median(runs, axis=0) / 1e9, torch.from_numpy(logits.astype(np.int64))


def worker(spec: dict) -> dict:
    """Profile the ``c`` engine by op class (:func:`intvit.engine.profile.profile_c`) on
    the program and images of ``spec`` (:func:`intvit.engine.profile.write_profile_spec`)
    with ``spec["threads"]`` OpenMP threads: ``{"profiles": {batch: {class: ms}}}``."""
    torch.set_num_threads(1)  # PyTorch only loads files here; its threads would spin
    program, images = read_profile_spec(spec)
    return {"profiles": {b: profile_c(program, x, spec["threads"]) for b, x in images.items()}}


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))))
