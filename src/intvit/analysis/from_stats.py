"""Measure the approximations on the inputs a model really saw.

:class:`~intvit.analysis.iostats.IOStats` keeps a sample of the integer inputs of every
QuantGELU, QuantSoftmax and QuantLayerNorm, with the layer's input scale and widths.
:func:`analyze_from_stats` runs every variant on each layer's sample, at that layer's
input scale and bit-width (LayerNorm at its real ``dim``, softmax on its real rows),
against the exact float function, by :func:`intvit.analysis.errors.analyze` itself: a
:class:`StatsDomain` stands in for the synthetic :class:`~.domains.Domain`.

**Per layer, then per op.** The results are one :class:`~.errors.OpAnalysis` per
recorded layer (a layer has one scale; layers of one op do not). Errors are in real
output units, the output LSB being that of the variant's default output scale at the
layer's input quantization (as in ``intvit analyze``): GELU ``in_scale * 2^(in_bits -
out_bits)``, softmax ``2^-out_bits``, LayerNorm ``2^(5 - out_bits)``. LayerNorm is
measured without its affine (``gamma = 1, beta = 0``), the normalization the
approximations differ in. :func:`summary` then aggregates per op and variant, in output
LSBs so that layers of different scales compare: the worst max error over layers, the
sample-weighted mean and RMS error, and the layers where the variant cannot run.

A variant that cannot run at a layer's scale (a constant too wide for it, rows too long)
is recorded as that variant's error, as :func:`~.errors.analyze` does; any other
exception propagates.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..approx import REGISTRY
from ..arith import qrange
from ..fileio import write_text
from .domains import Domain
from .errors import OpAnalysis, analyze
from .iostats import SAMPLES_FORMAT, samples_path
from ..tables import markdown_table as render_table
from .tables import markdown_table

MEASURED_OPS = ("gelu", "softmax", "layernorm")


@dataclass(frozen=True)
class StatsDomain(Domain):
    """A recorded layer's real integer inputs, as a :class:`Domain` (``scale``, ``bits``,
    ``dim``/``length``/``rows`` are the layer's; :meth:`integers` is the sample)."""

    layer: str = ""
    approx: str = ""
    seen: int = 0
    samples: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "samples"}

    def integers(self) -> torch.Tensor:
        """The sample as int64; GELU's values sorted (for plots; the errors' statistics
        do not depend on the order)."""
        q = self.samples.to(torch.int64)
        return q.sort().values if self.op == "gelu" else q

    def describe(self) -> str:
        lo, hi = qrange(self.bits)
        what = (f"{self.samples.shape[0]} real inputs" if self.op == "gelu" else
                f"{self.samples.shape[0]} real rows of {self.samples.shape[-1]}")
        return (f"{what} of layer {self.layer} (runs {self.approx}; {self.seen} seen), "
                f"{self.bits}-bit [{lo}, {hi}] at scale {self.input_scale():g}")


class SamplesNotFound(FileNotFoundError, ValueError):
    """No samples file where one was asked for (a ValueError too, so the CLI reports
    it as a usage error)."""


@dataclass
class LayerSample:
    """One layer's entry in a samples file."""

    name: str
    values: torch.Tensor
    meta: dict[str, Any]

    @property
    def op(self) -> str:
        return self.meta["op"]


def load_samples(path: str | Path) -> dict[str, LayerSample]:
    """Read a samples file written by :meth:`IOStats.save_samples` (or the CSV next to
    it: ``x.csv`` reads ``x.samples.safetensors``); values come back as int64."""
    from safetensors import safe_open

    path = Path(path)
    if not path.name.endswith(".safetensors"):
        path = samples_path(path)
    if not path.exists():
        raise SamplesNotFound(f"no input samples at {path}: record them with "
                                f"`intvit eval --io-stats FILE` (IOStats.save)")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != SAMPLES_FORMAT:
            raise ValueError(f"{path} is not an IOStats samples file (format "
                             f"{metadata.get('format')!r}, expected {SAMPLES_FORMAT!r})")
        layers = json.loads(metadata["layers"])
        missing = set(layers) - set(f.keys())
        if missing:
            raise ValueError(f"{path} lacks the samples of {sorted(missing)}")
        return {name: LayerSample(name, f.get_tensor(name).to(torch.int64), meta)
                for name, meta in layers.items()}


def layer_domain(sample: LayerSample) -> StatsDomain:
    meta, values = sample.meta, sample.values
    rows = values.shape[0]
    length = values.shape[-1] if sample.op == "softmax" else Domain.length
    dim = values.shape[-1] if sample.op == "layernorm" else Domain.dim
    return StatsDomain(sample.op, bits=int(meta["in_bits"]), scale=float(meta["in_scale"]),
                       rows=rows, length=length, dim=dim, layer=sample.name,
                       approx=meta.get("approx", ""), seen=int(meta.get("seen", rows)),
                       samples=values)


def analyze_from_stats(path: str | Path,
                       variants_per_op: Mapping[str, Sequence[str]] | None = None,
                       out_bits: int | None = 8, ops: Sequence[str] | None = None,
                       progress: bool = False) -> list[OpAnalysis]:
    """One :class:`OpAnalysis` per recorded non-linear layer (file order), whose
    ``domain`` is a :class:`StatsDomain` (``domain.layer`` names the layer).

    ``path``: the samples file or the statistics CSV next to it. ``variants_per_op``:
    variant names per op; an op left out gets every family of its registry (default
    parameters) plus the variant the layer ran, when that is not one of them.
    ``out_bits``: the output width to measure at; None takes each layer's own.
    ``ops``: only these ops (an op with no recorded layer is an error)."""
    samples = load_samples(path)
    wanted = list(ops) if ops is not None else list(MEASURED_OPS)
    unknown = set(wanted) - set(MEASURED_OPS)
    if unknown:
        raise ValueError(f"no layer records {sorted(unknown)}; the recorded ops are "
                         f"{', '.join(MEASURED_OPS)}")
    variants_per_op = dict(variants_per_op or {})
    results = []
    for sample in samples.values():
        if sample.op not in wanted:
            continue
        names = list(variants_per_op.get(sample.op) or [])
        if not names:  # every family, and the variant the layer runs
            names = list(REGISTRY[sample.op])
            running = sample.meta.get("approx")
            if running and running not in names:
                names.append(running)
        bits = int(sample.meta["out_bits"]) if out_bits is None else out_bits
        results.append(analyze(sample.op, names, layer_domain(sample), bits, progress))
    absent = [op for op in wanted if op not in {r.op for r in results}]
    if ops is not None and absent:
        raise ValueError(f"{path} has no samples of {', '.join(absent)} layers")
    if not results:
        raise ValueError(f"{path} has no samples of gelu, softmax or layernorm layers")
    return results


def summary(results: Sequence[OpAnalysis]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per op and variant, over layers, in output LSBs: ``layers`` (that ran),
    ``max_abs_error_lsb`` (worst layer), ``mean_abs_error_lsb`` and ``rms_error_lsb``
    (weighted by sample size), ``worst_layer``, ``failed`` ({layer: message})."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for analysis in results:
        weight = analysis.inputs.numel()
        for name, r in analysis.variants.items():
            entry = out.setdefault(analysis.op, {}).setdefault(name, {
                "layers": 0, "max_abs_error_lsb": 0.0, "worst_layer": None,
                "_abs": 0.0, "_sq": 0.0, "_n": 0, "failed": {}})
            if r.error is not None:
                entry["failed"][analysis.domain.layer] = r.error
                continue
            entry["layers"] += 1
            worst = r.max_abs_error / analysis.lsb
            if entry["worst_layer"] is None or worst > entry["max_abs_error_lsb"]:
                entry["max_abs_error_lsb"], entry["worst_layer"] = worst, analysis.domain.layer
            entry["_abs"] += r.mean_abs_error / analysis.lsb * weight
            entry["_sq"] += (r.rms_error / analysis.lsb) ** 2 * weight
            entry["_n"] += weight
    for variants in out.values():
        for entry in variants.values():
            n = entry.pop("_n")
            mean, sq = entry.pop("_abs"), entry.pop("_sq")
            entry["mean_abs_error_lsb"] = mean / n if n else math.nan
            entry["rms_error_lsb"] = math.sqrt(sq / n) if n else math.nan
            if not entry["layers"]:
                entry["max_abs_error_lsb"] = math.nan
    return {op: out[op] for op in MEASURED_OPS if op in out}


def results_dict(results: Sequence[OpAnalysis], source: str | Path | None = None
                 ) -> dict[str, Any]:
    """JSON-able: ``{"source", "summary": summary(results), "layers": [per-layer
    OpAnalysis.as_dict() with "layer"]}``."""
    return {"source": None if source is None else str(source),
            "summary": _jsonable(summary(results)),
            "layers": [_jsonable(dict(a.as_dict(), layer=a.domain.layer)) for a in results]}


def _jsonable(value: Any) -> Any:
    """NaN as None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def summary_table(results: Sequence[OpAnalysis]) -> str:
    """Markdown: per op, each variant's errors over all layers, in output LSBs."""
    lines = []
    for op, variants in summary(results).items():
        layers = sum(1 for a in results if a.op == op)
        rows = []
        for name, e in variants.items():
            failed = ", ".join(e["failed"]) or "-"
            rows.append([name, 0, "n/a", "n/a", "n/a", "-", failed] if not e["layers"] else
                        [name, e["layers"], f"{e['max_abs_error_lsb']:.3g}",
                         f"{e['mean_abs_error_lsb']:.3g}", f"{e['rms_error_lsb']:.3g}",
                         e["worst_layer"], failed])
        lines += [f"**{op}** over {layers} recorded layer(s), errors in output LSBs", "",
                  render_table(["variant", "layers", "max abs err", "mean abs err", "rms err",
                                "worst layer", "cannot run on"], rows), ""]
    return "\n".join(lines)


def markdown_report(results: Sequence[OpAnalysis], per_layer: bool = True) -> str:
    """The summary table, then (``per_layer``) :func:`~.tables.markdown_table` of each
    layer (errors in real units, costs at the layer's row length)."""
    parts = [summary_table(results)]
    if per_layer:
        parts += [f"### {a.domain.layer}\n\n" + markdown_table(a) for a in results]
    return "\n".join(parts)


def write_report(results: Sequence[OpAnalysis], out: str | Path, title: str = "",
                 plots: bool = True) -> Path:
    """``out/approximations_from_stats.md`` and (``plots``) one PNG per layer."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = ""
    if plots:
        from .plots import plot_analysis

        for a in results:
            plot_analysis(a, out / f"{a.domain.layer}.png")
        figures = "\n".join(f"![{a.domain.layer}]({a.domain.layer}.png)" for a in results)
    path = out / "approximations_from_stats.md"
    write_text(path, "# Approximation errors on recorded inputs\n\n"
               + (title + "\n\n" if title else "") + markdown_report(results)
               + "\n" + figures + "\n")
    return path
