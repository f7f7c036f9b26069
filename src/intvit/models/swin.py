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
from ..quant import QT, Mode, QuantConfig
from ..quant.modules import FrozenConstants, quantize_tensor
from .blocks import Attention, Block, LayerMaker, PatchModel, lower_window_fill, window_fill
from .config import ModelConfig
from .families import ModelFamily, register_family
from .program_builder import ProgramBuilder

# Least width of a shifted block's masked logits (its softmax input): room for the sentinel.
MASK_BITS = 16
# timm's additive mask value (float modes).
FLOAT_MASK = -100.0


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


class WindowAttention(Attention, FrozenConstants):
    """W-MSA / SW-MSA: the attention whose logits hook adds a learned relative position
    bias and, in a shifted block, applies the window mask (timm's names). INT mode
    freezes the integer bias and the boolean window mask on the first call."""

    def __init__(self, dim: int, heads: int, window: tuple[int, int], qkv_bias: bool,
                 make: LayerMaker) -> None:
        table = torch.empty((2 * window[0] - 1) * (2 * window[1] - 1), heads)
        nn.init.trunc_normal_(table, std=0.02)  # drawn before the linears, as timm does
        super().__init__(dim, heads, qkv_bias, make)
        self.window, self.area = window, window[0] * window[1]
        self.relative_position_bias_table = nn.Parameter(table)
        self.register_buffer("relative_position_index",
                             relative_position_index(*window), persistent=False)

    def _bias(self, mode: Mode) -> QT:
        """The relative position bias (heads, N, N): float, or quantized at the scale
        and width of the logits' requantizer."""
        if mode is Mode.INT and self.is_frozen:
            return QT(self.frozen_bias, self.frozen_bias_scale, self.scores_act.bits)
        table = QT(self.relative_position_bias_table)
        if mode in (Mode.FAKE, Mode.INT):
            table = quantize_tensor(table.value, self.scores_act.scale(), self.scores_act.bits,
                                    mode)
        bias = table.value[self.relative_position_index.reshape(-1)]
        return table.with_value(bias.reshape(self.area, self.area, -1).permute(2, 0, 1))

    def masked_bits(self) -> int:
        """The width of the masked logits (signed): the logits' own, widened to
        ``MASK_BITS`` for the sentinel ``qrange(bits)[0]`` of the masked entries."""
        return max(MASK_BITS, self.scores_act.bits)

    def logits(self, scores: QT, mask: torch.Tensor | None) -> tuple[QT, torch.Tensor | None]:
        """``scores_act(scores, residual=bias)``, then the window mask (nW, N, N): added
        in float modes, the sentinel in FAKE/INT (whose masked probabilities are 0)."""
        mode = self.scores_act.mode
        bias = self._bias(mode)
        if mode is Mode.INT and not self.is_frozen:
            region = None if mask is None else (mask < 0)[None, :, None]
            self.freeze(bias=bias.value, bias_scale=bias.scale, region=region)
        logits = self.scores_act(scores, residual=bias)
        if mask is None:
            return logits, None
        if mode in (Mode.FLOAT, Mode.CALIBRATE):
            n = self.area
            x = logits.value.reshape(-1, mask.shape[0], self.heads, n, n) + mask[None, :, None]
            return QT(x.reshape(-1, self.heads, n, n)), None
        masked = self.frozen_region if self.is_frozen else (mask < 0)[None, :, None]
        bits = self.masked_bits()
        sentinel = qrange(bits)[0]
        fill = sentinel if mode is Mode.INT else sentinel * float(logits.scale)
        return QT(window_fill(logits.value, masked, fill), logits.scale, bits), masked

    def lower_logits(self, b: ProgramBuilder, scores: str, mask: torch.Tensor | None
                     ) -> tuple[str, str | None]:
        logits = b.act(self.scores_act, scores, frozen_residual=True)  # the position bias
        if mask is None:
            return logits, None
        masked = b.constant(f"{b.name(self)}.mask", self.frozen_region.contiguous())
        return lower_window_fill(b, logits, masked, qrange(self.masked_bits())[0]), masked


class SwinBlock(Block):
    """The pre-norm block around a (shifted) window attention: cyclic shift, pad,
    windows, attention, reverse, crop, shift back; timm's names."""

    def __init__(self, dim: int, resolution: tuple[int, int], heads: int, window: int,
                 shift: bool, mlp_ratio: float, qkv_bias: bool, make: LayerMaker) -> None:
        # timm: a window no smaller than the feature map covers it, unshifted
        windows = tuple(min(r, window) for r in resolution)
        shifts = tuple(0 if r <= window or not shift else window // 2 for r in resolution)
        attn = WindowAttention(dim, heads, windows, qkv_bias, make)
        super().__init__(dim, attn, mlp_ratio, make)
        self.resolution, self.window, self.shift = resolution, windows, shifts
        mask = shifted_window_mask(resolution, windows, shifts) if any(shifts) else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def _padding(self, h: int, w: int) -> tuple[int, int]:
        return ((self.window[0] - h % self.window[0]) % self.window[0],
                (self.window[1] - w % self.window[1]) % self.window[1])

    def attend(self, x: QT) -> QT:
        b, h, w, c = x.value.shape
        t = x.value
        if any(self.shift):
            t = torch.roll(t, shifts=(-self.shift[0], -self.shift[1]), dims=(1, 2))
        pad_h, pad_w = self._padding(h, w)
        if pad_h or pad_w:
            t = F.pad(t, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = t.shape[1], t.shape[2]
        out = self.attn(x.with_value(window_partition(t, self.window)), self.attn_mask)
        t = window_reverse(out.value, self.window, hp, wp)[:, :h, :w, :]
        if any(self.shift):
            t = torch.roll(t, shifts=self.shift, dims=(1, 2))
        return out.with_value(t)

    def lower_attend(self, b: ProgramBuilder, x: str) -> str:
        _, h, w, c = b.shape(x)
        (wh, ww), shift = self.window, self.shift
        if any(shift):
            x = b.roll(x, [-shift[0], -shift[1]], [1, 2])
        pad_h, pad_w = self._padding(h, w)
        if pad_h or pad_w:
            x = b.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
        hp, wp = h + pad_h, w + pad_w
        x = b.reshape(x, -1, hp // wh, wh, wp // ww, ww, c)
        x = b.reshape(b.transpose(x, 0, 1, 3, 2, 4, 5), -1, wh * ww, c)
        x = self.attn.lower(b, x, self.attn_mask)
        x = b.reshape(x, -1, hp // wh, wp // ww, wh, ww, c)
        x = b.reshape(b.transpose(x, 0, 1, 3, 2, 4, 5), -1, hp, wp, c)
        if pad_h:
            x = b.slice(x, 1, 0, h)
        if pad_w:
            x = b.slice(x, 2, 0, w)
        if any(shift):
            x = b.roll(x, list(shift), [1, 2])
        return x


class PatchMerging(nn.Module):
    """Concatenate each 2x2 neighbourhood (zero-padding odd sizes), LayerNorm, reduce (no
    bias); timm's names. The output is requantized at the ``pos_encoding`` point (the
    stage's input stream)."""

    def __init__(self, dim: int, out_dim: int, make: LayerMaker) -> None:
        super().__init__()
        self.norm = make.norm(4 * dim)
        self.reduction = make.linear(4 * dim, out_dim, bias=False)
        self.out_act = make.act(make.q.bits.pos_encoding)

    def forward(self, x: QT) -> QT:
        b, h, w, c = x.value.shape
        t = F.pad(x.value, (0, 0, 0, w % 2, 0, h % 2))
        h, w = t.shape[1], t.shape[2]
        t = t.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.out_act(self.reduction(self.norm(x.with_value(t))))

    def lower(self, b: ProgramBuilder, x: str) -> str:
        _, h, w, c = b.shape(x)
        if h % 2 or w % 2:
            x = b.pad(x, [[0, 0], [0, h % 2], [0, w % 2], [0, 0]])
            h, w = h + h % 2, w + w % 2
        x = b.transpose(b.reshape(x, -1, h // 2, 2, w // 2, 2, c), 0, 1, 3, 4, 2, 5)
        x = b.reshape(x, -1, h // 2, w // 2, 4 * c)
        return b.act(self.out_act, b.linear(self.reduction, b.kernel(self.norm, x)))


class SwinStage(nn.Module):
    def __init__(self, dim: int, out_dim: int, resolution: tuple[int, int], depth: int,
                 downsample: bool, heads: int, window: int, mlp_ratio: float,
                 qkv_bias: bool, make: LayerMaker) -> None:
        super().__init__()
        self.downsample = PatchMerging(dim, out_dim, make) if downsample else None
        if downsample:
            resolution = tuple((r + 1) // 2 for r in resolution)
        self.resolution = resolution
        self.blocks = nn.ModuleList(
            SwinBlock(out_dim, resolution, heads, window, i % 2 == 1, mlp_ratio, qkv_bias, make)
            for i in range(depth))

    def forward(self, x: QT) -> QT:
        if self.downsample is not None:
            x = self.downsample(x)
        for block in self.blocks:
            x = block(x)
        return x

    def lower(self, b: ProgramBuilder, x: str) -> str:
        if self.downsample is not None:
            x = self.downsample.lower(b, x)
        for block in self.blocks:
            x = block.lower(b, x)
        return x


class QuantSwinTransformer(PatchModel):
    """timm-compatible Swin. ``forward`` returns float logits in every mode; in INT mode
    they are the integer logits times their scale (:meth:`forward_int`)."""

    def __init__(self, cfg: ModelConfig, qcfg: QuantConfig) -> None:
        super().__init__()
        depths, heads = tuple(cfg.depths), tuple(cfg.heads)
        if not depths or len(depths) != len(heads):
            raise ValueError(f"a Swin needs one head count per stage: depths {depths}, "
                             f"heads {heads}")
        self.cfg, self.qcfg = cfg, qcfg
        make = LayerMaker(qcfg, cfg.norm_eps)
        dims = [cfg.embed_dim * 2 ** i for i in range(len(depths))]
        for dim, h in zip(dims, heads):
            if dim % h:
                raise ValueError(f"stage width {dim} is not divisible by its {h} heads")
        grid = cfg.img_size // cfg.patch_size
        self.build_patch_embedding(cfg, dims[0], make)
        self.patch_embed.norm = make.norm(dims[0], qcfg.bits.pos_encoding)
        self.grid = (grid, grid)
        stages, resolution = [], (grid, grid)
        for i, (depth, h) in enumerate(zip(depths, heads)):
            stage = SwinStage(dims[i - 1] if i else dims[0], dims[i], resolution, depth,
                              i > 0, h, cfg.window_size, cfg.mlp_ratio, cfg.qkv_bias, make)
            stages.append(stage)
            resolution = stage.resolution
        self.layers = nn.ModuleList(stages)
        self.num_features = dims[-1]
        self.norm = make.norm(dims[-1])
        self.pool_act = make.act(qcfg.bits.block_input)
        self.head = nn.Module()
        self.head.fc = make.linear(dims[-1], cfg.num_classes)
        self.set_mode(Mode.FLOAT if not qcfg.enabled else Mode.FAKE)

    def pool(self, x: QT) -> QT:
        """Average over the tokens: an integer sum (``_sum_bits`` wide) whose scale
        carries the ``1/N``, requantized by ``pool_act``."""
        b, h, w, c = x.value.shape
        tokens = x.value.reshape(b, h * w, c)
        n = h * w
        if self.mode is Mode.INT:
            total = declare(tokens.sum(dim=1), self._sum_bits(n), "avgpool.sum")
            # a frozen requantizer holds its multiplier: no scale to compute
            scale = None if self.pool_act.is_frozen else x.scale / n
            return self.pool_act(QT(total, scale, self._sum_bits(n)))
        mean = tokens.mean(dim=1)
        return self.pool_act(QT(mean) if x.scale is None else
                             QT(mean, x.scale / n, self._sum_bits(n)))

    def lower_pool(self, b: ProgramBuilder, x: str) -> str:
        _, h, w, c = b.shape(x)
        total = b.sum(b.reshape(x, -1, h * w, c), 1, self._sum_bits(h * w))
        return b.act(self.pool_act, total)

    def _sum_bits(self, n: int) -> int:
        """The width of a sum of ``n`` outputs of the final LayerNorm."""
        return signed_bits(n * -qrange(self.norm.out_bits)[0])

    def forward_features(self, images: torch.Tensor) -> QT:
        """The pooled features (the head's input)."""
        x = self.patch_tokens(images)
        x = self.patch_embed.norm(x.with_value(x.value.reshape(x.value.shape[0], *self.grid,
                                                               -1)))
        for stage in self.layers:
            x = stage(x)
        return self.pool(self.norm(x))

    def lower_features(self, b: ProgramBuilder, images: str) -> str:
        x = self.lower_patch_tokens(b, images)
        x = b.kernel(self.patch_embed.norm, b.reshape(x, -1, *self.grid, b.shape(x)[-1]))
        for stage in self.layers:
            x = stage.lower(b, x)
        return self.lower_pool(b, b.kernel(self.norm, x))

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
