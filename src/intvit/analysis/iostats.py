"""Per-layer activation statistics of a quantized model, recorded while it evaluates.

>>> with IOStats(model) as stats:          # forward hooks on every QuantModule
...     evaluate(model, loader)            # the integer model (model.eval())
>>> stats.save("runs/io.csv")              # io.csv + io.samples.safetensors

Every :class:`~intvit.quant.QuantModule` gets a forward hook. An exception inside a
hook propagates out of the forward pass (nothing is caught); the hooks are removed when
the ``with`` block ends, whether it ends normally or not.

**What a row holds** (:meth:`IOStats.to_csv`, one row per QuantModule, in module order,
also for modules that were never called: ``calls`` is then 0 and the rest empty):

``layer``, ``type``, ``op``, ``approx``
    the module's path in the model, its class, and for the non-linear modules
    (QuantGELU, QuantSoftmax, QuantLayerNorm) the op and the approximation it runs.
``mode``
    the quantization mode(s) the module ran in (``int`` for the evaluated model;
    several joined by ``|``).
``calls``
    forward calls seen.

then, for each tensor slot ``in`` (the first input), ``in2`` (the second input: the
residual of a QuantAct, the right operand ``b`` of a QuantMatMul; empty elsewhere) and
``out`` (the output):

``<slot>_dtype``
    the value's dtype (``int64`` in INT mode).
``<slot>_shape``
    the shape, ``x``-separated (``4x17x32``); a dimension that differed between calls
    is ``*`` (the last batch may be smaller), a rank that differed makes it ``varies``.
``<slot>_numel``
    elements seen, summed over calls.
``<slot>_min``, ``<slot>_max``
    the smallest and largest integer seen (over all calls). With a scale these are the
    integers ``q`` of ``x = q * scale``: the int64 values themselves in INT mode, the
    rounded ``value / scale`` in FAKE (QAT) mode. Without a scale (the model's float
    input, FLOAT/CALIBRATE modes) they are the raw values.
``<slot>_bits``, ``<slot>_signed``
    the width the module declares for that tensor (activation bits of a QuantAct's
    output, ``in_bits`` of a linear/kernel input, 32 for accumulators, the kernel's
    ``out_bits`` and signedness); empty where the module declares none (a QuantAct's
    inputs).
``<slot>_bits_used``
    the width the observed integer range needs (signed, or unsigned where the
    declared tensor is unsigned).
``<slot>_scale_min``, ``<slot>_scale_max``, ``<slot>_scale_numel``
    the scale: equal min and max and ``numel`` 1 for a per-tensor scale, the range of
    a per-channel scale (after a linear layer) with its length; over all calls.
``out_at_limit``
    output elements at either end of the declared output range (saturated, or exactly
    at the limit).
``samples``
    integer inputs kept for this layer (see below; 0 for the linear modules).

**Input samples of the non-linear modules** (:meth:`IOStats.save_samples`): for each
QuantGELU, QuantSoftmax and QuantLayerNorm a uniform sample of its integer inputs,
drawn by reservoir sampling (:class:`Reservoir`; seeded, so the same run keeps the
same sample, listed in the order the model saw it): single values for GELU, whole rows (the last dimension) for softmax and
LayerNorm, at most ``sample_size`` values per layer (``sample_size // row_length`` rows,
at least one). The file is a ``.safetensors`` with

* one tensor per layer, named by the layer path: shape ``(n,)`` for GELU,
  ``(rows, row_length)`` for softmax and LayerNorm; the smallest of int8/int16/int32/
  int64 that holds the layer's declared input width (read it back as int64);
* metadata ``format = "intvit.iostats.samples/1"`` and ``layers`` = a JSON object, one
  entry per layer: ``op``, ``type``, ``approx``, ``in_scale`` (the input scale, a
  float), ``in_bits``, ``out_bits``, ``out_scale`` (the output scale the layer ran
  with), ``row_length`` (null for GELU; LayerNorm's ``dim``, softmax's row length),
  ``unit`` (``value`` or ``row``), ``seen`` (values or rows seen), ``kept``, ``seed``,
  ``sample_size``.

Samples are taken whenever the input has a scale (INT mode, and FAKE mode through the
rounded ``value / scale``); a layer whose input scale changes between calls, or a row
op whose row length does, is an error (a sample must have one scale to be measured).

:func:`intvit.analysis.from_stats.analyze_from_stats` measures approximations on them.
"""

from __future__ import annotations

import csv
import json
import math
import weakref
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..fileio import atomic_write
from ..approx import OPS
from ..arith import qrange
from ..quant.modules import (ACC_BITS, QuantAct, QuantLinear, QuantMatMul, QuantModule,
                             QuantPatchConv, _KernelModule)
from ..quant.qtensor import QT, to_integers

SAMPLES_FORMAT = "intvit.iostats.samples/1"
SAMPLE_SIZE = 65536
SLOTS = ("in", "in2", "out")
SLOT_FIELDS = ("dtype", "shape", "numel", "min", "max", "bits", "signed", "bits_used",
               "scale_min", "scale_max", "scale_numel")
COLUMNS = (("layer", "type", "op", "approx", "mode", "calls")
           + tuple(f"{slot}_{f}" for slot in SLOTS for f in SLOT_FIELDS)
           + ("out_at_limit", "samples"))


def samples_path(csv_path: str | Path) -> Path:
    """Where the input samples go next to a statistics file: ``x.csv`` ->
    ``x.samples.safetensors``."""
    path = Path(csv_path)
    return path.with_name(path.stem + ".samples.safetensors")


def declared_widths(module: nn.Module) -> dict[str, tuple[int, bool] | None]:
    """The (bits, signed) each tensor slot of ``module`` is declared to fit; None where
    the module declares nothing (a QuantAct reads whatever its producer wrote)."""
    if isinstance(module, QuantAct):
        return {"in": None, "in2": None, "out": (module.bits, module.signed)}
    if isinstance(module, (QuantLinear, QuantPatchConv)):
        return {"in": (module.in_bits, True), "in2": None, "out": (ACC_BITS, True)}
    if isinstance(module, QuantMatMul):
        return {"in": (module.a_bits, True), "in2": (module.b_bits, True),
                "out": (ACC_BITS, True)}
    if isinstance(module, _KernelModule):
        return {"in": (module.in_bits, True), "in2": None,
                "out": (module.out_bits, OPS[module.op].out_signed)}
    return {"in": None, "in2": None, "out": None}


def bits_needed(lo: int, hi: int, signed: bool = True) -> int:
    """The width an integer range needs: signed (two's complement), or unsigned when
    asked for and the range is non-negative."""
    if not signed and lo >= 0:
        return max(int(hi).bit_length(), 1)
    width = lambda v: (v if v >= 0 else -v - 1).bit_length() + 1  # noqa: E731
    return max(width(int(lo)), width(int(hi)))


def _shape_text(shape: list[int | None] | None) -> str:
    if shape is None:
        return "varies"
    return "x".join("*" if d is None else str(d) for d in shape)


@dataclass
class TensorStats:
    """Running statistics of one tensor slot of one layer."""

    dtypes: list[str] = field(default_factory=list)
    shape: list[int | None] | None = None
    shaped: bool = False
    numel: int = 0
    lo: float | int | None = None
    hi: float | int | None = None
    integer: bool = True
    scale_lo: float | None = None
    scale_hi: float | None = None
    scale_numel: int | None = None

    def update(self, a: QT, extrema: Callable[[torch.Tensor], tuple[Any, Any]]
               ) -> tuple[torch.Tensor | None, Any, Any]:
        """Fold one value in; returns its integers (None when it has neither an integer
        dtype nor a scale) and their (or its) min and max in this call."""
        value = a.value
        dtype = str(value.dtype).removeprefix("torch.")
        if dtype not in self.dtypes:
            self.dtypes.append(dtype)
        shape = list(value.shape)
        if not self.shaped:
            self.shape, self.shaped = shape, True
        elif self.shape is not None:
            self.shape = (None if len(self.shape) != len(shape) else
                          [d if d == e else None for d, e in zip(self.shape, shape)])
        self.numel += value.numel()
        q = None
        if not (value.dtype.is_floating_point or value.dtype.is_complex):
            q = value
        elif a.scale is not None:
            q = to_integers(a)
        if a.scale is not None:
            s = torch.as_tensor(a.scale).detach()
            lo, hi = float(s.min()), float(s.max())
            self.scale_lo = lo if self.scale_lo is None else min(self.scale_lo, lo)
            self.scale_hi = hi if self.scale_hi is None else max(self.scale_hi, hi)
            self.scale_numel = max(self.scale_numel or 0, s.numel())
        if q is None:
            self.integer = False
        lo = hi = None
        if value.numel():
            lo, hi = extrema(value if q is None else q)
            self.lo = lo if self.lo is None else min(self.lo, lo)
            self.hi = hi if self.hi is None else max(self.hi, hi)
        return q, lo, hi

    def row(self, prefix: str, declared: tuple[int, bool] | None) -> dict[str, Any]:
        row: dict[str, Any] = {f"{prefix}_{f}": None for f in SLOT_FIELDS}
        if declared is not None:
            row[f"{prefix}_bits"], row[f"{prefix}_signed"] = declared
        if not self.shaped:
            return row
        used = None
        if self.integer and self.lo is not None:
            used = bits_needed(self.lo, self.hi, declared[1] if declared else True)
        row.update({f"{prefix}_dtype": "|".join(self.dtypes),
                    f"{prefix}_shape": _shape_text(self.shape),
                    f"{prefix}_numel": self.numel, f"{prefix}_min": self.lo,
                    f"{prefix}_max": self.hi, f"{prefix}_bits_used": used,
                    f"{prefix}_scale_min": self.scale_lo,
                    f"{prefix}_scale_max": self.scale_hi,
                    f"{prefix}_scale_numel": self.scale_numel})
        return row


class Reservoir:
    """A uniform random sample, without replacement, of at most ``capacity`` items
    (rows of one length) of a stream, in stream order.

    Bottom-k sampling: every item draws a key ``U(0, 1)`` and the ``capacity`` items
    of smallest key are kept, which is the distribution of Algorithm R. Once full, an
    item can only enter with a key below the largest kept one, ``tau``; so of a batch
    of ``n`` only a ``Binomial(n, tau)`` count of items, at uniformly drawn distinct
    positions, with keys ``U(0, tau)``, is drawn: the cost per batch grows with the
    items that enter (``~ capacity * n / seen``), not with ``n``. Seeded: the same
    stream gives the same sample."""

    def __init__(self, capacity: int, seed: int) -> None:
        if capacity < 1:
            raise ValueError(f"a reservoir needs room for at least one item, got {capacity}")
        self.capacity, self.seed = capacity, seed
        self.generator = torch.Generator().manual_seed(seed)
        self.items: torch.Tensor | None = None        # (kept, row_length) int64, CPU
        self.keys = torch.empty(0, dtype=torch.float64)
        self.index = torch.empty(0, dtype=torch.int64)  # positions in the stream
        self.seen = 0

    @property
    def kept(self) -> int:
        return self.keys.numel()

    def _positions(self, n: int, m: int) -> torch.Tensor:
        """``m`` distinct positions of ``range(n)``, a uniform random subset."""
        g = self.generator
        if 4 * m > n:
            return torch.randperm(n, generator=g)[:m]
        chosen = torch.randint(n, (m,), generator=g).unique()
        while chosen.numel() < m:
            more = torch.randint(n, (2 * (m - chosen.numel()),), generator=g)
            chosen = torch.cat([chosen, more]).unique()
        if chosen.numel() > m:
            chosen = chosen[torch.randperm(chosen.numel(), generator=g)[:m]]
        return chosen

    def add(self, items: torch.Tensor) -> None:
        """Add ``items`` of shape (n, row_length)."""
        n = items.shape[0]
        if self.items is not None and items.shape[1] != self.items.shape[1]:
            raise ValueError(f"rows of {items.shape[1]} after rows of {self.items.shape[1]}")
        if n == 0:
            return
        g = self.generator
        tau = 1.0 if self.kept < self.capacity else float(self.keys.max())
        if tau >= 1.0:
            positions = torch.arange(n)
        else:
            m = int(torch.binomial(torch.tensor([float(n)], dtype=torch.float64),
                                   torch.tensor([tau], dtype=torch.float64), generator=g))
            positions = self._positions(n, m).sort().values
        keys = torch.rand(positions.numel(), generator=g, dtype=torch.float64) * tau
        if keys.numel() > self.capacity:  # gather no more than can be kept
            best = keys.topk(self.capacity, largest=False).indices.sort().values
            keys, positions = keys[best], positions[best]
        new = items[positions.to(items.device)].detach().to("cpu", torch.int64)
        self.keys = torch.cat([self.keys, keys])
        self.index = torch.cat([self.index, positions + self.seen])
        self.items = new if self.items is None else torch.cat([self.items, new])
        if self.kept > self.capacity:
            best = self.keys.topk(self.capacity, largest=False).indices.sort().values
            self.keys, self.index, self.items = (self.keys[best], self.index[best],
                                                 self.items[best])
        self.seen += n

    def sample(self) -> torch.Tensor:
        if self.items is None:
            return torch.zeros(0, 0, dtype=torch.int64)
        return self.items


@dataclass
class LayerStats:
    """Everything recorded for one QuantModule."""

    name: str
    module: nn.Module
    modes: list[str] = field(default_factory=list)
    calls: int = 0
    slots: dict[str, TensorStats] = field(
        default_factory=lambda: {slot: TensorStats() for slot in SLOTS})
    at_limit: int = 0
    reservoir: Reservoir | None = None
    row_length: int | None = None
    in_scale: float | None = None
    out_scale: float | None = None

    @property
    def op(self) -> str | None:
        return self.module.op if isinstance(self.module, _KernelModule) else None

    def row(self) -> dict[str, Any]:
        declared = declared_widths(self.module)
        row = {"layer": self.name, "type": type(self.module).__name__, "op": self.op,
               "approx": self.module.approx.name if self.op else None,
               "mode": "|".join(self.modes) or None, "calls": self.calls}
        for slot in SLOTS:
            row.update(self.slots[slot].row(slot, declared[slot]))
        row["out_at_limit"] = self.at_limit if self.calls else None
        row["samples"] = self.reservoir.kept if self.reservoir is not None else 0
        return row


def _smallest_int_dtype(bits: int) -> torch.dtype:
    for dtype, width in ((torch.int8, 8), (torch.int16, 16), (torch.int32, 32)):
        if bits <= width:
            return dtype
    return torch.int64


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
        if isinstance(stats.module, _KernelModule) and self.sample_size and q_in is not None:
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
        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=COLUMNS)
                writer.writeheader()
                for row in self.rows():
                    writer.writerow({k: _csv_value(v) for k, v in row.items()})
        return atomic_write(path, write)

    def to_parquet(self, path: str | Path) -> Path:
        """The same table as Parquet; needs pandas and pyarrow (an ImportError says so)."""
        try:
            import pandas as pd
            import pyarrow  # noqa: F401
        except ImportError as err:
            raise ImportError(f"to_parquet needs pandas and pyarrow ({err}); "
                              f"to_csv needs neither") from err
        frame = pd.DataFrame(self.rows(), columns=list(COLUMNS))
        return atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))

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
        """Write the non-linear layers' input samples (format in the module docstring)."""
        from safetensors.torch import save_file

        layers = self.sample_layers()
        tensors = {}
        for name, meta in layers.items():
            sample = self.layers[name].reservoir.sample()
            if meta["unit"] == "value":
                sample = sample.reshape(-1)
            tensors[name] = sample.to(_smallest_int_dtype(meta["in_bits"])).contiguous()
        metadata = {"format": SAMPLES_FORMAT, "layers": json.dumps(layers)}
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))

    def save(self, path: str | Path) -> tuple[Path, Path | None]:
        """The CSV at ``path`` (``.parquet``: Parquet) and, when any layer has samples,
        the samples at :func:`samples_path` (else None)."""
        path = Path(path)
        table = self.to_parquet(path) if path.suffix == ".parquet" else self.to_csv(path)
        if not self.sample_layers():
            return table, None
        return table, self.save_samples(samples_path(path))


def _csv_value(value: Any) -> Any:
    """A CSV field that reads back as the same value: None empty, booleans 0/1, finite
    floats as ``repr`` (every digit), anything else as it is."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return value
