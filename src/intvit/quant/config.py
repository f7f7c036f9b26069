"""What a quantized model is configured with: bit-widths per quantization point and the
approximation chosen for each non-linear op.

The eight quantization points are those of the I-ViT 8-bit extension, in its order
(``--bitwidth 8`` sets all, ``--bitwidth 8,8,8,8,8,8,16,16`` each). Where each sits:

| point          | quantized activations                                                |
|----------------|----------------------------------------------------------------------|
| patch_embed    | the input image and the patch-embedding output                       |
| pos_encoding   | tokens after the position embedding (and class token) are added      |
| block_input    | every LayerNorm output (the input of qkv, fc1 and the head)          |
| attention_out  | q, k, v, the attention logits, the attention context, the projection |
| softmax_out    | the attention probabilities (unsigned)                               |
| mlp_out        | fc1 output (GELU input, and GELU output at its scale) and fc2 output |
| norm2_in       | the residual stream after attention (input of norm2)                 |
| att_block_out  | the residual stream after the MLP (block output, input of norm1)     |
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from ..approx import build

POINTS = ("patch_embed", "pos_encoding", "block_input", "attention_out", "softmax_out",
          "mlp_out", "norm2_in", "att_block_out")
SUPPORTED_ACT_BITS = range(2, 17)
OBSERVERS = ("minmax", "ema", "percentile")


@dataclass(frozen=True)
class BitWidths:
    patch_embed: int = 8
    pos_encoding: int = 8
    block_input: int = 8
    attention_out: int = 8
    softmax_out: int = 8
    mlp_out: int = 8
    norm2_in: int = 8
    att_block_out: int = 8

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or value not in SUPPORTED_ACT_BITS:
                raise ValueError(
                    f"bit-width of {f.name} must be an integer in [2, 16], got {value!r}")

    @classmethod
    def parse(cls, text: str | int) -> "BitWidths":
        """``8`` for every point, or a comma list of eight in the order of POINTS."""
        parts = [p.strip() for p in str(text).split(",")]
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"--bitwidth takes integers, got {text!r}") from None
        if len(values) == 1:
            values = values * len(POINTS)
        if len(values) != len(POINTS):
            raise ValueError(f"--bitwidth takes 1 or {len(POINTS)} values "
                             f"({', '.join(POINTS)}), got {len(values)}")
        return cls(*values)


@dataclass(frozen=True)
class QuantConfig:
    """Everything the quantized parts of a model need, serializable to JSON."""

    bits: BitWidths = field(default_factory=BitWidths)
    weight_bits: int = 8
    gelu: str = "ivit"
    softmax: str = "ivit"
    layernorm: str = "ivit"
    observer: str = "minmax"
    ema_momentum: float = 0.9
    percentile: float = 99.99
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.weight_bits not in range(2, 9):
            raise ValueError(f"weight_bits must lie in [2, 8], got {self.weight_bits}")
        if self.observer not in OBSERVERS:
            raise ValueError(f"observer must be one of {', '.join(OBSERVERS)}, "
                             f"got {self.observer!r}")
        for op in ("gelu", "softmax", "layernorm"):
            object.__setattr__(self, op, build(op, getattr(self, op)).name)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "QuantConfig":
        data = dict(data)
        data["bits"] = BitWidths(**data.get("bits", {}))
        return cls(**data)
