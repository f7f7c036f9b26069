"""ViT and DeiT, quantized: the same architecture and parameter names as timm's
``VisionTransformer`` (class token, learned position embedding, pre-norm blocks, token
pooling), built from :mod:`intvit.quant` modules so one definition runs float, QAT and
integer-only evaluation."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..arith import qrange
from ..quant import QT, Mode, QuantConfig
from ..quant.modules import quantize_tensor
from .blocks import Attention, Block, LayerMaker, PatchModel
from .config import ModelConfig
from .families import ModelError, ModelFamily, register_family
from .program_builder import ProgramBuilder

POS_EMBED_BITS = 8  # the position embedding's integers (signed), at a scale of its own


class QuantVisionTransformer(PatchModel):
    """timm-compatible ViT/DeiT. ``forward`` returns float logits in every mode; in
    INT mode they are the integer logits times their scale (:meth:`forward_int`)."""

    def __init__(self, cfg: ModelConfig, qcfg: QuantConfig) -> None:
        super().__init__()
        self.cfg, self.qcfg = cfg, qcfg
        make = LayerMaker(qcfg, cfg.norm_eps)
        dim, grid = cfg.embed_dim, cfg.img_size // cfg.patch_size
        self.build_patch_embedding(cfg, dim, make)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid + 1, dim) * 0.02)
        self.pos_act = make.act(qcfg.bits.pos_encoding)
        self.blocks = nn.ModuleList(
            Block(dim, Attention(dim, cfg.num_heads, cfg.qkv_bias, make), cfg.mlp_ratio, make)
            for _ in range(cfg.depth))
        self.norm = make.norm(dim)
        self.head = make.linear(dim, cfg.num_classes)
        self.set_mode(Mode.FLOAT if not qcfg.enabled else Mode.FAKE)

    def class_token(self, patches: QT, mode: Mode) -> torch.Tensor:
        """The (1, 1, D) class token; quantized at the patches' scale and width in
        FAKE/INT modes."""
        if mode in (Mode.FAKE, Mode.INT):
            return quantize_tensor(self.cls_token, patches.scale, patches.bits, mode).value
        return self.cls_token

    def tokens(self, patches: QT) -> QT:
        """Prepend the class token (at the patches' scale and format) and add the
        position embedding (:meth:`quantized_pos_embed`), requantizing the sum. INT mode
        freezes both integer tensors on the first call."""
        if self.mode is Mode.INT:
            if not self.is_frozen:
                pos = self.quantized_pos_embed()
                self.freeze(cls=self.class_token(patches, Mode.INT), pos=pos.value,
                            pos_scale=pos.scale)
            cls = self.frozen_cls
            pos = QT(self.frozen_pos, self.frozen_pos_scale, POS_EMBED_BITS)
        else:
            cls = self.class_token(patches, self.mode)
            pos = QT(self.pos_embed) if self.mode is not Mode.FAKE else \
                self.quantized_pos_embed()
        cls = cls.expand(patches.value.shape[0], -1, -1)
        tokens = patches.with_value(torch.cat([cls, patches.value], dim=1))
        return self.pos_act(tokens, residual=pos)

    def lower_tokens(self, b: ProgramBuilder, patches: str) -> str:
        cls = b.constant("cls_token", self.frozen_cls)
        tokens = b.concat([b.broadcast(cls, patches), patches], axis=1)
        return b.act(self.pos_act, tokens, frozen_residual=True)  # the position embedding

    def quantized_pos_embed(self) -> QT:
        """The position embedding as ``POS_EMBED_BITS`` integers (FAKE: their values) at
        its own scale."""
        top = qrange(POS_EMBED_BITS)[1]
        pos_scale = (self.pos_embed.detach().abs().max() / top).clamp_min(1e-12)
        return quantize_tensor(self.pos_embed, pos_scale, POS_EMBED_BITS, self.mode)

    def forward_features(self, images: torch.Tensor) -> QT:
        x = self.tokens(self.patch_tokens(images))
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x.with_value(x.value[:, 0])

    def lower_features(self, b: ProgramBuilder, images: str) -> str:
        x = self.lower_tokens(b, self.lower_patch_tokens(b, images))
        for block in self.blocks:
            x = block.lower(b, x)
        return b.take(b.kernel(self.norm, x), 1, 0)

    def classifier(self) -> nn.Module:
        return self.head


def _timm_vit() -> type[nn.Module]:
    from timm.models.vision_transformer import VisionTransformer
    return VisionTransformer


def _read_timm_vit(model: nn.Module) -> dict:
    if model.global_pool != "token" or model.cls_token is None or model.no_embed_class \
            or model.reg_token is not None:
        raise ModelError("intvit supports class-token ViTs (ViT, DeiT); this model pools "
                         f"with {model.global_pool!r}")
    block = model.blocks[0]
    return dict(embed_dim=model.embed_dim, depth=len(model.blocks),
                num_heads=block.attn.num_heads, norm_eps=block.norm1.eps,
                mlp_ratio=block.mlp.fc1.out_features / block.mlp.fc1.in_features,
                qkv_bias=block.attn.qkv.bias is not None)


def _custom_timm_vit(cfg: ModelConfig) -> nn.Module:
    return _timm_vit()(img_size=cfg.img_size, patch_size=cfg.patch_size,
                       in_chans=cfg.in_chans, num_classes=cfg.num_classes,
                       embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads,
                       mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias)


register_family(ModelFamily(
    arch="vit", model_class=QuantVisionTransformer,
    names={"deit_tiny": "deit_tiny_patch16_224", "deit_small": "deit_small_patch16_224",
           "deit_base": "deit_base_patch16_224", "vit_small": "vit_small_patch16_224",
           "vit_base": "vit_base_patch16_224"},
    timm_class=_timm_vit, read_timm=_read_timm_vit, custom_timm=_custom_timm_vit,
    small=dict(arch="vit", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10),
    shrink=lambda cfg: replace(cfg, img_size=32, depth=1)))
