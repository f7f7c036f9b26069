"""The hardware cost of a model's non-linear kernels, per image.

Where the GELU/Softmax/LayerNorm modules sit (:func:`kernel_sites`, read from one float
forward; :func:`vit_shapes` is the same for a ViT in closed form), and how their
:class:`~intvit.approx.Cost` figures add up over those sites (:func:`combine_costs`):

    ops(k)  = elements * c.k + rows * c.per_row[k]            for each op kind k
    cost    = sum over sites, kinds of  W[k] * ops(k)

with the weights :data:`COST_WEIGHTS` (see :mod:`intvit.analysis.search` for the table
of elements and rows per op).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ..approx import Cost
from ..quant import Mode, QuantGELU, QuantLayerNorm, QuantSoftmax

# Weighted operation count: a division counts 8, an integer square root 64, the rest 1.
COST_WEIGHTS: dict[str, int] = {"mul": 1, "shift": 1, "add": 1, "cmp": 1, "div": 8,
                                "sqrt": 64}
ELEMENT_KINDS = ("mul", "shift", "add", "div", "cmp")
KERNEL_MODULES = (QuantGELU, QuantSoftmax, QuantLayerNorm)
_BLOCK = re.compile(r"^(.*?\bblocks\.\d+)(?:\.|$)")


def block_of(module_name: str) -> str:
    """The group a kernel module belongs to: its block (``blocks.3``,
    ``layers.1.blocks.0``), or the module itself outside blocks (``norm``)."""
    match = _BLOCK.match(module_name)
    return match.group(1) if match else module_name


def kernel_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, KERNEL_MODULES)]


@dataclass(frozen=True)
class Site:
    """A GELU/Softmax/LayerNorm module and its work for one image."""

    module: str
    op: str
    group: str
    elements: int
    rows: int
    row_length: int


@torch.no_grad()
def kernel_sites(model: nn.Module) -> list[Site]:
    """Every kernel module with its per-image input shape, read from one float forward of
    a blank image (shapes do not depend on the data or the approximations)."""
    shapes: dict[str, tuple[int, ...]] = {}
    modules = kernel_modules(model)

    def record(name: str, _module: nn.Module, args: tuple) -> None:
        shapes.setdefault(name, tuple(args[0].value.shape))

    hooks = [m.register_forward_pre_hook(functools.partial(record, name))
             for name, m in modules]
    mode = model.mode
    cfg = model.cfg
    try:
        model.set_mode(Mode.FLOAT)
        model(torch.zeros(1, cfg.in_chans, cfg.img_size, cfg.img_size))
    finally:
        for hook in hooks:
            hook.remove()
        model.set_mode(mode)
    sites = []
    for name, module in modules:
        shape = shapes[name]
        elements = math.prod(shape)
        sites.append(Site(name, module.op, block_of(name), elements,
                          elements // shape[-1], shape[-1]))
    return sites


def vit_shapes(cfg) -> dict[str, dict[str, int]]:
    """The documented formula for a ViT/DeiT: per op, elements, rows and row length of
    one image (GELU has no rows: ``rows`` counts its elements' rows of ``F``)."""
    n = (cfg.img_size // cfg.patch_size) ** 2 + 1
    d, h, depth, f = cfg.embed_dim, cfg.num_heads, cfg.depth, int(cfg.embed_dim * cfg.mlp_ratio)
    return {"gelu": dict(elements=depth * n * f, rows=depth * n, row_length=f),
            "softmax": dict(elements=depth * h * n * n, rows=depth * h * n, row_length=n),
            "layernorm": dict(elements=(2 * depth + 1) * n * d, rows=(2 * depth + 1) * n,
                              row_length=d)}


def weighted(counts: dict[str, int], weights: dict[str, int] = COST_WEIGHTS) -> int:
    """``sum W[k] * counts[k]`` (kinds without a weight count 1)."""
    return sum(weights.get(k, 1) * v for k, v in counts.items())


@dataclass
class HardwareCost:
    """Per-image cost of a combination: the weighted op count (``weighted``), split per op,
    the raw counts per kind, and the widest intermediate/requantization widths."""

    weighted: int
    by_op: dict[str, int]
    counts: dict[str, int]
    widest_bits: int
    requant_bits: int
    widest_by_op: dict[str, int]
    integer_only: bool = True
    float_ops: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"weighted": self.weighted, "by_op": dict(self.by_op),
                "counts": dict(self.counts), "widest_bits": self.widest_bits,
                "requant_bits": self.requant_bits, "widest_by_op": dict(self.widest_by_op),
                "integer_only": self.integer_only, "float_ops": list(self.float_ops)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HardwareCost":
        return cls(**data)


def combine_costs(parts: Iterable[tuple[Site, Cost]],
                  weights: dict[str, int] = COST_WEIGHTS) -> HardwareCost:
    """The formula of the module docstring over (site, kernel cost) pairs."""
    counts: dict[str, int] = {}
    by_op: dict[str, int] = {}
    widest_by_op: dict[str, int] = {}
    float_ops: list[str] = []
    requant = 0
    for site, cost in parts:
        if not cost.integer_only:
            if site.op not in float_ops:
                float_ops.append(site.op)
            continue
        here = {k: getattr(cost, k) * site.elements for k in ELEMENT_KINDS}
        for kind, value in cost.per_row.items():
            here[kind] = here.get(kind, 0) + value * site.rows
        for kind, value in here.items():
            counts[kind] = counts.get(kind, 0) + value
        by_op[site.op] = by_op.get(site.op, 0) + weighted(here, weights)
        widest_by_op[site.op] = max(widest_by_op.get(site.op, 0), cost.widest_bits)
        requant = max(requant, cost.requant_bits)
    return HardwareCost(weighted(counts, weights), by_op, counts,
                        max(widest_by_op.values(), default=0), requant, widest_by_op,
                        not float_ops, float_ops)


def prepared_kernel(module: nn.Module):
    if not module._kernels:
        raise RuntimeError("no prepared kernel: run an integer forward first")
    kernel, _ = next(iter(module._kernels.values()))
    return kernel


def hardware_cost(model: nn.Module, sites: Sequence[Site],
                  weights: dict[str, int] = COST_WEIGHTS) -> HardwareCost:
    """The cost of ``model``'s kernels as prepared by its last integer forward (the real
    scales and widths), at the sites' shapes."""
    modules = dict(model.named_modules())
    return combine_costs(((s, prepared_kernel(modules[s.module]).cost(s.row_length))
                          for s in sites), weights)
