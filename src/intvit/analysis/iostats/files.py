"""The I/O statistics as files: the table as CSV (every value read back as written) or
Parquet, and the non-linear layers' input samples as safetensors (the format is
described in :mod:`intvit.analysis.iostats`)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from ...fileio import atomic_write

SAMPLES_FORMAT = "intvit.iostats.samples/1"


def samples_path(csv_path: str | Path) -> Path:
    """Where the input samples go next to a statistics file: ``x.csv`` ->
    ``x.samples.safetensors``."""
    path = Path(csv_path)
    return path.with_name(path.stem + ".samples.safetensors")


def _smallest_int_dtype(bits: int) -> torch.dtype:
    for dtype, width in ((torch.int8, 8), (torch.int16, 16), (torch.int32, 32)):
        if bits <= width:
            return dtype
    return torch.int64


def write_csv(path: str | Path, columns: Iterable[str], rows: Iterable[Mapping[str, Any]]
              ) -> Path:
    """The rows as CSV with the header ``columns``, atomically (see :func:`csv_value`)."""
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: csv_value(v) for k, v in row.items()})
    return atomic_write(path, write)


def write_parquet(path: str | Path, columns: Iterable[str],
                  rows: Iterable[Mapping[str, Any]]) -> Path:
    """The same table as Parquet; needs pandas and pyarrow (an ImportError says so)."""
    try:
        import pandas as pd
        import pyarrow  # noqa: F401
    except ImportError as err:
        raise ImportError(f"to_parquet needs pandas and pyarrow ({err}); "
                          f"to_csv needs neither") from err
    frame = pd.DataFrame(list(rows), columns=list(columns))
    return atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def write_samples(path: str | Path, layers: Mapping[str, Mapping[str, Any]],
                  samples: Mapping[str, torch.Tensor]) -> Path:
    """The samples file: each layer's sample (``(n,)`` values or ``(rows, row_length)``
    rows, stored in the smallest integer dtype of its ``in_bits``) and the ``layers``
    metadata, atomically."""
    from safetensors.torch import save_file

    tensors = {}
    for name, meta in layers.items():
        sample = samples[name]
        if meta["unit"] == "value":
            sample = sample.reshape(-1)
        tensors[name] = sample.to(_smallest_int_dtype(meta["in_bits"])).contiguous()
    metadata = {"format": SAMPLES_FORMAT, "layers": json.dumps(dict(layers))}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def csv_value(value: Any) -> Any:
    """A CSV field that reads back as the same value: None empty, booleans 0/1, finite
    floats as ``repr`` (every digit), anything else as it is."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return value
