"""The process-wide state a TVM module touches while it builds and runs: the
``TVM_NUM_THREADS`` variable its thread pool reads, and the native stderr its C++ code
logs to.

A process that runs TVM and PyTorch should run them one after the other, never from
concurrent threads: both thread pools spin while idle and slow each other down (see the
TVM section of ``benchmarks/README.md``)."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

NOISE = ("Fast mode segfaults when there are out-of-bounds indices",)


@contextmanager
def pool_threads(threads: int) -> Iterator[None]:
    """``TVM_NUM_THREADS=threads`` for the duration of a call only: TVM sizes its
    process-wide pool from it at the first parallel launch, and the process environment
    (which other libraries and child processes read) is left as it was."""
    old = os.environ.get("TVM_NUM_THREADS")
    os.environ["TVM_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        if old is None:
            del os.environ["TVM_NUM_THREADS"]
        else:
            os.environ["TVM_NUM_THREADS"] = old


@contextmanager
def native_stderr_without(noise: Sequence[str] = NOISE) -> Iterator[None]:
    """Run a block with file descriptor 2 captured, then write back to ``sys.stderr``
    every line that holds none of ``noise``. TVM's C++ code logs straight to the
    descriptor: one "Fast mode segfaults when there are out-of-bounds indices" warning per
    table lookup of a build (``take`` in its fast mode; the exporter's indices are clipped
    into range), about 30 lines per model."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            sys.stderr.write("".join(line for line in text.splitlines(keepends=True)
                                     if not any(n in line for n in noise)))

