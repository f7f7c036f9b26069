"""Argument helpers every command group shares: value types (``positive_int``...), the
model, quantization, data and device flags, and the typed configurations they are turned
into (:class:`~intvit.quant.QuantConfig`, :class:`~intvit.data.DataConfig`)."""

from __future__ import annotations

import argparse
import math

from typing import Any, Mapping

from .. import fileio
from ..approx import REGISTRY
from ..data import DataConfig
from ..quant import POINTS, BitWidths, QuantConfig
from ..result_files import write_result


def write_json(path: str | None, kind: str, payload: Mapping[str, Any]) -> None:
    """``--json FILE``: write ``payload`` there (atomically) as a result of ``kind``
    (:func:`~intvit.result_files.write_result`); no file named, no write."""
    if path:
        write_result(path, kind, payload)


def evaluation_figures(result, engine: str) -> dict[str, Any]:
    """An ``evaluation`` result's fields: the figures of :class:`~intvit.evaluation.
    EvalResult` but the image count, and the engine that ran it."""
    figures = {k: v for k, v in result.as_dict().items() if k != "images"}
    return figures | {"engine": engine}


def bits_arg(text: str) -> int:
    value = int(text)
    if not 2 <= value <= 16:
        raise argparse.ArgumentTypeError(f"bit-width must lie in [2, 16], got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite positive number, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


class _OptionRecorder:
    """Stands in for a parser (and its argument groups) while a command adds its flags,
    keeping every :class:`argparse.Action` that ``add_argument`` returns."""

    def __init__(self, target, actions: list[argparse.Action]):
        self._target, self._actions = target, actions

    def add_argument(self, *names, **options) -> argparse.Action:
        action = self._target.add_argument(*names, **options)
        self._actions.append(action)
        return action

    def add_argument_group(self, *args, **kwargs) -> "_OptionRecorder":
        return _OptionRecorder(self._target.add_argument_group(*args, **kwargs),
                               self._actions)


def declared_options(arguments) -> dict[str, argparse.Action]:
    """Option string (``--clip-grad``) -> action of the flags ``arguments(parser)`` adds
    (a command's argument function; ``-h`` is not among them)."""
    actions: list[argparse.Action] = []
    arguments(_OptionRecorder(argparse.ArgumentParser(add_help=False), actions))
    return {flag: a for a in actions for flag in a.option_strings}


def names_list(text: str) -> list[str]:
    """A comma-separated flag value as its non-empty, stripped items."""
    return [t.strip() for t in text.split(",") if t.strip()]


def check_outputs(args: argparse.Namespace, files: dict[str, str], folders: dict[str, str],
                  inputs: dict[str, str]) -> None:
    """Before any work: every output (``flag: attribute``) writable, of the right kind
    (file or folder), and none of them an input."""
    values = {flag: getattr(args, attr, None) for flag, attr in {**files, **folders}.items()}
    for flag, attr in files.items():
        fileio.check_output(values[flag], flag)
    for flag, attr in folders.items():
        fileio.check_output(values[flag], flag, folder=True)
    fileio.check_distinct(values, {f: getattr(args, a, None) for f, a in inputs.items()})


def model_arguments(p: argparse.ArgumentParser, checkpoint: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model",
                   help="deit_tiny (default), deit_small, deit_base, vit_small, vit_base, "
                        "swin_tiny, swin_small, timm's full names, or 'custom' (with the flags "
                        "below); with --checkpoint, checked against the checkpoint's model")
    if checkpoint:
        g.add_argument("--checkpoint", help="start from an intvit checkpoint")
    g.add_argument("--pretrained", action="store_true",
                   help="timm's pretrained weights (hub or local cache; needs a network once)")
    g.add_argument("--weights", help="a local timm/DeiT weights file (.pth, .safetensors)")
    g.add_argument("--input-size", type=positive_int, dest="img_size",
                   help="input resolution")
    g.add_argument("--nb-classes", type=positive_int, dest="num_classes",
                   help="classes (default: the dataset's; must match it)")
    g.add_argument("--in-chans", type=positive_int, dest="in_chans", help="input channels")
    g.add_argument("--patch-size", type=positive_int, dest="patch_size")
    g.add_argument("--embed-dim", type=positive_int, dest="embed_dim")
    g.add_argument("--depth", type=positive_int)
    g.add_argument("--num-heads", type=positive_int, dest="num_heads")


def quant_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("quantization")
    g.add_argument("--bitwidth", help="activation bits (default 8): one value, or 8 "
                   "comma-separated for " + ", ".join(POINTS))
    g.add_argument("--weight-bits", type=bits_arg, help="weight bits (default 8)")
    g.add_argument("--layer-type", "--layer_type", dest="layer_type",
                   help="approximation for GELU, Softmax and LayerNorm at once (default ivit)")
    for op in ("gelu", "softmax", "layernorm"):
        g.add_argument(f"--{op}", help=f"{op} approximation (overrides --layer-type)")
    g.add_argument("--observer", choices=["minmax", "ema", "percentile"],
                   help="activation range observer (default minmax)")
    g.add_argument("--no-quant", action="store_true", help="the float model (baselines)")


def data_arguments(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None if required else "synthetic", required=required,
                   help="synthetic, fashion-mnist, cifar10, cifar100, or an ImageNet-layout "
                        "folder with train/ and val/")
    g.add_argument("--batch-size", type=positive_int, default=64)
    g.add_argument("--workers", "--num_workers", type=int, default=0, dest="workers")
    g.add_argument("--train-limit", type=positive_int, help="use only N training images")
    g.add_argument("--val-limit", type=positive_int, help="use only N validation images")
    g.add_argument("--skip-bad-images", action="store_true",
                   help="folders: leave out images that cannot be read (counted and "
                        "reported) instead of stopping at the first")
    g.add_argument("--seed", type=int, default=0)
    a = p.add_argument_group("data pipeline (timm's train.py flags; default: DataConfig's, or "
                             "what the checkpoint's training recorded)")
    a.add_argument("--hflip", type=float, help="horizontal flip probability (default 0.5)")
    a.add_argument("--scale", type=float, nargs=2, metavar=("LO", "HI"),
                   help="RandomResizedCrop area range (default 0.08 1.0)")
    a.add_argument("--ratio", type=float, nargs=2, metavar=("LO", "HI"),
                   help="RandomResizedCrop aspect range (default 3/4 4/3)")
    a.add_argument("--aa", dest="auto_augment", help="RandAugment/AutoAugment policy, e.g. "
                   "rand-m9-mstd0.5-inc1 (default off)")
    a.add_argument("--reprob", dest="re_prob", type=float,
                   help="random erasing probability (default 0)")
    a.add_argument("--color-jitter", type=float, help="colour jitter strength (default 0)")
    a.add_argument("--interpolation", choices=["bicubic", "bilinear", "nearest", "random"],
                   help="resize interpolation (default bicubic)")
    a.add_argument("--crop-pct", type=float, help="evaluation centre-crop fraction "
                   "(default 0.875)")
    a.add_argument("--mean", type=float, nargs="+", help="normalization mean per channel")
    a.add_argument("--std", type=float, nargs="+", help="normalization std per channel")


PIPELINE_FLAGS = ("hflip", "scale", "ratio", "auto_augment", "re_prob", "color_jitter",
                  "interpolation", "crop_pct", "mean", "std")


def pipeline_options(args: argparse.Namespace, recorded: dict | None = None) -> dict:
    """The data pipeline: what a checkpoint's training recorded, then the flags typed now."""
    typed = {k: getattr(args, k) for k in PIPELINE_FLAGS if getattr(args, k, None) is not None}
    return {**(recorded or {}), **typed}


def recorded_pipeline(info: dict) -> dict:
    """The pipeline a checkpoint was trained or calibrated with (empty: the defaults)."""
    return info.get("data_pipeline") or (info.get("train") or {}).get("data_pipeline") or {}


def device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="auto (default: CUDA when available, else the CPU), cpu, cuda, cuda:N; "
                        "under torchrun each process takes cuda:LOCAL_RANK")


QUANT_FLAGS = ("bitwidth", "weight_bits", "layer_type", "gelu", "softmax", "layernorm",
               "observer", "no_quant")


def quant_config(args: argparse.Namespace) -> QuantConfig | None:
    """The quantization the flags ask for; None when a checkpoint is given and no
    quantization flag is (the checkpoint keeps its own)."""
    if getattr(args, "checkpoint", None) and not any(getattr(args, f) for f in QUANT_FLAGS):
        return None
    layer_type = args.layer_type or "ivit"
    names = {op: getattr(args, op) or layer_type for op in ("gelu", "softmax", "layernorm")}
    for op, name in names.items():
        family = name.split("_")[0]
        if not getattr(args, op) and family not in REGISTRY[op]:
            raise ValueError(f"--layer-type {layer_type}: {op} has no {family!r} variant; "
                             f"add --{op} with one of {', '.join(REGISTRY[op])}")
    return QuantConfig(bits=BitWidths.parse(args.bitwidth or 8),
                       weight_bits=8 if args.weight_bits is None else args.weight_bits,
                       observer=args.observer or "minmax",
                       enabled=not args.no_quant, **names)


def model_overrides(args: argparse.Namespace) -> dict:
    keys = ("img_size", "num_classes", "in_chans", "patch_size", "embed_dim", "depth",
            "num_heads")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def data_config(args: argparse.Namespace, model, info: dict | None = None) -> DataConfig:
    """The data configuration of the flags for ``model``; ``info`` (a checkpoint's) supplies
    the pipeline its training recorded."""
    return DataConfig(data=args.data, img_size=model.cfg.img_size, in_chans=model.cfg.in_chans,
                      batch_size=args.batch_size, workers=args.workers, seed=args.seed,
                      train_limit=args.train_limit, val_limit=args.val_limit,
                      skip_bad_images=args.skip_bad_images,
                      **pipeline_options(args, recorded_pipeline(info or {})))
