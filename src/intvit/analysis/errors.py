"""Measure approximation variants against the exact float function on a domain."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from ..progress import tqdm

from ..approx import build
from ..approx.base import Kernel
from .domains import Domain


@dataclass
class VariantResult:
    """Errors of one variant (output minus reference, in real units) and its cost."""

    name: str
    max_abs_error: float = float("nan")
    mean_abs_error: float = float("nan")
    rms_error: float = float("nan")
    cost: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    output: torch.Tensor | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error}
        return {"max_abs_error": self.max_abs_error, "mean_abs_error": self.mean_abs_error,
                "rms_error": self.rms_error, "cost": self.cost}


@dataclass
class OpAnalysis:
    op: str
    domain: Domain
    out_bits: int
    lsb: float
    inputs: torch.Tensor
    reference: torch.Tensor
    variants: dict[str, VariantResult]

    def as_dict(self) -> dict[str, Any]:
        return {"op": self.op, "domain": dict(self.domain.as_dict(),
                                              input_scale=self.domain.input_scale(),
                                              description=self.domain.describe()),
                "out_bits": self.out_bits, "output_lsb": self.lsb,
                "variants": {n: r.as_dict() for n, r in self.variants.items()}}


def prepare_kernel(op: str, name: str, domain: Domain, out_bits: int) -> Kernel:
    extra = {"dim": domain.dim} if op == "layernorm" else {}
    return build(op, name).prepare(domain.input_scale(), domain.bits, out_bits, **extra)


def analyze(op: str, variants: Sequence[str], domain: Domain, out_bits: int = 8,
            progress: bool = True) -> OpAnalysis:
    """Run every variant on the domain; a variant that cannot run there (a constant too
    wide for the scale, say) is reported with its error message, not dropped."""
    q = domain.integers()
    x = q.to(torch.float64) * domain.input_scale()
    reference = build(op, "float").prepare(domain.input_scale(), domain.bits, out_bits,
                                           **({"dim": domain.dim} if op == "layernorm" else {}))
    exact = reference.spec.reference(x)
    results: dict[str, VariantResult] = {}
    for name in tqdm(variants, desc=f"analyze {op}", disable=not progress, leave=False):
        canonical = build(op, name).name
        try:
            kernel = prepare_kernel(op, name, domain, out_bits)
            y = kernel.dequantize(kernel(q))
            cost = kernel.cost(domain.dim if op == "layernorm" else domain.length).as_dict()
        except (ValueError, ArithmeticError) as err:
            results[canonical] = VariantResult(canonical, error=str(err))
            continue
        diff = (y - exact).abs()
        results[canonical] = VariantResult(
            canonical, float(diff.max()), float(diff.mean()),
            float(diff.pow(2).mean().sqrt()), cost, output=y)
    return OpAnalysis(op, domain, out_bits, reference.out_scale, q, exact, results)
