"""Collecting the I/O statistics: :class:`IOStats` hooks every QuantModule of a model and
folds each forward call into the layer's :class:`~.summary.LayerStats`."""

from __future__ import annotations

import weakref
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...approx import OPS
from ...arith import qrange
from ...quant.modules import QuantModule
from ...quant.nonlinear import KernelModule
from ...quant.qtensor import QT
from .files import samples_path, write_csv, write_parquet, write_samples
from .reservoir import Reservoir
from .summary import COLUMNS, LayerStats, declared_widths

SAMPLE_SIZE = 65536


class IOStats(AbstractContextManager):
    """Record integer input/output statistics of every QuantModule of ``model``, and a
    sample of the non-linear modules' integer inputs (``sample_size`` values per layer,
    0 for none; reservoirs seeded with ``seed`` plus the layer's index).

    Use as a context manager (hooks attached inside the block) or call
    :meth:`attach` / :meth:`detach`. Statistics accumulate over every forward pass
    while attached, also over several ``with`` blocks; :meth:`reset` clears them."""

    def __init__(self, model: nn.Module, sample_size: int = SAMPLE_SIZE, seed: int = 0) -> None:
        if sample_size < 0:
            raise ValueError(f"sample_size must be >= 0, got {sample_size}")
        self.model, self.sample_size, self.seed = model, sample_size, seed
        self._handles: list = []
        self.layers: dict[str, LayerStats] = {}
        self.reset()
        if not self.layers:
            raise ValueError("IOStats: the model has no QuantModule to record")

    def _extrema(self, t: torch.Tensor) -> tuple[Any, Any]:
        """Min and max of ``t`` (Python ints for integer tensors). A module's input is
        often the very tensor the previous module returned: remembered per tensor object
        (by weak reference and version counter, so a freed or modified tensor is never
        mistaken for it)."""
        entry = self._seen_extrema.get(id(t))
        if entry is not None and entry[0]() is t and entry[1] == t._version:
            return entry[2], entry[3]
        lo_t, hi_t = torch.aminmax(t.detach())
        cast = float if t.dtype.is_floating_point else int
        lo, hi = cast(lo_t), cast(hi_t)
        if len(self._seen_extrema) >= 64:
            self._seen_extrema = {k: v for k, v in self._seen_extrema.items()
                                  if v[0]() is not None}
        self._seen_extrema[id(t)] = (weakref.ref(t), t._version, lo, hi)
        return lo, hi

    def reset(self) -> None:
        self._seen_extrema: dict[int, tuple] = {}
        self.layers = {name: LayerStats(name, module)
                       for name, module in self.model.named_modules()
                       if isinstance(module, QuantModule)}

    def attach(self) -> "IOStats":
        if self._handles:
            raise RuntimeError("IOStats is already attached")
        for stats in self.layers.values():
            self._handles.append(stats.module.register_forward_hook(
                self._hook(stats), with_kwargs=True))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "IOStats":
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _hook(self, stats: LayerStats):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            self.record(stats, args, kwargs, output)
        return hook

    def record(self, stats: LayerStats, args: tuple, kwargs: dict, output: Any) -> None:
        """Fold one forward call of ``stats.module`` in (called by its hook)."""
        inputs = [a for a in (*args, *kwargs.values()) if isinstance(a, QT)]
        if not inputs or not isinstance(output, QT):
            raise TypeError(f"IOStats: {stats.name} ({type(stats.module).__name__}) did not "
                            f"map QT to QT (inputs {[type(a).__name__ for a in args]}, "
                            f"output {type(output).__name__})")
        if len(inputs) > 2:
            raise TypeError(f"IOStats: {stats.name} took {len(inputs)} QT inputs; "
                            f"the statistics have slots for two")
        mode = stats.module.mode.value
        if mode not in stats.modes:
            stats.modes.append(mode)
        stats.calls += 1
        q_in, _, _ = stats.slots["in"].update(inputs[0], self._extrema)
        if len(inputs) == 2:
            stats.slots["in2"].update(inputs[1], self._extrema)
        q_out, out_lo, out_hi = stats.slots["out"].update(output, self._extrema)
        declared = declared_widths(stats.module)["out"]
        if declared is not None and q_out is not None and out_lo is not None:
            lo, hi = qrange(*declared)
            if out_lo <= lo:  # count only where the range reaches a limit
                stats.at_limit += int((q_out <= lo).sum())
            if out_hi >= hi:
                stats.at_limit += int((q_out >= hi).sum())
        if isinstance(stats.module, KernelModule) and self.sample_size and q_in is not None:
            self._sample(stats, q_in, inputs[0].scale, output.scale)

    def _sample(self, stats: LayerStats, q: torch.Tensor, in_scale: torch.Tensor,
                out_scale: torch.Tensor | None) -> None:
        module = stats.module
        scale = float(torch.as_tensor(in_scale).double())
        if stats.in_scale is not None and scale != stats.in_scale:
            raise ValueError(f"IOStats: the input scale of {stats.name} changed from "
                             f"{stats.in_scale!r} to {scale!r}; samples need one scale "
                             f"(record the integer model after calibration)")
        stats.in_scale = scale
        if out_scale is not None:
            stats.out_scale = float(torch.as_tensor(out_scale).double())
        length = 1 if not OPS[module.op].rowwise else q.shape[-1]
        if stats.row_length is not None and length != stats.row_length:
            raise ValueError(f"IOStats: {stats.name} got rows of {length} after rows of "
                             f"{stats.row_length}")
        stats.row_length = length
        if stats.reservoir is None:
            index = list(self.layers).index(stats.name)
            stats.reservoir = Reservoir(max(1, self.sample_size // length), self.seed + index)
        stats.reservoir.add(q.reshape(-1, length))

    # ----------------------------------------------------------------- output

    def rows(self) -> list[dict[str, Any]]:
        """One dict per QuantModule, keys :data:`COLUMNS`."""
        return [stats.row() for stats in self.layers.values()]

    def to_csv(self, path: str | Path) -> Path:
        """The table (:meth:`rows`) as CSV at ``path``."""
        return write_csv(path, COLUMNS, self.rows())

    def to_parquet(self, path: str | Path) -> Path:
        """The same table as Parquet; needs pandas and pyarrow (an ImportError says so)."""
        return write_parquet(path, COLUMNS, self.rows())

    def sample_layers(self) -> dict[str, dict[str, Any]]:
        """Metadata of every layer that has samples (the file's ``layers`` entry)."""
        layers = {}
        for name, stats in self.layers.items():
            if stats.reservoir is None or stats.reservoir.kept == 0:
                continue
            module = stats.module
            rowwise = OPS[module.op].rowwise
            layers[name] = {
                "op": module.op, "type": type(module).__name__, "approx": module.approx.name,
                "in_scale": stats.in_scale, "in_bits": module.in_bits,
                "out_bits": module.out_bits, "out_scale": stats.out_scale,
                "row_length": stats.row_length if rowwise else None,
                "unit": "row" if rowwise else "value", "seen": stats.reservoir.seen,
                "kept": stats.reservoir.kept, "seed": stats.reservoir.seed,
                "sample_size": self.sample_size}
        return layers

    def save_samples(self, path: str | Path) -> Path:
        """Write the non-linear layers' input samples (format in :mod:`..iostats`)."""
        layers = self.sample_layers()
        return write_samples(path, layers,
                             {name: self.layers[name].reservoir.sample() for name in layers})

    def save(self, path: str | Path) -> tuple[Path, Path | None]:
        """The CSV at ``path`` (``.parquet``: Parquet) and, when any layer has samples,
        the samples at :func:`samples_path` (else None)."""
        path = Path(path)
        table = self.to_parquet(path) if path.suffix == ".parquet" else self.to_csv(path)
        if not self.sample_layers():
            return table, None
        return table, self.save_samples(samples_path(path))
