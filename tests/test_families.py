"""The model-family registry: every family the factory, export and tests know comes from
it; adding a family is registering it; unknown names list what is registered."""

import pytest
import torch
from conftest import randomize

from intvit.engine import ProgramError, export_program
from intvit.engine.runtime import IntRuntime
from intvit.models import (FAMILIES, ModelConfig, ModelError, ModelFamily, build_quant_model,
                           create_timm, family, model_config, register_family, short_names)
from intvit.models.base import QuantModel
from intvit.models.families import unregister_family
from intvit.models.vit import QuantVisionTransformer
from intvit.quant import Mode, QuantConfig


def calibrated(cfg: ModelConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_quant_model(cfg, QuantConfig())
    randomize(model)
    model.set_mode(Mode.CALIBRATE)
    with torch.no_grad():
        model(torch.randn(8, cfg.in_chans, cfg.img_size, cfg.img_size))
    return model.eval()


def test_the_registered_families_and_names():
    assert list(FAMILIES) == ["vit", "swin"]
    assert list(short_names()) == ["deit_tiny", "deit_small", "deit_base", "vit_small",
                                   "vit_base", "swin_tiny", "swin_small"]
    for arch, fam in FAMILIES.items():
        # its integer program is its own, written beside its forward
        assert fam.model_class.lower_features is not QuantModel.lower_features, arch
        model = build_quant_model(model_config("custom", **fam.small), QuantConfig())
        assert type(model) is fam.model_class and model.cfg.arch == arch


def test_unknown_families_and_names_list_what_is_registered():
    with pytest.raises(ModelError, match="unknown model family 'convnet'; registered: vit, swin"):
        build_quant_model(ModelConfig(arch="convnet"), QuantConfig())
    with pytest.raises(ModelError, match="registered: vit, swin"):
        create_timm(ModelConfig(arch="convnet"))
    with pytest.raises(ModelError, match="known: deit_tiny, .*swin_small"):
        model_config("convnet_tiny")
    with pytest.raises(ModelError, match="has no timm twin; name one of swin_tiny, swin_small"):
        create_timm(model_config("custom", **family("swin").small))


def test_a_family_registers_once():
    with pytest.raises(ValueError, match="'vit' is already registered"):
        register_family(family("vit"))


class MadeUpViT(QuantVisionTransformer):
    """A made-up family: a ViT under another name."""


def test_adding_a_family_is_registering_it():
    """The made-up family's model brings its program (its lower methods): registering
    it is all that export needs."""
    vit = family("vit")
    made_up = ModelFamily(arch="made_up", model_class=MadeUpViT, names={},
                          timm_class=vit.timm_class, read_timm=vit.read_timm,
                          small={**vit.small, "arch": "made_up"}, shrink=vit.shrink)
    register_family(made_up)
    try:
        model = calibrated(model_config("custom", **made_up.small))
        assert type(model) is MadeUpViT
        x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        program = export_program(model)
        assert torch.equal(IntRuntime(program)(x), model.forward_int(x).value)
    finally:
        unregister_family("made_up")
    assert "made_up" not in FAMILIES


class Unlowered(QuantModel):
    """A made-up model that describes no program."""


def test_a_model_without_lower_features_is_refused_at_export():
    with pytest.raises(ProgramError, match="no lowering for Unlowered: its class defines no "
                                           r"lower_features\(b, images\)"):
        export_program(Unlowered())
