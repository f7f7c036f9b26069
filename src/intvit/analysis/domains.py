"""The input domains on which approximations are measured.

* GELU and exp: every integer of the input bit-width (exp: the non-positive half, the
  inputs it sees after the row maximum is subtracted), times the input scale.
* Softmax: rows of realistic attention logits: Gaussian with standard deviation
  ``spread`` and, on a third of the rows, one token attended strongly (``+3 spread``),
  quantized with the scale that fits the largest magnitude.
* LayerNorm: rows of ``dim`` Gaussian channels where a few outlier channels (as ViTs
  have) are ``outlier_gain`` times larger, quantized likewise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..arith import qrange, round_half_up


@dataclass(frozen=True)
class Domain:
    """Where and how an op is measured; ``describe`` says it in words for reports."""

    op: str
    bits: int = 8
    scale: float | None = None
    rows: int = 256
    length: int = 197
    spread: float = 2.0
    dim: int = 192
    outliers: int = 2
    outlier_gain: float = 20.0
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        lo, hi = qrange(self.bits)
        if self.op == "gelu":
            return f"every {self.bits}-bit integer [{lo}, {hi}] at scale {self.input_scale():g}"
        if self.op == "exp":
            return f"every {self.bits}-bit integer [{lo}, 0] at scale {self.input_scale():g}"
        if self.op == "softmax":
            return (f"{self.rows} rows of {self.length} attention logits, std {self.spread}, "
                    f"{self.bits}-bit at scale {self.input_scale():g}")
        return (f"{self.rows} rows of {self.dim} channels, {self.outliers} outlier channels "
                f"x{self.outlier_gain}, {self.bits}-bit at scale {self.input_scale():g}")

    def _floats(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        if self.op == "softmax":
            x = torch.randn(self.rows, self.length, generator=gen, dtype=torch.float64)
            x = x * self.spread
            peaked = torch.arange(self.rows) % 3 == 0
            spike = torch.randint(0, self.length, (self.rows,), generator=gen)
            x[peaked, spike[peaked]] += 3 * self.spread
            return x
        x = torch.randn(self.rows, self.dim, generator=gen, dtype=torch.float64)
        x[:, : self.outliers] *= self.outlier_gain
        return x + 0.5 * torch.randn(self.rows, 1, generator=gen, dtype=torch.float64)

    def input_scale(self) -> float:
        if self.scale is not None:
            return self.scale
        if self.op in ("gelu", "exp"):
            return 8.0 / 2 ** (self.bits - 1)
        return float(self._floats().abs().max()) / qrange(self.bits)[1]

    def integers(self) -> torch.Tensor:
        """The integer inputs (int64) of this domain."""
        lo, hi = qrange(self.bits)
        if self.op == "gelu":
            return torch.arange(lo, hi + 1)
        if self.op == "exp":
            return torch.arange(lo, 1)
        q = round_half_up(self._floats() / self.input_scale())
        return q.clamp(lo, hi).to(torch.int64)
