"""A combination of approximations (:class:`Candidate`: one name per op, optionally
overridden per block), the name lists it is drawn from, and how a calibrated model takes
one (:func:`apply_candidate` in place, :func:`materialize` as a new model)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

from torch import nn

from ...approx import build
from ...models.registry import build_quant_model
from ...quant import QuantConfig
from ..hwcost import block_of, kernel_modules

SEARCH_OPS = ("gelu", "softmax", "layernorm")
DEFAULT_LISTS = {"gelu": ("ivit", "ibert", "ppoly"), "softmax": ("ivit", "ibert", "ppoly"),
                 "layernorm": ("ivit", "ibert")}


class SearchError(ValueError):
    """A search that cannot run as asked (reported before anything is evaluated)."""


@dataclass(frozen=True)
class Candidate:
    """One approximation per op for the whole model, optionally overridden per block:
    ``overrides`` holds ``(group, op, name)`` triples (see :func:`block_of`)."""

    gelu: str = "ivit"
    softmax: str = "ivit"
    layernorm: str = "ivit"
    overrides: tuple[tuple[str, str, str], ...] = ()

    def __post_init__(self) -> None:
        for op in SEARCH_OPS:
            object.__setattr__(self, op, build(op, getattr(self, op)).name)
        kept: dict[tuple[str, str], str] = {}
        for group, op, name in self.overrides:
            if op not in SEARCH_OPS:
                raise SearchError(f"override of unknown op {op!r} in {group!r}; ops: "
                                  f"{', '.join(SEARCH_OPS)}")
            kept[(group, op)] = build(op, name).name
        object.__setattr__(self, "overrides", tuple(sorted(
            (g, op, n) for (g, op), n in kept.items() if n != getattr(self, op))))

    def name(self, op: str, group: str | None = None) -> str:
        """The approximation of ``op`` in ``group`` (the global one without override)."""
        for g, o, n in self.overrides:
            if g == group and o == op:
                return n
        return getattr(self, op)

    def with_override(self, group: str, op: str, name: str) -> "Candidate":
        rest = tuple(t for t in self.overrides if (t[0], t[1]) != (group, op))
        return replace(self, overrides=rest + ((group, op, name),))

    @property
    def global_names(self) -> tuple[str, str, str]:
        return self.gelu, self.softmax, self.layernorm

    @property
    def label(self) -> str:
        text = "/".join(self.global_names)
        return text + (f" +{len(self.overrides)} per-block" if self.overrides else "")

    def per_block(self) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for group, op, name in self.overrides:
            out.setdefault(group, {})[op] = name
        return out

    def quant_config(self, base: QuantConfig) -> QuantConfig:
        return replace(base, gelu=self.gelu, softmax=self.softmax, layernorm=self.layernorm)

    def as_dict(self) -> dict[str, Any]:
        return {"gelu": self.gelu, "softmax": self.softmax, "layernorm": self.layernorm,
                "overrides": self.per_block()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Candidate":
        overrides = tuple((g, op, n) for g, ops in (data.get("overrides") or {}).items()
                          for op, n in ops.items())
        return cls(data["gelu"], data["softmax"], data["layernorm"], overrides)


def apply_candidate(model: nn.Module, candidate: Candidate) -> nn.Module:
    """Set every GELU/Softmax/LayerNorm module of ``model`` to the candidate's choice for
    its block (in place; prepared kernels are dropped) and record the global names in
    ``model.qcfg``. Overrides of groups or ops the model lacks are errors."""
    present: set[tuple[str, str]] = set()
    for name, module in kernel_modules(model):
        group = block_of(name)
        present.add((group, module.op))
        approx = build(module.op, candidate.name(module.op, group))
        if approx != module.approx:
            module.approx = approx
            module._kernels = {}
    unknown = [(g, op) for g, op, _ in candidate.overrides if (g, op) not in present]
    if unknown:
        raise SearchError("overrides for parts the model does not have: "
                          + ", ".join(f"{op} in {g}" for g, op in unknown)
                          + f"; groups: {', '.join(sorted({g for g, _ in present}))}")
    if hasattr(model, "qcfg"):
        model.qcfg = candidate.quant_config(model.qcfg)
    return model


def materialize(base: nn.Module, candidate: Candidate) -> nn.Module:
    """A new model under the candidate's approximations with ``base``'s full state (float
    weights and calibrated ranges), in eval mode: the integer model."""
    model = build_quant_model(base.cfg, candidate.quant_config(base.qcfg))
    model.load_state_dict(base.state_dict(), strict=True)
    if candidate.overrides:
        apply_candidate(model, candidate)
    return model.eval()



def check_lists(gelus: Sequence[str], softmaxes: Sequence[str], layernorms: Sequence[str]
                ) -> dict[str, list[str]]:
    """Canonical, de-duplicated names per op; every bad name is reported at once."""
    problems, lists = [], {}
    for op, names in zip(SEARCH_OPS, (gelus, softmaxes, layernorms)):
        if isinstance(names, str):
            names = [n for n in names.split(",")]
        names = [str(n).strip() for n in names]
        if not names or not any(names):
            problems.append(f"{op}: the list is empty")
        canonical: list[str] = []
        for name in names:
            try:
                built = build(op, name).name
            except ValueError as err:
                problems.append(f"{op} {name!r}: {err}")
                continue
            if built not in canonical:
                canonical.append(built)
        lists[op] = canonical
    if problems:
        raise SearchError("cannot search these approximations (nothing was run):\n- "
                          + "\n- ".join(problems))
    return lists
