"""``export_program``: a quantized model in eval mode -> an :class:`IntProgram`.

The structure of each model family is written here once more, as program nodes:
:func:`lower_vit` for ViT/DeiT, :func:`lower_swin` for Swin, each registered as its
family's ``lower`` (:func:`~intvit.models.families.register_lowering`). The
:class:`~.lowering.Builder` checks every quantized module's integers against the model
while it builds, so the two descriptions cannot drift apart unnoticed.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch

from ..arith import qrange, signed_bits
from ..models.base import QuantModel
from ..models.families import FAMILIES, ModelError, family_of_model, register_lowering
from ..models.swin import QuantSwinTransformer
from ..models.vit import QuantVisionTransformer
from .lowering import Builder
from .program import IntProgram, ProgramError


def patch_tokens(b: Builder, model: QuantModel, x: str) -> str:
    """Quantize the images, cut them into patches, embed them: (B, N, D)."""
    c, size, p = model.cfg.in_chans, model.cfg.img_size, model.cfg.patch_size
    grid = size // p
    x = b.act(model.input_act, x)
    x = b.reshape(x, -1, c, grid, p, grid, p)
    x = b.reshape(b.transpose(x, 0, 2, 4, 1, 3, 5), -1, grid * grid, c * p * p)
    return b.act(model.patch_act, b.linear(model.patch_embed.proj, x))


def attention(b: Builder, attn, x: str, mask: torch.Tensor | None = None) -> str:
    """Multi-head self-attention over (B', N, C) tokens; Swin's logits take their relative
    position bias as a constant residual and, in shifted blocks, the window mask."""
    _, n, c = b.shape(x)
    heads, d = attn.heads, attn.head_dim
    qkv = b.act(attn.qkv_act, b.linear(attn.qkv, x))
    parts = b.transpose(b.reshape(qkv, -1, n, 3, heads, d), 2, 0, 3, 1, 4)
    q, k, v = (b.take(parts, 0, i) for i in range(3))
    logits = b.act(attn.scores_act, b.matmul(attn.scores, q, b.transpose(k, 0, 1, 3, 2)))
    masked = None
    if mask is not None:
        masked = b.constant(f"{b.names[attn]}.mask", (mask < 0)[None, :, None].contiguous())
        sentinel = qrange(attn.softmax.in_bits)[0]
        logits = window_where(b, logits, masked, sentinel, heads, n)
    probs = b.kernel(attn.softmax, logits)
    if masked is not None:
        probs = window_where(b, probs, masked, 0, heads, n)
    ctx = b.act(attn.context_act, b.matmul(attn.context, probs, v))
    ctx = b.reshape(b.transpose(ctx, 0, 2, 1, 3), -1, n, c)
    return b.act(attn.proj_act, b.linear(attn.proj, ctx))


def window_where(b: Builder, x: str, masked: str, fill: int, heads: int, n: int) -> str:
    """Set the masked entries of (B * nW, heads, N, N) to ``fill``."""
    windows = b.shape(masked)[1]
    x = b.node("where", [b.reshape(x, -1, windows, heads, n, n), masked], fill=fill)
    return b.reshape(x, -1, heads, n, n)


def residual_block(b: Builder, block, x: str, attend: Callable[[str], str]) -> str:
    """A pre-norm transformer block: ``x + attend(norm1(x))``, then ``x + MLP(norm2(x))``,
    each sum requantized by the block's ``add1``/``add2``."""
    x = b.act(block.add1, attend(b.kernel(block.norm1, x)), residual=x)
    mlp = block.mlp
    h = b.kernel(mlp.act, b.act(mlp.fc1_act, b.linear(mlp.fc1, b.kernel(block.norm2, x))))
    h = b.act(mlp.fc2_act, b.linear(mlp.fc2, h))
    return b.act(block.add2, h, residual=x)


@register_lowering("vit")
def lower_vit(b: Builder, model: QuantVisionTransformer) -> str:
    x = patch_tokens(b, model, "images")
    cls = b.constant("cls_token", model.frozen_cls.cpu())
    x = b.node("concat", [b.node("broadcast", [cls, x]), x], axis=1)
    x = b.act(model.pos_act, x)
    for block in model.blocks:
        x = residual_block(b, block, x, lambda h, blk=block: attention(b, blk.attn, h))
    x = b.take(b.kernel(model.norm, x), 1, 0)
    return b.output(model.head, b.linear(model.head, x))


def shifted_window_attention(b: Builder, block, x: str) -> str:
    """(B, H, W, C) -> cyclic shift, pad, windows, attention, reverse, crop, shift back."""
    _, h, w, c = b.shape(x)
    (wh, ww), shift = block.window, block.shift
    if any(shift):
        x = b.node("roll", [x], shifts=[-shift[0], -shift[1]], dims=[1, 2], sizes=[h, w])
    pad_h, pad_w = (wh - h % wh) % wh, (ww - w % ww) % ww
    if pad_h or pad_w:
        x = b.node("pad", [x], pads=[[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
    hp, wp = h + pad_h, w + pad_w
    x = b.reshape(x, -1, hp // wh, wh, wp // ww, ww, c)
    x = b.reshape(b.transpose(x, 0, 1, 3, 2, 4, 5), -1, wh * ww, c)
    x = attention(b, block.attn, x, block.attn_mask)
    x = b.reshape(x, -1, hp // wh, wp // ww, wh, ww, c)
    x = b.reshape(b.transpose(x, 0, 1, 3, 2, 4, 5), -1, hp, wp, c)
    if pad_h:
        x = b.node("slice", [x], axis=1, start=0, end=h)
    if pad_w:
        x = b.node("slice", [x], axis=2, start=0, end=w)
    if any(shift):
        x = b.node("roll", [x], shifts=list(shift), dims=[1, 2], sizes=[h, w])
    return x


def patch_merging(b: Builder, merge, x: str) -> str:
    """Concatenate 2x2 neighbourhoods (zero-padding odd sizes), LayerNorm, reduce."""
    _, h, w, c = b.shape(x)
    if h % 2 or w % 2:
        x = b.node("pad", [x], pads=[[0, 0], [0, h % 2], [0, w % 2], [0, 0]])
        h, w = h + h % 2, w + w % 2
    x = b.transpose(b.reshape(x, -1, h // 2, 2, w // 2, 2, c), 0, 1, 3, 4, 2, 5)
    x = b.reshape(x, -1, h // 2, w // 2, 4 * c)
    return b.act(merge.out_act, b.linear(merge.reduction, b.kernel(merge.norm, x)))


@register_lowering("swin")
def lower_swin(b: Builder, model: QuantSwinTransformer) -> str:
    x = patch_tokens(b, model, "images")
    x = b.kernel(model.patch_embed.norm, b.reshape(x, -1, *model.grid, b.shape(x)[-1]))
    for stage in model.layers:
        if stage.downsample is not None:
            x = patch_merging(b, stage.downsample, x)
        for block in stage.blocks:
            x = residual_block(b, block, x,
                               lambda h, blk=block: shifted_window_attention(b, blk, h))
    x = b.kernel(model.norm, x)
    _, h, w, c = b.shape(x)
    top = -qrange(model.norm.out_bits)[0]
    x = b.node("sum", [b.reshape(x, -1, h * w, c)], axis=1, bits=signed_bits(h * w * top))
    x = b.act(model.pool_act, x)
    return b.output(model.head.fc, b.linear(model.head.fc, x))


def probe_images(model: QuantModel, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Seeded standard-normal images of the model's input size (the default probe)."""
    cfg = model.cfg
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, generator=gen)


def export_program(model: QuantModel, images: torch.Tensor | None = None,
                   info: dict | None = None) -> IntProgram:
    """Lower ``model`` (quantization on; put in eval mode here) to an integer program,
    checked module by module against the model on ``images`` (default: a seeded probe)."""
    try:
        lower = family_of_model(model).lower
    except ModelError:
        lower = None
    if lower is None:
        raise ProgramError(f"no lowering for {type(model).__name__}; exportable: "
                           + ", ".join(f.model_class.__name__ for f in FAMILIES.values()
                                       if f.lower is not None))
    if not model.qcfg.enabled:
        raise ProgramError("the model has quantization off; export needs a quantized "
                           "(calibrated or trained) model")
    model.eval()
    if any(t.device.type != "cpu" for t in model.parameters()):
        model = copy.deepcopy(model).cpu().eval()  # programs are built and checked on the CPU
    images = probe_images(model) if images is None else images.cpu()
    b = Builder(model, images.to(torch.float32))
    logits = lower(b, model)
    b.check_complete()
    cfg = model.cfg
    meta = {"model": cfg.as_dict(), "quant": model.qcfg.as_dict(),
            "input_shape": [cfg.in_chans, cfg.img_size, cfg.img_size],
            "info": info or {}}
    program = IntProgram(b.nodes, b.tensors, meta, "images", logits)
    program.check()
    return program
