"""Plots of an analysis: the functions and their errors, one figure per op."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..fileio import atomic_write  # noqa: E402
from .errors import OpAnalysis  # noqa: E402


def plot_analysis(analysis: OpAnalysis, path: Path) -> Path:
    """Write a PNG: elementwise ops get function and error curves over the input; row
    ops get output-vs-reference scatter and the distribution of absolute errors."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 8), constrained_layout=True)
    x = analysis.inputs.double() * analysis.domain.input_scale()
    ran = {n: r for n, r in analysis.variants.items() if r.output is not None}
    if analysis.op in ("gelu", "exp"):
        top.plot(x, analysis.reference, color="black", lw=2.5, label="exact", alpha=0.4)
        for name, result in ran.items():
            top.plot(x, result.output, lw=1, label=name)
            bottom.plot(x, result.output - analysis.reference, lw=1, label=name)
        top.set_xlabel("x")
        bottom.set_xlabel("x")
        bottom.set_ylabel("approximation - exact")
        top.set_ylabel(analysis.op)
    else:
        ref = analysis.reference.flatten()
        lim = [float(ref.min()), float(ref.max())]
        top.plot(lim, lim, color="black", lw=1, alpha=0.4)
        for name, result in ran.items():
            top.scatter(ref, result.output.flatten(), s=2, alpha=0.4, label=name)
            err = (result.output - analysis.reference).abs().flatten().clamp_min(1e-12)
            bottom.hist(err.log10().numpy(), bins=60, histtype="step", label=name)
        top.set_xlabel("exact")
        top.set_ylabel("approximation")
        bottom.set_xlabel("log10 |approximation - exact|")
        bottom.set_ylabel("count")
    top.set_title(f"{analysis.op}: {analysis.domain.describe()}", fontsize=9)
    top.legend(fontsize=8)
    bottom.legend(fontsize=8)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format=path.suffix[1:] or "png"))
    plt.close(fig)
    return path
