"""Quantized ViT/DeiT against timm: weights load right, quantization off reproduces
timm, the evaluated model runs on integers only and within its widths, gradients reach
every parameter whatever the approximation."""

import pytest
import torch
from conftest import SMALL, randomize, small_model

from intvit.arith import overflow_checks, qrange
from intvit.models import (ModelError, build_quant_model, create_timm, load_float_weights,
                           model_config)
from intvit.quant import QT, BitWidths, Mode, QuantConfig, QuantModule, calibrate, calibration

VIT_NAMES = ["deit_tiny", "deit_small", "deit_base", "vit_small", "vit_base"]
FAMILIES = [dict(gelu=f, softmax=f, layernorm=("ivit" if f == "ppoly" else f))
            for f in ("float", "ivit", "ibert", "ppoly")]


def calibrated(model, images):
    with calibration(model), torch.no_grad():
        model(images)
    return model


@pytest.mark.parametrize("name", VIT_NAMES)
def test_named_models_match_timm_configs(name):
    cfg = model_config(name)
    timm_cfg = model_config(f"{cfg.timm_name}")
    assert cfg == timm_cfg
    expected = {"deit_tiny": (192, 3), "deit_small": (384, 6), "deit_base": (768, 12),
                "vit_small": (384, 6), "vit_base": (768, 12)}[name]
    assert (cfg.embed_dim, cfg.num_heads, cfg.depth) == (*expected, 12)


@pytest.mark.parametrize("name", VIT_NAMES)
def test_full_size_model_without_quantization_reproduces_timm(name):
    """One test per full-size model: same weights, same logits (<= 1e-4)."""
    cfg = model_config(name)
    torch.manual_seed(0)
    reference = create_timm(cfg).eval()
    model = build_quant_model(cfg, QuantConfig(enabled=False))
    load_float_weights(model, reference.state_dict())
    model.eval()
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (model(images) - reference(images)).abs().max() <= 1e-4


def test_full_size_deit_tiny_runs_on_integers_within_32_bits():
    model = build_quant_model(model_config("deit_tiny"), QuantConfig())
    randomize(model)
    calibrated(model, torch.randn(2, 3, 224, 224)).eval()
    with overflow_checks(), torch.no_grad():
        logits = model.forward_int(torch.randn(1, 3, 224, 224))
    assert logits.value.dtype == torch.int64
    lo, hi = qrange(32)
    assert lo <= int(logits.value.min()) and int(logits.value.max()) <= hi


@pytest.mark.parametrize("quant", FAMILIES, ids=lambda q: q["gelu"])
def test_small_model_modes(quant, small_config):
    reference = create_timm(small_config).eval()
    randomize(reference)
    model = build_quant_model(small_config, QuantConfig(**quant))
    load_float_weights(model, reference.state_dict())
    images = torch.randn(16, 3, 32, 32)
    calibrated(model, images)

    model.train()
    assert model.mode is Mode.FAKE
    model(images).logsumexp(dim=1).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name

    model.eval()
    integer_outputs = []
    hooks = [m.register_forward_hook(lambda m, i, out: integer_outputs.append((m, out)))
             for m in model.modules() if isinstance(m, QuantModule)]
    with overflow_checks(), torch.no_grad():
        logits = model(images)
    for h in hooks:
        h.remove()
    for module, out in integer_outputs:
        assert isinstance(out, QT) and out.value.dtype == torch.int64, type(module).__name__
    with torch.no_grad():
        float_logits = reference(images)
    agree = (logits.argmax(1) == float_logits.argmax(1)).float().mean()
    assert agree >= 0.75


def test_weight_loading_names_what_is_wrong(small_config):
    model = build_quant_model(small_config, QuantConfig())
    state = create_timm(small_config).state_dict()
    load_float_weights(model, state)
    broken = dict(state)
    del broken["blocks.1.norm2.bias"]
    with pytest.raises(ModelError, match="missing: blocks.1.norm2.bias"):
        load_float_weights(model, broken)
    with pytest.raises(ModelError, match="unused: extra.weight"):
        load_float_weights(model, state | {"extra.weight": torch.zeros(1)})
    with pytest.raises(ModelError, match="wrong shape: head.weight"):
        load_float_weights(model, state | {"head.weight": torch.zeros(3, 32)})


def test_loaded_weights_are_the_given_ones(small_config):
    """Every parameter, LayerNorm weights included, holds the loaded value."""
    state = create_timm(small_config).state_dict()
    state = {k: v + 0.5 for k, v in state.items()}
    model = build_quant_model(small_config, QuantConfig())
    load_float_weights(model, state)
    for name, value in model.state_dict().items():
        if name in state:
            assert torch.equal(value, state[name]), name


def test_timm_initialization_is_too_small_for_shiftgelu_and_says_what_fits(small_config):
    """timm's init gives activations so small that ShiftGELU's n=23 cannot fit 32 bits;
    the error names the n that does (documented limitation of the ivit family)."""
    model = calibrated(build_quant_model(small_config, QuantConfig()), torch.randn(4, 3, 32, 32))
    with pytest.raises(ValueError, match=r"ivit_n_\d+"):
        model.eval()(torch.randn(1, 3, 32, 32))


def test_uncalibrated_integer_model_says_so():
    model = small_model().eval()
    with pytest.raises(RuntimeError, match="intvit calibrate"):
        model(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("overrides,needle", [
    (dict(img_size=30), "not a multiple"),
    (dict(embed_dim=30, num_heads=4), "not divisible"),
])
def test_bad_custom_configs(overrides, needle):
    with pytest.raises(ValueError, match=needle):
        model_config("custom", **{**SMALL, **overrides})


def test_unknown_and_fixed_models():
    with pytest.raises(ModelError, match="known: deit_tiny"):
        model_config("deit_huge")
    with pytest.raises(ModelError, match="custom only"):
        model_config("deit_tiny", depth=3)


def test_calibrate_counts_batches_and_rejects_empty_data():
    model = small_model()
    batches = [(torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))] * 5
    assert calibrate(model, batches, 3, progress=False) == 3
    with pytest.raises(ValueError, match="empty"):
        calibrate(small_model(), [], 3, progress=False)


def test_sixteen_bit_points_run(small_config):
    model = build_quant_model(small_config, QuantConfig(bits=BitWidths.parse("8,8,8,8,8,8,16,16")))
    randomize(model)
    calibrated(model, torch.randn(8, 3, 32, 32)).eval()
    with overflow_checks(), torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
