"""Checkpoints: everything needed to rebuild and evaluate a model, in one safetensors
file, written atomically; and reading other people's weights safely.

An intvit checkpoint is a safetensors file whose metadata holds
``{"format": "intvit", "version": 1, "model": ModelConfig, "quant": QuantConfig,
"info": {...}}`` as JSON strings, and whose tensors are the model's full state dict
(weights and every quantization buffer). Loading needs the path alone.

A training run's checkpoint also carries its training state (optimizer, schedule,
position, random states) in the same file: the state's tensors under ``train_state/N``
and its structure as JSON in the metadata (``"train_state"``). One file, renamed into
place at once, so ``--resume`` always finds weights and state of the same step; a kill
during a save leaves the previous complete checkpoint. Nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from ..fileio import atomic_write
from ..quant import QuantConfig
from .config import ModelConfig
from .registry import ModelError, build_quant_model

FORMAT, VERSION = "intvit", 1
STATE_PREFIX = "train_state/"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit; the message says why."""


def save_checkpoint(path: str | Path, model: nn.Module, info: dict[str, Any] | None = None,
                    train_state: dict[str, Any] | None = None) -> Path:
    """The model (and, for ``--resume``, the ``train_state``: nested dicts, lists, numbers,
    strings and tensors) in one safetensors file, written atomically."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "version": str(VERSION),
                "model": json.dumps(model.cfg.as_dict()),
                "quant": json.dumps(model.qcfg.as_dict()),
                "info": json.dumps(info or {})}
    if train_state is not None:
        metadata["train_state"] = json.dumps(_flatten(train_state, tensors))
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or "
                              f"corrupted?): {err}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not an intvit checkpoint "
                              f"(use it as --weights for a model instead)")
    if int(meta.get("version", -1)) != VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {meta.get('version')}; "
                              f"this intvit reads version {VERSION}")
    try:
        return {"model": ModelConfig.from_dict(json.loads(meta["model"])),
                "quant": QuantConfig.from_dict(json.loads(meta["quant"])),
                "info": json.loads(meta.get("info", "{}"))}
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path} has unreadable intvit metadata: {err}") from None


def load_checkpoint(path: str | Path, expect: dict[str, Any] | None = None
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load all of its state. ``expect``
    maps ModelConfig fields to the values the caller asked for; any difference is an
    error naming them."""
    meta = read_metadata(path)
    got = meta["model"].as_dict()
    wrong = {k: v for k, v in (expect or {}).items() if got[k] != v}
    if wrong:
        raise CheckpointError(
            f"{path} holds a different model ({_describe(meta['model'])}) than the one asked "
            f"for: " + ", ".join(f"{k} is {got[k]}, not {v}" for k, v in wrong.items()))
    model = build_quant_model(meta["model"], meta["quant"])
    try:
        state = {k: v for k, v in load_file(str(path)).items()
                 if not k.startswith(STATE_PREFIX)}
        model.load_state_dict(state, strict=True)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is truncated or corrupted: {err}") from None
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not match the model it describes: {err}") from None
    return model, meta


def _describe(cfg: ModelConfig) -> str:
    return cfg.timm_name or (f"{cfg.arch} dim {cfg.embed_dim} depth {cfg.depth} "
                             f"{cfg.img_size}px {cfg.num_classes} classes")


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A float state dict from a timm/DeiT ``.pth``/``.pt``/``.bin`` or ``.safetensors`` file,
    deserialized safely (no arbitrary pickle); ``{"model": ...}`` wrappers are unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, EOFError) as err:
        raise CheckpointError(f"cannot read weights from {path} (corrupted, or not a "
                              f"tensor file?): {err}") from None
    except Exception as err:  # weights_only refuses arbitrary objects: say so
        raise CheckpointError(f"{path} holds objects other than tensors and was refused "
                              f"for safety: {err}") from None
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in data.items()}


def load_train_state(path: str | Path) -> dict[str, Any]:
    """The training state a run's checkpoint carries (see :func:`save_checkpoint`)."""
    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        skeleton = (f.metadata() or {}).get("train_state")
        if skeleton is None:
            raise CheckpointError(
                f"{path} holds no training state (written by `intvit calibrate`, as a best "
                f"checkpoint, or by an older intvit), so the run cannot continue exactly; "
                f"start a new run from its weights with --checkpoint {path}")
        try:
            return _unflatten(json.loads(skeleton), f)
        except (KeyError, TypeError, ValueError, SafetensorError) as err:
            raise CheckpointError(f"{path} has an unreadable training state: {err}") from None


def _flatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON for ``obj``, its tensors moved to ``tensors`` (``train_state/N``); dict keys
    keep their type (an optimizer's state is keyed by int)."""
    if isinstance(obj, torch.Tensor):
        name = f"{STATE_PREFIX}{sum(k.startswith(STATE_PREFIX) for k in tensors)}"
        tensors[name] = obj.detach().cpu().clone().contiguous()
        return {"tensor": name}
    if isinstance(obj, dict):
        return {"dict": [[k, _flatten(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"list": [_flatten(v, tensors) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"value": obj}
    raise TypeError(f"cannot store a {type(obj).__name__} in a training state")


def _unflatten(node: dict[str, Any], f) -> Any:
    (kind, body), = node.items()
    if kind == "tensor":
        return f.get_tensor(body)
    if kind == "dict":
        return {k: _unflatten(v, f) for k, v in body}
    if kind == "list":
        return [_unflatten(v, f) for v in body]
    if kind == "value":
        return body
    raise ValueError(f"unknown entry {kind!r}")


__all__ = ["CheckpointError", "ModelError", "load_checkpoint",
           "load_train_state", "read_metadata", "read_weights_file", "save_checkpoint"]
