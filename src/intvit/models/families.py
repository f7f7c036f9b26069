"""The registry of model families, in the style of timm's ``register_model``.

A family (``ModelConfig.arch``: ``vit`` for ViT/DeiT, ``swin``) is registered once, in the
module that defines its quantized model (:func:`register_family` at the bottom of
``models/vit.py`` and ``models/swin.py``), with everything the rest of intvit needs to
know about it:

| field | read by |
|---|---|
| ``model_class``: the quantized model, ``model_class(cfg, qcfg)`` | the factory (:func:`.registry.build_quant_model`) |
| ``names``: intvit's short names -> timm's full names | :func:`.registry.timm_name`, the CLI, the bench |
| ``timm_class``, ``read_timm``, ``timm_kwargs``, ``custom_timm``: its timm twin | :func:`.registry.create_timm`, :func:`.registry.config_from_timm` |
| ``small``, ``shrink``: the small test configurations | the tests |

Adding a family is registering it: nothing else dispatches on the architecture. An
unknown architecture or model name is an error that lists what is registered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from .config import ModelConfig


class ModelError(ValueError):
    """A model that cannot be built or loaded as asked; the message says why."""


@dataclass
class ModelFamily:
    """One architecture family. ``read_timm(model)`` returns the :class:`ModelConfig`
    fields of a timm model of ``timm_class()`` beyond the ones every family shares
    (image, patch, channels, classes); ``timm_kwargs(cfg)`` the extra arguments of
    ``timm.create_model`` for a named model; ``custom_timm(cfg)`` the timm twin of a
    ``custom`` configuration (None: the family has none). ``small`` is the family's
    smallest test configuration (``model_config("custom", **small)`` builds in
    milliseconds); ``shrink(cfg)`` keeps a named model's widths and heads with a few
    tokens and blocks. The integer program is the model's own (``model_class.lower``,
    :mod:`.program_builder`)."""

    arch: str
    model_class: type[nn.Module]
    names: dict[str, str]
    timm_class: Callable[[], type[nn.Module]]
    read_timm: Callable[[nn.Module], dict[str, Any]]
    small: dict[str, Any]
    shrink: Callable[[ModelConfig], ModelConfig]
    timm_kwargs: Callable[[ModelConfig], dict[str, Any]] = field(default=lambda cfg: {})
    custom_timm: Callable[[ModelConfig], nn.Module] | None = None


FAMILIES: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Add ``family``; its architecture and its model names must be new."""
    if family.arch in FAMILIES:
        raise ValueError(f"model family {family.arch!r} is already registered")
    taken = set(short_names()) | set(short_names().values())
    clash = sorted(taken & (set(family.names) | set(family.names.values())))
    if clash:
        raise ValueError(f"model names {clash} of family {family.arch!r} are already "
                         f"registered")
    FAMILIES[family.arch] = family
    return family


def unregister_family(arch: str) -> None:
    """Remove a family (for tests that register a made-up one)."""
    FAMILIES.pop(arch)


def family(arch: str) -> ModelFamily:
    """The registered family of an architecture name."""
    if arch not in FAMILIES:
        raise ModelError(f"unknown model family {arch!r}; registered: {', '.join(FAMILIES)}")
    return FAMILIES[arch]


def family_of_model(model: nn.Module) -> ModelFamily:
    """The family whose quantized model class ``model`` is."""
    for fam in FAMILIES.values():
        if type(model) is fam.model_class:
            return fam
    raise ModelError(f"{type(model).__name__} is not the model of a registered family; "
                     f"registered: " + ", ".join(f"{f.arch} ({f.model_class.__name__})"
                                                 for f in FAMILIES.values()))


def family_of_timm(model: nn.Module) -> ModelFamily:
    """The family whose timm class ``model`` is an instance of."""
    for fam in FAMILIES.values():
        if isinstance(model, fam.timm_class()):
            return fam
    raise ModelError(f"{type(model).__name__} is not a timm model of a registered family; "
                     f"registered: " + ", ".join(f"{f.arch} ({f.timm_class().__name__})"
                                                 for f in FAMILIES.values()))


def family_of_name(full_name: str) -> ModelFamily:
    """The family that registered timm's model name ``full_name``."""
    for fam in FAMILIES.values():
        if full_name in fam.names.values():
            return fam
    raise ModelError(f"unknown timm model {full_name!r}; known: "
                     f"{', '.join(short_names().values())}")


def short_names() -> dict[str, str]:
    """Every registered short name -> timm's full name, in registration order."""
    return {short: full for fam in FAMILIES.values() for short, full in fam.names.items()}
