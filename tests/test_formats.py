"""A QT's integer format (bits, signed): every quantized module's output carries the
format its values lie in, its consumers receive the formats of the quantization points
of ``intvit.quant.config`` (so no width is threaded through constructors), a value
without a format or a frozen module given another format is a clear error, and FAKE
mode's straight-through gradients are those of the float functions."""

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize
from torch import nn

from intvit.arith import qrange
from intvit.models import build_quant_model, model_config
from intvit.models.swin import MASK_BITS
from intvit.quant import (QT, BitWidths, Mode, QuantAct, QuantConfig, QuantGELU,
                          QuantLinear, QuantMatMul, QuantModule, calibrate)
from intvit.quant.integer import ACC_BITS
from intvit.quant.modules import quantize_weight
from intvit.quant.qtensor import FormatError, to_integers

# a different width at every point, so that a format shows where it comes from
BITS = BitWidths(patch_embed=9, pos_encoding=10, block_input=8, attention_out=7,
                 softmax_out=5, mlp_out=6, norm2_in=12, att_block_out=11)
VIT = dict(arch="vit", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
           num_classes=10)
SWIN = dict(arch="swin", img_size=32, patch_size=4, embed_dim=16, depths=(2, 2),
            heads=(2, 2), window_size=4, num_classes=10)
ACC = (ACC_BITS, True)


def calibrated(arch: dict) -> nn.Module:
    torch.manual_seed(0)
    model = randomize(build_quant_model(model_config("custom", **arch), QuantConfig(bits=BITS)))
    calibrate(model, [(torch.randn(8, 3, 32, 32), None)], 1, progress=False)
    return model


def run_recorded(model: nn.Module, mode: Mode) -> dict[str, tuple[list[QT], QT]]:
    """Each quantized module's operands (positional, then the residual) and output in
    one forward in ``mode``."""
    model.train(mode is Mode.FAKE)
    if mode is Mode.FLOAT:
        model.set_mode(Mode.FLOAT)
    seen: dict[str, tuple[list[QT], QT]] = {}

    def hook(name):
        def record(module, args, kwargs, output):
            seen[name] = ([*args, *kwargs.values()], output)
        return record

    handles = [m.register_forward_hook(hook(n), with_kwargs=True)
               for n, m in model.named_modules() if isinstance(m, QuantModule)]
    try:
        with torch.no_grad():
            model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)))
    finally:
        for handle in handles:
            handle.remove()
    return seen


def formats(values: list[QT]) -> tuple:
    return tuple((a.bits, a.signed) for a in values if isinstance(a, QT))


def vit_expected(depth: int) -> dict[str, tuple]:
    """The operand formats of every quantized module of the ViT, from the points table
    of ``intvit.quant.config``."""
    b = BITS
    expected = {"input_act": ((None, True),), "patch_embed.proj": ((b.patch_embed, True),),
                "patch_act": (ACC,), "pos_act": ((b.patch_embed, True), (8, True)),
                "norm": ((b.att_block_out, True),), "head": ((b.block_input, True),)}
    for i in range(depth):
        stream = (b.pos_encoding if i == 0 else b.att_block_out, True)
        p = f"blocks.{i}."
        expected |= {
            p + "norm1": (stream,), p + "attn.qkv": ((b.block_input, True),),
            p + "attn.qkv_act": (ACC,),
            p + "attn.scores": ((b.attention_out, True),) * 2, p + "attn.scores_act": (ACC,),
            p + "attn.softmax": ((b.attention_out, True),),
            p + "attn.context": ((b.softmax_out, False), (b.attention_out, True)),
            p + "attn.context_act": (ACC,), p + "attn.proj": ((b.attention_out, True),),
            p + "attn.proj_act": (ACC,), p + "add1": ((b.attention_out, True), stream),
            p + "norm2": ((b.norm2_in, True),), p + "mlp.fc1": ((b.block_input, True),),
            p + "mlp.fc1_act": (ACC,), p + "mlp.act": ((b.mlp_out, True),),
            p + "mlp.fc2": ((b.mlp_out, True),), p + "mlp.fc2_act": (ACC,),
            p + "add2": ((b.mlp_out, True), (b.norm2_in, True))}
    return expected


def assert_outputs_in_their_formats(seen: dict[str, tuple[list[QT], QT]]) -> None:
    for name, (_, out) in seen.items():
        assert out.bits is not None, name
        q = out.value if not out.value.dtype.is_floating_point else to_integers(out)
        lo, hi = qrange(out.bits, out.signed)
        assert lo <= int(q.min()) and int(q.max()) <= hi, (name, out.bits, out.signed)


@pytest.mark.parametrize("mode", [Mode.FAKE, Mode.INT])
def test_vit_consumers_receive_the_formats_of_their_points(mode):
    model = calibrated(VIT)
    seen = run_recorded(model, mode)
    expected = vit_expected(VIT["depth"])
    assert seen.keys() == expected.keys()
    for name, (operands, _) in seen.items():
        assert formats(operands) == expected[name], name
    assert_outputs_in_their_formats(seen)
    modules = dict(model.named_modules())
    attn = modules["blocks.1.attn"]
    assert (attn.context.a_bits, attn.context.b_bits, attn.context.unsigned_a) == \
        (BITS.softmax_out + 1, BITS.attention_out, True)
    assert modules["head"].in_bits == BITS.block_input


@pytest.mark.parametrize("mode", [Mode.FAKE, Mode.INT])
def test_swin_formats_of_masked_logits_pooling_and_patch_merging(mode):
    model = calibrated(SWIN)
    seen = run_recorded(model, mode)
    assert_outputs_in_their_formats(seen)
    got = {name: formats(operands) for name, (operands, _) in seen.items()}
    shifted = {f"layers.0.blocks.{i}.attn.softmax": any(block.shift)
               for i, block in enumerate(model.layers[0].blocks)}
    assert sorted(shifted.values()) == [False, True]  # one plain, one shifted block
    for name, is_shifted in shifted.items():
        width = max(MASK_BITS, BITS.attention_out) if is_shifted else BITS.attention_out
        assert got[name] == ((width, True),), name
    assert got["patch_embed.norm"] == ((BITS.patch_embed, True),)
    assert got["layers.0.blocks.0.norm1"] == ((BITS.pos_encoding, True),)
    assert got["layers.1.downsample.norm"] == ((BITS.att_block_out, True),)
    assert got["layers.1.downsample.reduction"] == ((BITS.block_input, True),)
    assert got["layers.1.blocks.0.norm1"] == ((BITS.pos_encoding, True),)
    tokens = (SWIN["img_size"] // SWIN["patch_size"] // 2) ** 2
    assert got["pool_act"] == ((model._sum_bits(tokens), True),)
    assert got["layers.0.blocks.0.attn.scores_act"] == (ACC, (BITS.attention_out, True))
    assert got["head.fc"] == ((BITS.block_input, True),)


def test_float_modes_carry_no_format():
    seen = run_recorded(calibrated(VIT), Mode.FLOAT)
    assert seen and all(out.bits is None and out.scale is None for _, out in seen.values())


# --- clear errors -------------------------------------------------------------------------

def fake(module: QuantModule) -> QuantModule:
    module.mode = Mode.FAKE
    return module


def test_a_value_without_a_format_is_refused_naming_the_module():
    x = QT(torch.randn(2, 4), torch.tensor(0.1))  # a scale, but no bits
    with pytest.raises(FormatError, match="QuantLinear takes quantized values.*QT.bits is None"):
        fake(QuantLinear(4, 3))(x)
    with pytest.raises(FormatError, match="QuantMatMul takes quantized values"):
        fake(QuantMatMul())(QT(torch.zeros(2, 4), torch.tensor(0.1), 8), x.with_value(x.value.T))


class FormatDropping(nn.Module):
    """A block written wrongly: it rebuilds the QT by hand and drops its format."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.inner = mlp

    def forward(self, x: QT) -> QT:
        return self.inner(QT(x.value, x.scale))


@pytest.mark.parametrize("train", [True, False])
def test_a_block_that_drops_the_format_fails_at_the_next_module(train):
    model = calibrated(VIT)
    model.blocks[0].mlp = FormatDropping(model.blocks[0].mlp)
    model.train(train)
    with pytest.raises(FormatError, match="^blocks.0.mlp.inner.fc1: QuantLinear takes "
                                          "quantized values.*without an integer format"):
        with torch.no_grad():
            model(torch.randn(1, 3, 32, 32))


def test_a_frozen_module_refuses_another_format():
    gelu = QuantGELU("ivit", 8)
    gelu.mode = Mode.INT
    q = torch.randint(-100, 100, (3, 5))
    scale = torch.tensor(0.05)
    first = gelu(QT(q, scale, 8))
    assert (first.bits, first.signed) == (8, True)
    assert torch.equal(gelu(QT(q, scale, 8)).value, first.value)
    with pytest.raises(FormatError, match="QuantGELU was frozen for 8-bit signed operands "
                                          "and got 12-bit signed"):
        gelu(QT(q, scale, 12))
    gelu.thaw()  # a new freeze takes the new format
    assert gelu(QT(q, scale, 12)).bits == 8 and gelu.in_bits == 12


def test_a_requantizer_refuses_operands_wider_than_the_accumulator():
    act = QuantAct(8)
    act.observer.observe(torch.tensor([-1.0, 1.0]))
    act.mode = Mode.INT
    with pytest.raises(FormatError, match="QuantAct requantizes integers of at most 32 bits, "
                                          "got 33-bit signed"):
        act(QT(torch.zeros(2, dtype=torch.int64), torch.tensor(0.01), 33))
    with pytest.raises(FormatError, match="32-bit unsigned"):
        act(QT(torch.zeros(2, dtype=torch.int64), torch.tensor(0.01), 32, signed=False))
    out = act(QT(torch.tensor([-300, 300]), torch.tensor(0.01), ACC_BITS))
    assert out.value.tolist() == [-128, 127] and (out.bits, out.signed) == (8, True)


# --- FAKE mode: straight-through gradients, whatever the formats --------------------------

def exact_grid(shape, step: float, seed: int, top: int = 50) -> torch.Tensor:
    """Small integers times a power of two: sums of their products are exact floats."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(-top, top + 1, shape, generator=gen).float() * step


def test_fake_linear_gradients_are_the_straight_through_ones():
    linear = fake(QuantLinear(6, 4))
    with torch.no_grad():  # per-row maxima 127 / 128: every weight scale is 2^-7 exactly
        linear.weight.copy_(exact_grid((4, 6), 2.0 ** -7, seed=1, top=127))
        linear.weight[:, 0] = 127 / 128
        linear.bias.copy_(exact_grid((4,), 2.0 ** -4, seed=2))
    x = exact_grid((3, 6), 2.0 ** -4, seed=3).requires_grad_()
    g = exact_grid((3, 4), 1.0, seed=4, top=5)
    out = linear(QT(x, torch.tensor(2.0 ** -4), 8))
    (out.value * g).sum().backward()
    w_q, w_s = quantize_weight(linear.weight.detach(), 8)
    assert torch.equal(x.grad, g @ (w_q * w_s[:, None]))  # through the quantized weight
    assert torch.equal(linear.weight.grad, g.T @ x.detach())  # weight: identity STE
    assert torch.equal(linear.bias.grad, g.sum(0))


def test_fake_requantizer_and_kernel_gradients_are_the_straight_through_ones():
    act = fake(QuantAct(4))
    act.observer.observe(torch.tensor([-1.0, 1.0]))
    x = torch.linspace(-2, 2, 9, requires_grad=True)  # half of it saturates
    g = torch.arange(9.0)
    (act(QT(x, torch.tensor(0.5), 8)).value * g).sum().backward()
    assert torch.equal(x.grad, g)  # identity, saturated or not

    gelu = fake(QuantGELU("ivit", 8))
    y = exact_grid((4, 5), 2.0 ** -4, seed=5).requires_grad_()
    (gelu(QT(y, torch.tensor(2.0 ** -4), 8)).value * g[:5]).sum().backward()
    reference = y.detach().clone().requires_grad_()
    (F.gelu(reference) * g[:5]).sum().backward()
    assert torch.equal(y.grad, reference.grad)  # the float function's gradient
