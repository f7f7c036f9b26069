"""ViT and DeiT, quantized: the same architecture and parameter names as timm's
``VisionTransformer`` (class token, learned position embedding, pre-norm blocks, token
pooling), built from :mod:`intvit.quant` modules so one definition runs float, QAT and
integer-only evaluation."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..arith import qrange
from ..quant import (QT, Mode, QuantAct, QuantConfig, QuantGELU, QuantLayerNorm,
                     QuantLinear, QuantMatMul, QuantPatchConv, QuantSoftmax)
from ..quant.modules import quantize_tensor
from .base import QuantModel
from .config import ModelConfig
from .families import ModelError, ModelFamily, register_family


class _Builder:
    """Creates quantized modules with the config's observer settings."""

    def __init__(self, q: QuantConfig, eps: float) -> None:
        self.q, self.eps = q, eps

    def act(self, bits: int, signed: bool = True) -> QuantAct:
        return QuantAct(bits, signed, self.q.observer, self.q.ema_momentum, self.q.percentile)

    def norm(self, dim: int, in_bits: int) -> QuantLayerNorm:
        return QuantLayerNorm(dim, self.q.layernorm, in_bits, self.q.bits.block_input, self.eps,
                              self.q.observer, self.q.ema_momentum, self.q.percentile)

    def linear(self, i: int, o: int, in_bits: int, bias: bool = True) -> QuantLinear:
        return QuantLinear(i, o, bias, self.q.weight_bits, in_bits)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool, make: _Builder) -> None:
        super().__init__()
        bits = make.q.bits
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = make.linear(dim, 3 * dim, bits.block_input, qkv_bias)
        self.qkv_act = make.act(bits.attention_out)
        self.scores = QuantMatMul(bits.attention_out, bits.attention_out)
        self.scores_act = make.act(bits.attention_out)
        self.softmax = QuantSoftmax(make.q.softmax, bits.attention_out, bits.softmax_out)
        self.context = QuantMatMul(bits.softmax_out, bits.attention_out, unsigned_a=True)
        self.context_act = make.act(bits.attention_out)
        self.proj = make.linear(dim, dim, bits.attention_out)
        self.proj_act = make.act(bits.attention_out)

    def forward(self, x: QT) -> QT:
        b, n, c = x.value.shape
        qkv = self.qkv_act(self.qkv(x))
        parts = qkv.value.reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = (QT(t, qkv.scale) for t in parts.unbind(0))
        scores = self.scores(q, QT(k.value.transpose(-2, -1), k.scale), self.head_dim ** -0.5)
        attn = self.softmax(self.scores_act(scores))
        ctx = self.context_act(self.context(attn, v))
        ctx = QT(ctx.value.transpose(1, 2).reshape(b, n, c), ctx.scale)
        return self.proj_act(self.proj(ctx))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, make: _Builder) -> None:
        super().__init__()
        bits = make.q.bits
        self.fc1 = make.linear(dim, hidden, bits.block_input)
        self.fc1_act = make.act(bits.mlp_out)
        self.act = QuantGELU(make.q.gelu, bits.mlp_out, bits.mlp_out)
        self.fc2 = make.linear(hidden, dim, bits.mlp_out)
        self.fc2_act = make.act(bits.mlp_out)

    def forward(self, x: QT) -> QT:
        return self.fc2_act(self.fc2(self.act(self.fc1_act(self.fc1(x)))))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, qkv_bias: bool,
                 in_bits: int, make: _Builder) -> None:
        super().__init__()
        bits = make.q.bits
        self.norm1 = make.norm(dim, in_bits)
        self.attn = Attention(dim, heads, qkv_bias, make)
        self.add1 = make.act(bits.norm2_in)
        self.norm2 = make.norm(dim, bits.norm2_in)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), make)
        self.add2 = make.act(bits.att_block_out)

    def forward(self, x: QT) -> QT:
        x = self.add1(self.attn(self.norm1(x)), residual=x)
        return self.add2(self.mlp(self.norm2(x)), residual=x)


class QuantVisionTransformer(QuantModel):
    """timm-compatible ViT/DeiT. ``forward`` returns float logits in every mode; in
    INT mode they are the integer logits times their scale (:meth:`forward_int`)."""

    def __init__(self, cfg: ModelConfig, qcfg: QuantConfig) -> None:
        super().__init__()
        self.cfg, self.qcfg = cfg, qcfg
        make = _Builder(qcfg, cfg.norm_eps)
        bits = qcfg.bits
        dim, grid = cfg.embed_dim, cfg.img_size // cfg.patch_size
        self.input_act = make.act(bits.patch_embed)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = QuantPatchConv(cfg.in_chans, dim, cfg.patch_size,
                                               qcfg.weight_bits, bits.patch_embed)
        self.patch_act = make.act(bits.patch_embed)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid + 1, dim) * 0.02)
        self.pos_act = make.act(bits.pos_encoding)
        self.blocks = nn.ModuleList(
            Block(dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias,
                  bits.pos_encoding if i == 0 else bits.att_block_out, make)
            for i in range(cfg.depth))
        self.norm = make.norm(dim, bits.att_block_out if cfg.depth else bits.pos_encoding)
        self.head = make.linear(dim, cfg.num_classes, bits.block_input)
        self.set_mode(Mode.FLOAT if not qcfg.enabled else Mode.FAKE)

    def class_token(self, scale: torch.Tensor | None, mode: Mode) -> torch.Tensor:
        """The (1, 1, D) class token; quantized at the patch scale in FAKE/INT modes."""
        if mode in (Mode.FAKE, Mode.INT):
            return quantize_tensor(self.cls_token, scale, self.patch_act.bits, mode)
        return self.cls_token

    def _tokens(self, patches: QT) -> QT:
        """Prepend the class token (at the patch scale) and add the position embedding
        (an 8-bit tensor of its own scale), requantizing the sum. INT mode freezes both
        integer tensors on the first call."""
        if self.mode is Mode.INT:
            if not self.is_frozen:
                pos = self.quantized_pos_embed()
                self.freeze(cls=self.class_token(patches.scale, Mode.INT), pos=pos.value,
                            pos_scale=pos.scale)
            cls, pos = self.frozen_cls, QT(self.frozen_pos, self.frozen_pos_scale)
        else:
            cls = self.class_token(patches.scale, self.mode)
            pos = QT(self.pos_embed) if self.mode is not Mode.FAKE else \
                self.quantized_pos_embed()
        cls = cls.expand(patches.value.shape[0], -1, -1)
        tokens = QT(torch.cat([cls, patches.value], dim=1), patches.scale)
        return self.pos_act(tokens, residual=pos)

    def quantized_pos_embed(self) -> QT:
        """The position embedding as 8-bit integers (FAKE: their values) and its scale."""
        pos_scale = (self.pos_embed.detach().abs().max() / qrange(8)[1]).clamp_min(1e-12)
        return QT(quantize_tensor(self.pos_embed, pos_scale, 8, self.mode), pos_scale)

    def forward_features(self, images: torch.Tensor) -> QT:
        x = self.input_act(QT(images))
        x = self.patch_act(self.patch_embed.proj(x))
        x = self._tokens(x)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return QT(x.value[:, 0], x.scale)

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
