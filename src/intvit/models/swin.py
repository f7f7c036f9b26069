"""Swin Transformer, quantized: the same architecture and parameter names as timm's
``SwinTransformer`` (patch embedding with LayerNorm, stages of window-attention blocks
whose odd blocks shift their windows, patch merging between stages, final LayerNorm,
average pooling, linear head), built from :mod:`intvit.quant` modules so one definition
runs float, QAT and integer-only evaluation.

Where the eight quantization points of :mod:`intvit.quant.config` sit in a Swin (Swin has
no position embedding and no class token; ``pos_encoding`` stands for the residual stream
entering each stage, the place ViT's position-embedded tokens hold):

| point          | Swin activations                                                     |
|----------------|----------------------------------------------------------------------|
| patch_embed    | the input image and the patch-embedding convolution output           |
| pos_encoding   | the stream entering a stage: ``patch_embed.norm`` output (stage 0), each patch merging's ``reduction`` output (later stages) |
| block_input    | every LayerNorm output that feeds a linear layer (``norm1``, ``norm2``, ``downsample.norm``, the final ``norm``) and the average-pooled features (the head input) |
| attention_out  | q, k, v, the attention logits (scores plus relative position bias), the attention context, the projection |
| softmax_out    | the attention probabilities (unsigned)                               |
| mlp_out        | fc1 output (GELU input, and GELU output at its scale) and fc2 output |
| norm2_in       | the residual stream after window attention (input of norm2)         |
| att_block_out  | the residual stream after the MLP (block output, input of the next norm1, of patch merging's norm or of the final norm) |

Integer-only details (``Mode.INT``; ``Mode.FAKE`` computes the same integers as float
values with straight-through gradients):

* **Relative position bias.** The learned table is quantized (per step in QAT, frozen
  once in eval mode, with the window mask) at the scale of the logits' requantizer (``attn.scores_act``) and added there as its residual:
  ``logits = sat(requantize(q k^T) + q_bias)``. Calibration records the range of
  ``scores + bias``.
* **Shifted-window mask.** Float modes add timm's ``-100`` mask after the logits'
  requantizer (so calibration sees the unmasked range). In FAKE/INT the masked logits
  are set to ``-2^15``, the most negative value of the 16-bit input that a shifted
  block's softmax reads (unmasked logits stay ``attention_out`` wide), so the integer
  exponential saturates at its floor; the masked probabilities are then set to 0, as
  ``e^-100`` is in float.
* **Cyclic shift, window partition/reverse, padding, patch-merging concat** are index
  moves (``torch.roll``, reshapes, zero padding) on integers of one per-tensor scale.
* **Average pooling** sums the final LayerNorm's integers over the tokens and hands the
  sum, at scale ``s / N``, to a requantizer (``pool_act``): the ``1/N`` is folded into
  its dyadic multiplier.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ..arith import declare, qrange, signed_bits
from ..quant import (QT, Mode, QuantConfig, QuantLayerNorm, QuantMatMul, QuantPatchConv,
                     QuantSoftmax)
from ..quant.modules import FrozenConstants, quantize_tensor
from .base import QuantModel
from .config import ModelConfig
from .families import ModelFamily, register_family
from .vit import Mlp, _Builder

# Input width of a shifted block's softmax: room for the masked logits' sentinel.
MASK_BITS = 16
# timm's additive mask value (float modes).
FLOAT_MASK = -100.0


class _SwinBuilder(_Builder):
    """ViT's builder, with LayerNorms whose output point can be chosen."""

    def norm(self, dim: int, in_bits: int, out_bits: int | None = None) -> QuantLayerNorm:
        out = self.q.bits.block_input if out_bits is None else out_bits
        return QuantLayerNorm(dim, self.q.layernorm, in_bits, out, self.eps,
                              self.q.observer, self.q.ema_momentum, self.q.percentile)


def relative_position_index(win_h: int, win_w: int) -> torch.Tensor:
    """timm's pair-wise relative position index of a window: (Wh*Ww, Wh*Ww)."""
    coords = torch.stack(torch.meshgrid(torch.arange(win_h), torch.arange(win_w),
                                        indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += win_h - 1
    rel[:, :, 1] += win_w - 1
    rel[:, :, 0] *= 2 * win_w - 1
    return rel.sum(-1)


def window_partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, Wh * Ww, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window[0], window[0], w // window[1], window[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window[0] * window[1], c)


def window_reverse(windows: torch.Tensor, window: tuple[int, int], h: int, w: int
                   ) -> torch.Tensor:
    """(B * nW, Wh * Ww, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // window[0], w // window[1], window[0], window[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def shifted_window_mask(resolution: tuple[int, int], window: tuple[int, int],
                        shift: tuple[int, int]) -> torch.Tensor:
    """timm's SW-MSA mask: (nW, N, N), 0 within a region and -100 across regions."""
    h = -(-resolution[0] // window[0]) * window[0]
    w = -(-resolution[1] // window[1]) * window[1]
    img = torch.zeros(1, h, w, 1)
    count = 0
    for hs in ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None)):
        for ws in ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None)):
            img[:, hs[0]:hs[1], ws[0]:ws[1], :] = count
            count += 1
    regions = window_partition(img, window).squeeze(-1)  # nW, N
    diff = regions[:, None, :] - regions[:, :, None]
    return torch.where(diff != 0, FLOAT_MASK, 0.0)


class WindowAttention(FrozenConstants):
    """W-MSA / SW-MSA with a learned relative position bias (timm's names). INT mode
    freezes the integer bias and the boolean window mask on the first call."""

    def __init__(self, dim: int, heads: int, window: tuple[int, int], qkv_bias: bool,
                 shifted: bool, make: _Builder) -> None:
        super().__init__()
        bits = make.q.bits
        self.heads, self.head_dim = heads, dim // heads
        self.window, self.area = window, window[0] * window[1]
        self.relative_position_bias_table = nn.Parameter(
            torch.empty((2 * window[0] - 1) * (2 * window[1] - 1), heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index",
                             relative_position_index(*window), persistent=False)
        self.qkv = make.linear(dim, 3 * dim, bits.block_input, qkv_bias)
        self.qkv_act = make.act(bits.attention_out)
        self.scores = QuantMatMul(bits.attention_out, bits.attention_out)
        self.scores_act = make.act(bits.attention_out)
        softmax_in = max(MASK_BITS, bits.attention_out) if shifted else bits.attention_out
        self.softmax = QuantSoftmax(make.q.softmax, softmax_in, bits.softmax_out)
        self.context = QuantMatMul(bits.softmax_out, bits.attention_out, unsigned_a=True)
        self.context_act = make.act(bits.attention_out)
        self.proj = make.linear(dim, dim, bits.attention_out)
        self.proj_act = make.act(bits.attention_out)

    def _bias(self, mode: Mode) -> QT:
        """The relative position bias (heads, N, N): float, or quantized at the scale
        of the logits' requantizer."""
        if mode is Mode.INT and self.is_frozen:
            return QT(self.frozen_bias, self.frozen_bias_scale)
        table = self.relative_position_bias_table
        if mode in (Mode.FAKE, Mode.INT):
            scale = self.scores_act.scale()
            table = quantize_tensor(table, scale, self.scores_act.bits, mode)
        else:
            scale = None
        bias = table[self.relative_position_index.reshape(-1)]
        return QT(bias.reshape(self.area, self.area, -1).permute(2, 0, 1), scale)

    def _mask(self, logits: QT, mask: torch.Tensor | None) -> tuple[QT, torch.Tensor | None]:
        """Apply the shifted-window mask (nW, N, N) to the logits (B*nW, heads, N, N);
        also returns the boolean mask broadcast to the logits (None in float modes)."""
        if mask is None:
            return logits, None
        n_win, n = mask.shape[0], self.area
        x = logits.value.reshape(-1, n_win, self.heads, n, n)
        if self.scores_act.mode in (Mode.FLOAT, Mode.CALIBRATE):
            return QT((x + mask[None, :, None]).reshape(-1, self.heads, n, n)), None
        region = self.frozen_region if self.is_frozen else (mask < 0)[None, :, None]
        masked = region.expand_as(x).reshape(-1, self.heads, n, n)
        sentinel = qrange(self.softmax.in_bits)[0]
        if self.scores_act.mode is Mode.INT:
            fill = torch.full_like(logits.value, sentinel)
        else:
            fill = torch.full_like(logits.value, sentinel * float(logits.scale))
        return QT(torch.where(masked, fill, logits.value), logits.scale), masked

    def forward(self, x: QT, mask: torch.Tensor | None = None) -> QT:
        b, n, c = x.value.shape
        mode = self.scores_act.mode
        qkv = self.qkv_act(self.qkv(x))
        parts = qkv.value.reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = (QT(t, qkv.scale) for t in parts.unbind(0))
        scores = self.scores(q, QT(k.value.transpose(-2, -1), k.scale), self.head_dim ** -0.5)
        bias = self._bias(mode)
        if mode is Mode.INT and not self.is_frozen:
            region = None if mask is None else (mask < 0)[None, :, None]
            self.freeze(bias=bias.value, bias_scale=bias.scale, region=region)
        logits, masked = self._mask(self.scores_act(scores, residual=bias), mask)
        attn = self.softmax(logits)
        if masked is not None:
            attn = QT(torch.where(masked, torch.zeros_like(attn.value), attn.value), attn.scale)
        ctx = self.context_act(self.context(attn, v))
        ctx = QT(ctx.value.transpose(1, 2).reshape(b, n, c), ctx.scale)
        return self.proj_act(self.proj(ctx))


class SwinBlock(nn.Module):
    """Pre-norm block: (shifted) window attention, then the MLP; timm's names."""

    def __init__(self, dim: int, resolution: tuple[int, int], heads: int, window: int,
                 shift: bool, mlp_ratio: float, qkv_bias: bool, in_bits: int,
                 make: _Builder) -> None:
        super().__init__()
        bits = make.q.bits
        self.resolution = resolution
        # timm: a window no smaller than the feature map covers it, unshifted
        self.window = tuple(min(r, window) for r in resolution)
        self.shift = tuple(0 if r <= window or not shift else window // 2
                           for r in resolution)
        self.norm1 = make.norm(dim, in_bits)
        self.attn = WindowAttention(dim, heads, self.window, qkv_bias, any(self.shift), make)
        self.add1 = make.act(bits.norm2_in)
        self.norm2 = make.norm(dim, bits.norm2_in)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), make)
        self.add2 = make.act(bits.att_block_out)
        mask = shifted_window_mask(resolution, self.window, self.shift) if any(self.shift) \
            else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def _attn(self, x: QT) -> QT:
        b, h, w, c = x.value.shape
        t = x.value
        if any(self.shift):
            t = torch.roll(t, shifts=(-self.shift[0], -self.shift[1]), dims=(1, 2))
        pad_h = (self.window[0] - h % self.window[0]) % self.window[0]
        pad_w = (self.window[1] - w % self.window[1]) % self.window[1]
        if pad_h or pad_w:
            t = F.pad(t, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = t.shape[1], t.shape[2]
        out = self.attn(QT(window_partition(t, self.window), x.scale), self.attn_mask)
        t = window_reverse(out.value, self.window, hp, wp)[:, :h, :w, :]
        if any(self.shift):
            t = torch.roll(t, shifts=self.shift, dims=(1, 2))
        return QT(t, out.scale)

    def forward(self, x: QT) -> QT:
        x = self.add1(self._attn(self.norm1(x)), residual=x)
        return self.add2(self.mlp(self.norm2(x)), residual=x)


class PatchMerging(nn.Module):
    """Concatenate each 2x2 neighbourhood, LayerNorm, reduce (no bias); timm's names.
    The output is requantized at the ``pos_encoding`` point (the stage's input stream)."""

    def __init__(self, dim: int, out_dim: int, in_bits: int, make: _SwinBuilder) -> None:
        super().__init__()
        bits = make.q.bits
        self.norm = make.norm(4 * dim, in_bits)
        self.reduction = make.linear(4 * dim, out_dim, bits.block_input, bias=False)
        self.out_act = make.act(bits.pos_encoding)

    def forward(self, x: QT) -> QT:
        b, h, w, c = x.value.shape
        t = F.pad(x.value, (0, 0, 0, w % 2, 0, h % 2))
        h, w = t.shape[1], t.shape[2]
        t = t.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.out_act(self.reduction(self.norm(QT(t, x.scale))))


class SwinStage(nn.Module):
    def __init__(self, dim: int, out_dim: int, resolution: tuple[int, int], depth: int,
                 downsample: bool, heads: int, window: int, mlp_ratio: float,
                 qkv_bias: bool, in_bits: int, make: _SwinBuilder) -> None:
        super().__init__()
        bits = make.q.bits
        self.downsample = PatchMerging(dim, out_dim, in_bits, make) if downsample else None
        if downsample:
            resolution = tuple((r + 1) // 2 for r in resolution)
            in_bits = bits.pos_encoding
        self.resolution = resolution
        self.blocks = nn.ModuleList(
            SwinBlock(out_dim, resolution, heads, window, i % 2 == 1, mlp_ratio, qkv_bias,
                      in_bits if i == 0 else bits.att_block_out, make)
            for i in range(depth))
        self.out_bits = bits.att_block_out if depth else in_bits

    def forward(self, x: QT) -> QT:
        if self.downsample is not None:
            x = self.downsample(x)
        for block in self.blocks:
            x = block(x)
        return x


class QuantSwinTransformer(QuantModel):
    """timm-compatible Swin. ``forward`` returns float logits in every mode; in INT mode
    they are the integer logits times their scale (:meth:`forward_int`)."""

    def __init__(self, cfg: ModelConfig, qcfg: QuantConfig) -> None:
        super().__init__()
        depths, heads = tuple(cfg.depths), tuple(cfg.heads)
        if not depths or len(depths) != len(heads):
            raise ValueError(f"a Swin needs one head count per stage: depths {depths}, "
                             f"heads {heads}")
        self.cfg, self.qcfg = cfg, qcfg
        make = _SwinBuilder(qcfg, cfg.norm_eps)
        bits = qcfg.bits
        dims = [cfg.embed_dim * 2 ** i for i in range(len(depths))]
        for dim, h in zip(dims, heads):
            if dim % h:
                raise ValueError(f"stage width {dim} is not divisible by its {h} heads")
        grid = cfg.img_size // cfg.patch_size
        self.input_act = make.act(bits.patch_embed)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = QuantPatchConv(cfg.in_chans, dims[0], cfg.patch_size,
                                               qcfg.weight_bits, bits.patch_embed)
        self.patch_act = make.act(bits.patch_embed)
        self.patch_embed.norm = make.norm(dims[0], bits.patch_embed, bits.pos_encoding)
        self.grid = (grid, grid)
        stages, resolution, stream_bits = [], (grid, grid), bits.pos_encoding
        for i, (depth, h) in enumerate(zip(depths, heads)):
            stage = SwinStage(dims[i - 1] if i else dims[0], dims[i], resolution, depth,
                              i > 0, h, cfg.window_size, cfg.mlp_ratio, cfg.qkv_bias,
                              stream_bits, make)
            stages.append(stage)
            resolution, stream_bits = stage.resolution, stage.out_bits
        self.layers = nn.ModuleList(stages)
        self.num_features = dims[-1]
        self.norm = make.norm(dims[-1], stream_bits)
        self.pool_act = make.act(bits.block_input)
        self.head = nn.Module()
        self.head.fc = make.linear(dims[-1], cfg.num_classes, bits.block_input)
        self.set_mode(Mode.FLOAT if not qcfg.enabled else Mode.FAKE)

    def _pool(self, x: QT) -> QT:
        """Average over the tokens: an integer sum whose scale carries the ``1/N``,
        requantized by ``pool_act``."""
        b, h, w, c = x.value.shape
        tokens = x.value.reshape(b, h * w, c)
        n = h * w
        if self.mode is Mode.INT:
            top = -qrange(self.norm.out_bits)[0]
            total = declare(tokens.sum(dim=1), signed_bits(n * top), "avgpool.sum")
            # a frozen requantizer holds its multiplier: no scale to compute
            return self.pool_act(QT(total, None if self.pool_act.is_frozen else x.scale / n))
        return self.pool_act(QT(tokens.mean(dim=1), None if x.scale is None else x.scale / n))

    def forward_features(self, images: torch.Tensor) -> QT:
        """The pooled features (the head's input)."""
        x = self.input_act(QT(images))
        x = self.patch_act(self.patch_embed.proj(x))
        x = QT(x.value.reshape(x.value.shape[0], *self.grid, -1), x.scale)
        x = self.patch_embed.norm(x)
        for stage in self.layers:
            x = stage(x)
        return self._pool(self.norm(x))

    def classifier(self) -> nn.Module:
        return self.head.fc


def _timm_swin() -> type[nn.Module]:
    from timm.models.swin_transformer import SwinTransformer
    return SwinTransformer


def _read_timm_swin(model: nn.Module) -> dict:
    blocks = [layer.blocks[0] for layer in model.layers]
    return dict(embed_dim=model.embed_dim, depth=len(model.layers),
                num_heads=blocks[0].attn.num_heads, norm_eps=model.norm.eps,
                mlp_ratio=blocks[0].mlp.fc1.out_features / blocks[0].mlp.fc1.in_features,
                window_size=blocks[0].window_size[0],
                depths=tuple(len(layer.blocks) for layer in model.layers),
                heads=tuple(b.attn.num_heads for b in blocks))


register_family(ModelFamily(
    arch="swin", model_class=QuantSwinTransformer,
    names={"swin_tiny": "swin_tiny_patch4_window7_224",
           "swin_small": "swin_small_patch4_window7_224"},
    timm_class=_timm_swin, read_timm=_read_timm_swin,
    timm_kwargs=lambda cfg: {"window_size": cfg.window_size},
    small=dict(arch="swin", img_size=32, patch_size=4, embed_dim=16, depths=(2, 2), heads=(2, 2),
               window_size=4, num_classes=10),
    # 16x16 patches: stage 0 has shifted 7x7 windows, padded
    shrink=lambda cfg: replace(cfg, img_size=64, depths=(2, 1, 1, 1))))
