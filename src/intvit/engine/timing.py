"""Wall-clock latency measurement for the benchmark: warm-up, repeated runs, percentiles."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Timing:
    """Latency statistics of one callable, in milliseconds over `repeats` timed runs."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int


def measure(fn: Callable[[], object], warmup: int = 3, repeats: int = 10,
            min_time: float = 0.0) -> Timing:
    """Time `fn()` with `time.perf_counter`: `warmup` untimed calls, then at least `repeats`
    timed calls, continuing until the timed calls add up to `min_time` seconds."""
    if repeats < 1:
        raise ValueError(f"measure: repeats must be >= 1, got {repeats}")
    if warmup < 0 or min_time < 0:
        raise ValueError(f"measure: warmup and min_time must be >= 0, got {warmup}, {min_time}")
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    while len(samples) < repeats or sum(samples) < min_time:
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    p10, median, p90 = np.percentile(np.array(samples) * 1e3, [10, 50, 90])
    return Timing(float(median), float(p10), float(p90), len(samples))


@contextmanager
def threads(n: int | None = None) -> Iterator[None]:
    """Run the body with `torch.set_num_threads(n)`, restoring the previous count afterwards;
    ``n=None`` leaves the count as it is and only restores it (around a library that sets
    the calling thread's OpenMP threads, which PyTorch shares)."""
    if n is not None and n < 1:
        raise ValueError(f"threads: n must be >= 1, got {n}")
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
