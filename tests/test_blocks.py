"""A block type is written in one place: its ``forward`` and, beside it, its ``lower``.

The made-up block below exists only in this file; a ViT whose MLPs are replaced by it
exports (no engine code knows it) and every engine gives the integer logits of its
``forward_int``, bit for bit. A ``lower`` that differs from its ``forward`` fails at
export, naming the module (the builder's module-by-module check)."""

import pytest
import torch
from conftest import SMALL, randomize
from torch import nn

from intvit.engine import ProgramError, export_program
from intvit.engine.engines import make_engine
from intvit.models import build_quant_model, model_config
from intvit.models.blocks import LayerMaker
from intvit.models.program_builder import ProgramBuilder
from intvit.quant import QT, Mode, QuantConfig, QuantGELU


class Bottleneck(nn.Module):
    """A made-up MLP: ``x + up(GELU(down(x)))`` with a half-width hidden layer, the sum
    requantized by ``out_act``."""

    def __init__(self, dim: int, make: LayerMaker) -> None:
        super().__init__()
        bits = make.q.bits
        self.down = make.linear(dim, dim // 2)
        self.down_act = make.act(bits.mlp_out)
        self.gelu = QuantGELU(make.q.gelu, bits.mlp_out)
        self.up = make.linear(dim // 2, dim)
        self.out_act = make.act(bits.mlp_out)

    def forward(self, x: QT) -> QT:
        h = self.gelu(self.down_act(self.down(x)))
        return self.out_act(self.up(h), residual=x)

    def lower(self, b: ProgramBuilder, x: str) -> str:
        h = b.kernel(self.gelu, b.act(self.down_act, b.linear(self.down, x)))
        return b.act(self.out_act, b.linear(self.up, h), residual=x)


class BottleneckWithoutGELU(Bottleneck):
    """A wrong lowering: the GELU left out."""

    def lower(self, b: ProgramBuilder, x: str) -> str:
        h = b.act(self.down_act, b.linear(self.down, x))
        return b.act(self.out_act, b.linear(self.up, h), residual=x)


class BottleneckWithoutResidual(Bottleneck):
    """A wrong lowering: the residual stream left out (as a constant, it would hold the
    probe images' stream and still match the model on them)."""

    def lower(self, b: ProgramBuilder, x: str) -> str:
        h = b.kernel(self.gelu, b.act(self.down_act, b.linear(self.down, x)))
        return b.act(self.out_act, b.linear(self.up, h))


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def vit_with(block: type[nn.Module]) -> nn.Module:
    """The small ViT with every MLP replaced by ``block``, calibrated, in eval mode."""
    torch.manual_seed(0)
    qcfg = QuantConfig(gelu="ibert", softmax="ivit", layernorm="ivit")
    model = build_quant_model(model_config("custom", **SMALL), qcfg)
    make = LayerMaker(qcfg, model.cfg.norm_eps)
    for b in model.blocks:
        b.mlp = block(model.cfg.embed_dim, make)
    randomize(model)
    model.set_mode(Mode.CALIBRATE)
    with torch.no_grad():
        model(images(16, seed=1))
    return model.eval()


def test_a_new_block_written_once_exports_bit_exact_on_every_engine():
    model = vit_with(Bottleneck)
    program = export_program(model)
    modules = {n.module for n in program.nodes}
    assert {"blocks.0.mlp.down", "blocks.0.mlp.gelu", "blocks.1.mlp.up",
            "blocks.1.mlp.out_act"} <= modules
    assert not any(m.startswith("blocks.0.mlp.fc") for m in modules)
    x = images(5, seed=3)
    expected = model.forward_int(x).value
    for kind in ("int", "onnx"):
        got = make_engine(kind, program)(x)
        assert got.dtype == torch.int64 and torch.equal(got, expected), kind


def test_a_lower_that_differs_from_its_forward_fails_at_export_naming_the_module():
    with pytest.raises(ProgramError, match="lowering of blocks.0.mlp.up differs"):
        export_program(vit_with(BottleneckWithoutGELU))


def test_a_lower_that_leaves_out_a_residual_fails_at_export_naming_the_module():
    with pytest.raises(ProgramError, match="lowering of blocks.0.mlp.out_act leaves out the "
                                           "residual"):
        export_program(vit_with(BottleneckWithoutResidual))
