"""Weights in: local timm/DeiT files (safely), heads of another size, observers."""

import pickle

import pytest
import torch
from conftest import SMALL
from safetensors.torch import save_file

from intvit.models import create_timm, model_config
from intvit.models.checkpoint import CheckpointError, read_weights_file
from intvit.models.factory import ModelSource, make_model
from intvit.quant import QuantConfig, RangeObserver


@pytest.fixture
def timm_state(small_config):
    torch.manual_seed(0)
    return create_timm(small_config).state_dict()


@pytest.mark.parametrize("layout", ["pth", "deit_pth", "safetensors"])
def test_local_weight_files_load(layout, timm_state, tmp_path):
    path = tmp_path / f"w.{'safetensors' if layout == 'safetensors' else 'pth'}"
    if layout == "safetensors":
        save_file({k: v.contiguous() for k, v in timm_state.items()}, str(path))
    else:
        torch.save({"model": timm_state} if layout == "deit_pth" else timm_state, path)
    overrides = {k: v for k, v in SMALL.items()}
    model, _ = make_model(ModelSource("custom", weights=str(path), overrides=overrides),
                          QuantConfig())
    for key, value in timm_state.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_pickled_objects_are_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("arbitrary code ran",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": Payload()}, f)
    with pytest.raises(CheckpointError, match="refused|cannot read"):
        read_weights_file(path)


def test_classifier_of_another_size_is_replaced(timm_state, tmp_path, capsys):
    path = tmp_path / "w.pth"
    torch.save(timm_state, path)
    overrides = {**SMALL, "num_classes": 3}
    model, _ = make_model(ModelSource("custom", weights=str(path), overrides=overrides),
                          QuantConfig())
    assert model.head.weight.shape == (3, SMALL["embed_dim"])
    assert "initialized afresh" in capsys.readouterr().out
    assert torch.equal(model.blocks[0].attn.qkv.weight, timm_state["blocks.0.attn.qkv.weight"])


def test_missing_and_garbage_weight_files(tmp_path):
    with pytest.raises(CheckpointError, match="no weights file"):
        read_weights_file(tmp_path / "none.pth")
    garbage = tmp_path / "g.pth"
    garbage.write_bytes(b"not a tensor file")
    with pytest.raises(CheckpointError):
        read_weights_file(garbage)


@pytest.mark.parametrize("method", ["minmax", "ema", "percentile"])
def test_observers(method):
    obs = RangeObserver(method, momentum=0.5, percentile=99.0)
    with pytest.raises(RuntimeError, match="not calibrated"):
        obs.scale(8)
    first = torch.linspace(-1, 2, 1001)
    second = torch.linspace(-3, 1, 1001)
    obs.observe(first)
    obs.observe(second)
    low, high = float(obs.low), float(obs.high)
    if method == "minmax":
        assert (low, high) == (-3.0, 2.0)
    elif method == "ema":
        assert low == pytest.approx(0.5 * -1 + 0.5 * -3) and high == pytest.approx(1.5)
    else:  # percentile ranges sit inside the min/max ones
        assert -3.0 < low < -0.9 and 0.9 < high < 2.0
    assert float(obs.scale(8)) == pytest.approx(max(abs(low), abs(high)) / 127)
    assert float(obs.scale(8, signed=False)) == pytest.approx(high / 255)


def test_named_model_config_accepts_shape_overrides():
    cfg = model_config("deit_small", img_size=32, num_classes=10, in_chans=1)
    assert (cfg.embed_dim, cfg.img_size, cfg.num_classes, cfg.in_chans) == (384, 32, 10, 1)


def test_pretrained_weights_come_from_timm(monkeypatch):
    """--pretrained asks timm for its pretrained model (the hub or its cache) and loads
    every tensor of it; here timm's download is replaced by a model with known weights."""
    import timm

    calls = []
    real = timm.create_model

    def fake_create(name, pretrained=False, **kwargs):
        calls.append((name, pretrained))
        model = real(name, pretrained=False, **kwargs)
        torch.manual_seed(7)
        for p in model.parameters():
            p.data.normal_()
        return model

    monkeypatch.setattr(timm, "create_model", fake_create)
    model, _ = make_model(ModelSource("deit_tiny", pretrained=True,
                                      overrides={"num_classes": 10}), QuantConfig())
    assert ("deit_tiny_patch16_224", True) in calls
    reference = fake_create("deit_tiny_patch16_224", num_classes=10, img_size=224, in_chans=3)
    assert torch.equal(model.blocks[3].norm2.weight, reference.blocks[3].norm2.weight)


def test_requantized_keeps_calibrated_ranges_on_request(small_config):
    from intvit.models import build_quant_model
    from intvit.models.factory import requantized
    from intvit.quant import calibration

    model = build_quant_model(small_config, QuantConfig())
    with calibration(model), torch.no_grad():
        model(torch.randn(4, 3, 32, 32))
    kept = requantized(model, QuantConfig(gelu="ppoly", softmax="ibert"), keep_ranges=True)
    assert kept.qcfg.gelu == "ppoly"
    assert torch.equal(kept.patch_act.observer.high, model.patch_act.observer.high)
    reset = requantized(model, QuantConfig(gelu="ppoly"))
    assert not reset.patch_act.observer.ready
