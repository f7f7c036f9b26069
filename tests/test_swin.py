"""The quantized Swin: float equals timm, timm weights load strictly, calibration then
integer-only evaluation (shifted windows, relative position bias, patch merging, pooling
in integers), and QAT gradients reach every parameter."""

import pytest
import torch
from conftest import randomize
from timm.models.swin_transformer import SwinTransformer

from intvit.arith import overflow_checks
from intvit.models import (ModelError, build_quant_model, config_from_timm, create_timm,
                           load_float_weights, model_config)
from intvit.models.swin import MASK_BITS, QuantSwinTransformer
from intvit.quant import QT, Mode, QuantConfig

SMALL = dict(img_size=32, patch_size=2, embed_dim=16, depths=(2, 2), num_heads=(1, 2),
             window_size=4, num_classes=10)


def small_timm(**overrides) -> SwinTransformer:
    model = SwinTransformer(**(SMALL | overrides)).eval()
    randomize(model)
    return model


def quant_from(timm_model: torch.nn.Module, qcfg: QuantConfig | None = None
               ) -> QuantSwinTransformer:
    model = QuantSwinTransformer(config_from_timm(timm_model), qcfg or QuantConfig())
    load_float_weights(model, timm_model.state_dict())
    return model


def images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def shifted_blocks(model: QuantSwinTransformer) -> list:
    return [b for stage in model.layers for b in stage.blocks if any(b.shift)]


@pytest.fixture(scope="module")
def calibrated():
    """A small Swin calibrated on one batch, with its timm twin and a held-out batch."""
    torch.manual_seed(0)
    timm_model = small_timm()
    model = quant_from(timm_model)
    model.set_mode(Mode.CALIBRATE)
    with torch.no_grad():
        model(images(32, seed=1))
    model.eval()
    return timm_model, model, images(16, seed=2)


@pytest.mark.parametrize("overrides", [
    {},                                                    # windows tile every stage
    dict(img_size=24, window_size=5),                      # padded windows (12 -> 15)
    dict(img_size=28, patch_size=4, window_size=3, depths=(2, 2, 2), num_heads=(1, 2, 2)),
])                                                         # 7x7 grid: odd patch merging
def test_float_mode_equals_timm(overrides):
    timm_model = small_timm(**overrides)
    model = quant_from(timm_model)
    model.set_mode(Mode.FLOAT)
    assert shifted_blocks(model), "no block shifts its windows: the test misses SW-MSA"
    x = images(4, size=timm_model.patch_embed.img_size[0])
    with torch.no_grad():
        diff = (model(x) - timm_model(x)).abs().max().item()
    assert diff <= 1e-4


@pytest.mark.parametrize("name", ["swin_tiny", "swin_small"])
def test_full_size_float_mode_equals_timm(name):
    torch.manual_seed(0)
    cfg = model_config(name)
    timm_model = create_timm(cfg).eval()
    model = build_quant_model(cfg, QuantConfig())
    assert isinstance(model, QuantSwinTransformer)
    load_float_weights(model, timm_model.state_dict())
    model.set_mode(Mode.FLOAT)
    x = images(1, size=224)
    with torch.no_grad():
        diff = (model(x) - timm_model(x)).abs().max().item()
    assert diff <= 1e-4


def test_timm_weights_load_strictly_and_derived_buffers_are_rebuilt():
    timm_model = small_timm(img_size=24, window_size=5)
    model = quant_from(timm_model)
    ours = dict(model.named_parameters())
    theirs = timm_model.state_dict()
    assert set(ours) == {k for k, v in theirs.items() if k in dict(timm_model.named_parameters())}
    for name, p in ours.items():
        assert torch.equal(p, theirs[name]), name
    for stage, timm_stage in zip(model.layers, timm_model.layers):
        for block, timm_block in zip(stage.blocks, timm_stage.blocks):
            assert block.window == timm_block.window_size
            assert block.shift == timm_block.shift_size
            assert torch.equal(block.attn.relative_position_index,
                               timm_block.attn.relative_position_index)
            if timm_block.attn_mask is None:
                assert block.attn_mask is None
            else:
                assert torch.equal(block.attn_mask, timm_block.attn_mask)
    assert not any(k.endswith(("relative_position_index", "attn_mask"))
                   for k in model.state_dict())
    state = dict(theirs)
    del state["layers.1.downsample.reduction.weight"]
    with pytest.raises(ModelError, match="missing: layers.1.downsample.reduction.weight"):
        load_float_weights(model, state)
    with pytest.raises(ModelError, match="unused: head.weight"):
        load_float_weights(model, dict(theirs) | {"head.weight": torch.zeros(1)})


def test_int_mode_is_integer_only_and_fits_32_bits(calibrated):
    _, model, x = calibrated
    model.eval()
    assert model.mode is Mode.INT
    with torch.no_grad(), overflow_checks() as log:
        logits = model.forward_int(x)
        floats = model(x)
    assert logits.value.dtype == torch.int64
    assert int(logits.value.abs().max()) < 2 ** 31
    assert logits.scale.shape == (10,)
    assert torch.equal(floats, logits.value.float() * logits.scale.float())
    assert "avgpool.sum" in log.declared and "attention.acc" in log.declared
    with pytest.raises(RuntimeError, match="eval mode"):
        model.train().forward_int(x)
    model.eval()


def test_int_mode_agrees_with_float(calibrated):
    timm_model, model, x = calibrated
    model.eval()
    with torch.no_grad():
        int_logits = model(x)
        model.set_mode(Mode.FLOAT)
        float_logits = model(x)
        model.eval()
        assert torch.allclose(float_logits, timm_model(x), atol=1e-4)
    agree = (int_logits.argmax(1) == float_logits.argmax(1)).float().mean().item()
    rel = ((int_logits - float_logits).norm() / float_logits.norm()).item()
    assert agree >= 0.8
    assert rel < 0.15


def test_shifted_windows_mask_and_bias_in_integers(calibrated):
    _, model, x = calibrated
    model.eval()
    block = shifted_blocks(model)[0]
    attn = block.attn
    seen: dict[str, QT] = {}
    hooks = [
        attn.scores_act.register_forward_pre_hook(
            lambda m, args, kwargs: seen.__setitem__("bias", kwargs["residual"]),
            with_kwargs=True),
        attn.softmax.register_forward_pre_hook(lambda m, args: seen.__setitem__("logits", args[0])),
        attn.context.register_forward_pre_hook(lambda m, args: seen.__setitem__("probs", args[0])),
    ]
    try:
        with torch.no_grad(), overflow_checks():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    bias, logits, probs = seen["bias"], seen["logits"], seen["probs"]
    # the relative position bias: integers at the logits' own scale
    assert bias.value.dtype == torch.int64 and torch.equal(bias.scale, attn.scores_act.scale())
    # the mask: masked logits at the softmax's most negative input, masked probabilities 0
    n_win, n = block.attn_mask.shape[0], attn.area
    masked = (block.attn_mask < 0)[None, :, None].expand(
        x.shape[0], n_win, attn.heads, n, n).reshape(logits.value.shape)
    assert masked.any() and (~masked).any()
    assert logits.value.dtype == torch.int64 and probs.value.dtype == torch.int64
    assert (logits.value[masked] == -2 ** (MASK_BITS - 1)).all()
    assert logits.value[~masked].abs().max() <= 2 ** (attn.scores_act.bits - 1)
    assert (probs.value[masked] == 0).all()
    # the unmasked probabilities of a row carry (about) all of its mass
    one = 1.0 / float(probs.scale)
    row_sums = probs.value.sum(-1).double() / one
    assert (row_sums - 1).abs().max() < 0.1


def test_fake_mode_gradients_reach_every_parameter():
    model = quant_from(small_timm())
    model.set_mode(Mode.CALIBRATE)
    with torch.no_grad():
        model(images(8, seed=1))
    model.train()
    assert model.mode is Mode.FAKE
    out = model(images(4, seed=3))
    out.logsumexp(dim=1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert any(n.endswith("relative_position_bias_table") for n, _ in model.named_parameters())


def test_quantization_off_runs_float_in_every_mode():
    timm_model = small_timm()
    model = quant_from(timm_model, QuantConfig(enabled=False))
    x = images(2)
    with torch.no_grad():
        expected = timm_model(x)
        for mode in (lambda: model.eval(), lambda: model.train()):
            mode()
            assert model.mode is Mode.FLOAT
            assert torch.allclose(model(x), expected, atol=1e-5)
