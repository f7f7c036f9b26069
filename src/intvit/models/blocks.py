"""The parts the quantized ViT and Swin are built from, each written once: its
``forward`` (every mode) and, beside it, ``lower`` (its integer program, written with a
:class:`~.program_builder.ProgramBuilder`). Names and shapes follow timm's, so timm
weights load unchanged.

* :class:`Attention`: multi-head self-attention, with a logits hook (:meth:`Attention.logits`)
  that a subclass overrides to add to the requantized scores and mask them (Swin's
  relative position bias and shifted-window mask).
* :class:`Mlp`: fc1, GELU, fc2.
* :class:`Block`: the pre-norm residual block around an attention and an MLP, with an
  ``attend`` hook that a subclass overrides to move the tokens around the attention
  (Swin's windows).
* :class:`PatchModel`: a model whose images are cut into patches and embedded.
"""

from __future__ import annotations

import torch
from torch import nn

from ..quant import (QT, QuantAct, QuantConfig, QuantGELU, QuantLayerNorm, QuantLinear,
                     QuantMatMul, QuantPatchConv, QuantSoftmax)
from .base import QuantModel
from .config import ModelConfig
from .program_builder import ProgramBuilder


class LayerMaker:
    """Creates quantized modules with the config's observer settings. A module is given
    its own output width only: its operand widths are those of the values it receives
    (:class:`~intvit.quant.QT`'s format)."""

    def __init__(self, q: QuantConfig, eps: float) -> None:
        self.q, self.eps = q, eps

    def act(self, bits: int, signed: bool = True) -> QuantAct:
        return QuantAct(bits, signed, self.q.observer, self.q.ema_momentum, self.q.percentile)

    def norm(self, dim: int, out_bits: int | None = None) -> QuantLayerNorm:
        """A LayerNorm whose output is at ``out_bits`` (default: the ``block_input`` point)."""
        out = self.q.bits.block_input if out_bits is None else out_bits
        return QuantLayerNorm(dim, self.q.layernorm, out, self.eps, self.q.observer,
                              self.q.ema_momentum, self.q.percentile)

    def linear(self, i: int, o: int, bias: bool = True) -> QuantLinear:
        return QuantLinear(i, o, bias, self.q.weight_bits)


def window_fill(x: torch.Tensor, masked: torch.Tensor, fill: float) -> torch.Tensor:
    """Attention logits or probabilities (B * nW, heads, N, N) with the entries of a
    per-window mask ``masked`` (1, nW, 1, N, N) set to ``fill``."""
    _, heads, n, _ = x.shape
    windows = x.reshape(-1, masked.shape[1], heads, n, n)
    return torch.where(masked, fill, windows).reshape(-1, heads, n, n)


def lower_window_fill(b: ProgramBuilder, x: str, masked: str, fill: int) -> str:
    """The program of :func:`window_fill`."""
    _, heads, n, _ = b.shape(x)
    windows = b.reshape(x, -1, b.shape(masked)[1], heads, n, n)
    return b.reshape(b.where(windows, masked, fill), -1, heads, n, n)


class Attention(nn.Module):
    """Multi-head self-attention over (B', N, C) tokens:
    ``proj(softmax(logits(q k^T / sqrt(d))) v)``, every product requantized.

    The logits hook, :meth:`logits` and :meth:`lower_logits`, takes the scores (and the
    block's window mask, None without one) and returns the softmax input with the
    per-window mask of the entries whose probability is 0 (:func:`window_fill`), or
    None: here the scores' requantization, with nothing masked."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool, make: LayerMaker) -> None:
        super().__init__()
        bits = make.q.bits
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = make.linear(dim, 3 * dim, qkv_bias)
        self.qkv_act = make.act(bits.attention_out)
        self.scores = QuantMatMul()
        self.scores_act = make.act(bits.attention_out)
        self.softmax = QuantSoftmax(make.q.softmax, bits.softmax_out)
        self.context = QuantMatMul()
        self.context_act = make.act(bits.attention_out)
        self.proj = make.linear(dim, dim)
        self.proj_act = make.act(bits.attention_out)

    def logits(self, scores: QT, mask: torch.Tensor | None) -> tuple[QT, torch.Tensor | None]:
        return self.scores_act(scores), None

    def lower_logits(self, b: ProgramBuilder, scores: str, mask: torch.Tensor | None
                     ) -> tuple[str, str | None]:
        return b.act(self.scores_act, scores), None

    def forward(self, x: QT, mask: torch.Tensor | None = None) -> QT:
        b, n, c = x.value.shape
        qkv = self.qkv_act(self.qkv(x))
        parts = qkv.value.reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = (qkv.with_value(t) for t in parts.unbind(0))
        scores = self.scores(q, k.with_value(k.value.transpose(-2, -1)), self.head_dim ** -0.5)
        logits, masked = self.logits(scores, mask)
        attn = self.softmax(logits)
        if masked is not None:
            attn = attn.with_value(window_fill(attn.value, masked, 0))
        ctx = self.context_act(self.context(attn, v))
        ctx = ctx.with_value(ctx.value.transpose(1, 2).reshape(b, n, c))
        return self.proj_act(self.proj(ctx))

    def lower(self, b: ProgramBuilder, x: str, mask: torch.Tensor | None = None) -> str:
        _, n, c = b.shape(x)
        qkv = b.act(self.qkv_act, b.linear(self.qkv, x))
        parts = b.transpose(b.reshape(qkv, -1, n, 3, self.heads, self.head_dim), 2, 0, 3, 1, 4)
        q, k, v = (b.take(parts, 0, i) for i in range(3))
        logits, masked = self.lower_logits(
            b, b.matmul(self.scores, q, b.transpose(k, 0, 1, 3, 2)), mask)
        probs = b.kernel(self.softmax, logits)
        if masked is not None:
            probs = lower_window_fill(b, probs, masked, 0)
        ctx = b.act(self.context_act, b.matmul(self.context, probs, v))
        ctx = b.reshape(b.transpose(ctx, 0, 2, 1, 3), -1, n, c)
        return b.act(self.proj_act, b.linear(self.proj, ctx))


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))``, each linear requantized."""

    def __init__(self, dim: int, hidden: int, make: LayerMaker) -> None:
        super().__init__()
        bits = make.q.bits
        self.fc1 = make.linear(dim, hidden)
        self.fc1_act = make.act(bits.mlp_out)
        self.act = QuantGELU(make.q.gelu, bits.mlp_out)
        self.fc2 = make.linear(hidden, dim)
        self.fc2_act = make.act(bits.mlp_out)

    def forward(self, x: QT) -> QT:
        return self.fc2_act(self.fc2(self.act(self.fc1_act(self.fc1(x)))))

    def lower(self, b: ProgramBuilder, x: str) -> str:
        h = b.kernel(self.act, b.act(self.fc1_act, b.linear(self.fc1, x)))
        return b.act(self.fc2_act, b.linear(self.fc2, h))


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attend(norm1(x))`` requantized by ``add1``,
    then ``x + mlp(norm2(x))`` by ``add2``. :meth:`attend` runs the attention on the
    normed tokens; a subclass overrides it (and :meth:`lower_attend`) to move the tokens
    around the attention."""

    def __init__(self, dim: int, attn: Attention, mlp_ratio: float, make: LayerMaker
                 ) -> None:
        super().__init__()
        bits = make.q.bits
        self.norm1 = make.norm(dim)
        self.attn = attn
        self.add1 = make.act(bits.norm2_in)
        self.norm2 = make.norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), make)
        self.add2 = make.act(bits.att_block_out)

    def attend(self, x: QT) -> QT:
        return self.attn(x)

    def lower_attend(self, b: ProgramBuilder, x: str) -> str:
        return self.attn.lower(b, x)

    def forward(self, x: QT) -> QT:
        x = self.add1(self.attend(self.norm1(x)), residual=x)
        return self.add2(self.mlp(self.norm2(x)), residual=x)

    def lower(self, b: ProgramBuilder, x: str) -> str:
        x = b.act(self.add1, self.lower_attend(b, b.kernel(self.norm1, x)), residual=x)
        return b.act(self.add2, self.mlp.lower(b, b.kernel(self.norm2, x)), residual=x)


class PatchModel(QuantModel):
    """A quantized model whose images are quantized (``input_act``), cut into patches and
    embedded (``patch_embed.proj``, a convolution of kernel = stride = patch) and
    requantized (``patch_act``); timm's names."""

    def build_patch_embedding(self, cfg: ModelConfig, dim: int, make: LayerMaker) -> None:
        bits = make.q.bits
        self.input_act = make.act(bits.patch_embed)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = QuantPatchConv(cfg.in_chans, dim, cfg.patch_size,
                                               make.q.weight_bits)
        self.patch_act = make.act(bits.patch_embed)

    def patch_tokens(self, images: torch.Tensor) -> QT:
        """(B, C, H, W) images -> (B, N, D) patch tokens."""
        return self.patch_act(self.patch_embed.proj(self.input_act(QT(images))))

    def lower_patch_tokens(self, b: ProgramBuilder, images: str) -> str:
        return b.act(self.patch_act, b.patch_conv(self.patch_embed.proj,
                                                  b.act(self.input_act, images)))
