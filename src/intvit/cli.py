"""The ``intvit`` command line: one sub-command per job, kept in a registry."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from pathlib import Path
from typing import Callable

from . import fileio, progress
from .approx import OPS, REGISTRY, UnknownApproximation
from .data import DataConfig
from .device import resolve_device
from .quant import POINTS, BitWidths, QuantConfig
from .train.options import TrainingStopped

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                          Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None]):
    def register(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (help, arguments, run)
        return run
    return register


def write_json(path: str | None, payload: object) -> None:
    """``--json FILE``: write ``payload`` there (atomically); no file named, no write."""
    if path:
        fileio.write_json(path, payload)


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


def _analyze_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--op", default="all", choices=[*OPS, "all"],
                   help="op to analyze (default: all four)")
    p.add_argument("--variants", default=None,
                   help="comma-separated variant names, e.g. float,ivit_n_20,ppoly_seg_8 "
                        "(default: every family with its default parameters)")
    p.add_argument("--bits", type=bits_arg, default=8, help="input bit-width (default 8)")
    p.add_argument("--out-bits", type=bits_arg, default=8, help="output bit-width (default 8)")
    p.add_argument("--scale", type=positive_float, default=None,
                   help="input scale (default: 8/2^(bits-1) for gelu/exp, fitted to the "
                        "data for softmax/layernorm)")
    p.add_argument("--rows", type=positive_int, default=256,
                   help="rows for softmax/layernorm")
    p.add_argument("--length", type=positive_int, default=197,
                   help="softmax row length (tokens)")
    p.add_argument("--spread", type=positive_float, default=2.0,
                   help="std of the softmax logits")
    p.add_argument("--dim", type=positive_int, default=192,
                   help="layernorm row length (channels)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="FILE", help="write the numbers as JSON")
    p.add_argument("--out", metavar="DIR", help="write plots (PNG) and the table (Markdown)")
    p.add_argument("--from-stats", metavar="FILE",
                   help="measure on the real inputs recorded by `intvit eval --io-stats FILE` "
                        "(the CSV or its .samples.safetensors): per layer, at its input scale, "
                        "bits and row length (--bits/--scale/--rows/--length/--spread/--dim/"
                        "--seed do not apply)")


@command("analyze", "measure approximations against the exact float function",
         _analyze_arguments)
def run_analyze(args: argparse.Namespace) -> int:
    from .analysis.domains import Domain
    from .analysis.errors import analyze
    from .analysis.plots import plot_analysis
    from .analysis.tables import markdown_table

    check_outputs(args, {"--json": "json"}, {"--out": "out"}, {"--from-stats": "from_stats"})
    if args.from_stats:
        return _analyze_from_stats(args)
    ops = list(OPS) if args.op == "all" else [args.op]
    if args.variants and len(ops) > 1:
        raise ValueError("--variants needs a single --op (names differ between ops)")
    out = Path(args.out) if args.out else None
    results, tables = [], []
    for op in ops:
        names = args.variants.split(",") if args.variants else list(REGISTRY[op])
        domain = Domain(op, bits=args.bits, scale=args.scale, rows=args.rows,
                        length=args.length, spread=args.spread, dim=args.dim, seed=args.seed)
        analysis = analyze(op, names, domain, args.out_bits)
        table = markdown_table(analysis)
        print(table)
        tables.append(table)
        results.append(analysis.as_dict())
        if out:
            plot_analysis(analysis, out / f"{op}.png")
    if out:
        figures = "\n".join(f"![{op}]({op}.png)" for op in ops)
        fileio.write_text(out / "approximations.md",
                          "# Approximation errors against float\n\nGenerated by `intvit "
                          + " ".join(sys.argv[1:]) + "`.\n\n" + "\n".join(tables) + "\n"
                          + figures + "\n")
        print(f"plots and table written to {out}/")
        fileio.write_run_manifest(out, args.command_line, {}, {
            "table": out / "approximations.md", "plots": [out / f"{op}.png" for op in ops],
            "json": args.json})
    write_json(args.json, results[0] if len(results) == 1 else {"ops": results})
    return 0


def _analyze_from_stats(args: argparse.Namespace) -> int:
    """``analyze --from-stats FILE``: every variant on each recorded layer's inputs."""
    from .analysis.from_stats import (analyze_from_stats, markdown_report, results_dict,
                                      write_report)

    if args.variants and args.op == "all":
        raise ValueError("--variants needs a single --op (names differ between ops)")
    variants = {args.op: args.variants.split(",")} if args.variants else None
    results = analyze_from_stats(args.from_stats, variants, args.out_bits,
                                 ops=None if args.op == "all" else [args.op])
    print(markdown_report(results))
    if args.out:
        path = write_report(results, args.out,
                            title="Generated by `intvit " + " ".join(sys.argv[1:]) + "`.")
        print(f"plots and table written to {path.parent}/")
        fileio.write_run_manifest(path.parent, args.command_line,
                                  {"stats": args.from_stats}, {"table": path, "json": args.json})
    write_json(args.json, results_dict(results, args.from_stats))
    return 0


def _model_arguments(p: argparse.ArgumentParser, checkpoint: bool = True) -> None:
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


def _quant_arguments(p: argparse.ArgumentParser) -> None:
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


def _data_arguments(p: argparse.ArgumentParser, required: bool = False) -> None:
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


def _calibrate_arguments(p: argparse.ArgumentParser) -> None:
    _model_arguments(p)
    _quant_arguments(p)
    _data_arguments(p)
    device_argument(p)
    p.add_argument("--batches", type=positive_int, default=16, help="calibration batches")
    p.add_argument("--out", required=True, help="the calibrated checkpoint to write")
    p.add_argument("--json", metavar="FILE", help="write the evaluation after calibration")


@command("calibrate", "post-training quantization: set activation ranges, save a checkpoint",
         _calibrate_arguments)
def run_calibrate(args: argparse.Namespace) -> int:
    from .data import build_dataset, build_loader
    from .evaluation import evaluate
    from .models.checkpoint import save_checkpoint
    from .models.factory import ModelSource, make_model
    from .quant import calibrate

    check_outputs(args, {"--out": "out", "--json": "json"}, {},
                  {"--checkpoint": "checkpoint", "--weights": "weights"})
    overrides = model_overrides(args)
    classes = build_dataset(DataConfig(data=args.data), "val")[1]
    if not args.checkpoint and "num_classes" not in overrides:
        overrides["num_classes"] = classes
    model, info = make_model(ModelSource(args.model, args.checkpoint, args.pretrained,
                                         args.weights, overrides), quant_config(args))
    if not model.qcfg.enabled:
        raise ValueError("calibrate needs quantization on (drop --no-quant)")
    if model.cfg.num_classes < classes:
        raise ValueError(f"the model has {model.cfg.num_classes} classes but --data "
                         f"{args.data} has {classes}, whose labels it cannot score; drop "
                         f"--nb-classes (or give --nb-classes {classes})")
    model.to(resolve_device(args.device))
    data = data_config(args, model, info)
    used = calibrate(model, build_loader(data, "train"), args.batches)
    result = evaluate(model, build_loader(data, "val"))
    path = save_checkpoint(args.out, model, {"calibration_batches": used,
                                              "metrics": result.as_dict(),
                                              "data_pipeline": pipeline_options(
                                                  args, recorded_pipeline(info))})
    print(f"calibrated on {used} batches; integer model: {result.summary()}")
    print(f"checkpoint written to {path}")
    write_json(args.json, result.as_dict())
    return 0


def _train_arguments(p: argparse.ArgumentParser) -> None:
    _model_arguments(p)
    _quant_arguments(p)
    _data_arguments(p)
    g = p.add_argument_group("training (the DeiT recipe)")
    g.add_argument("--epochs", type=int, default=30)
    g.add_argument("--lr", type=float, default=5e-7)
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--warmup-epochs", type=float, default=0.0)
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--accum-steps", type=positive_int, default=1,
                   help="gradient accumulation")
    g.add_argument("--clip-grad", type=float)
    g.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    g.add_argument("--mixup", type=float, default=0.0)
    g.add_argument("--cutmix", type=float, default=0.0)
    g.add_argument("--calib-batches", type=int, default=8)
    g.add_argument("--max-steps-per-epoch", type=positive_int)
    g.add_argument("--save-every", type=int, default=0, help="also save every N steps")
    g.add_argument("--output-dir", "--output_dir", dest="output_dir", default="runs/train")
    g.add_argument("--resume", help="a run folder or its last.safetensors")
    g.add_argument("--wandb-project", "--wandb_project", dest="wandb_project")
    g.add_argument("--wandb-entity", "--wandb_entity", dest="wandb_entity")
    g.add_argument("--json", metavar="FILE", help="write the per-epoch metrics")
    device_argument(g)
    g.add_argument("--bf16", action="store_true",
                   help="bf16 autocast of the step's float parts (GPU speed; the integer "
                        "program exported afterwards depends only on the weights and ranges)")
    g.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    g.add_argument("--fused-optimizer", action="store_true", help="AdamW's fused kernel")


@command("train", "quantization-aware training (float with --no-quant)", _train_arguments)
def run_train(args: argparse.Namespace) -> int:
    from .train.loop import run_training

    check_outputs(args, {"--json": "json"}, {"--output-dir": "output_dir"},
                  {"--checkpoint": "checkpoint", "--weights": "weights"})
    config = _resumed_config(args) if args.resume else _train_config(args)
    result = run_training(config)
    if result.pop("rank") == 0:
        print(f"checkpoint: {result['checkpoint']}; best top-1 {result['best_top1']:.2f}%")
        write_json(args.json, result)
        fileio.write_run_manifest(config.output_dir, args.command_line, {
            "checkpoint": args.checkpoint, "weights": args.weights, "resume": args.resume,
            "data": args.data}, {"checkpoint": result["checkpoint"], "json": args.json})
    return 0


def _train_config(args: argparse.Namespace):
    from .train.options import TrainConfig

    qcfg = quant_config(args)
    return TrainConfig(
        model=args.model, data=args.data, model_overrides=model_overrides(args),
        pretrained=args.pretrained, weights=args.weights, checkpoint=args.checkpoint,
        quant=qcfg.as_dict() if qcfg else {}, epochs=args.epochs, lr=args.lr,
        min_lr=args.min_lr, warmup_epochs=args.warmup_epochs, weight_decay=args.weight_decay,
        batch_size=args.batch_size, accum_steps=args.accum_steps, clip_grad=args.clip_grad,
        smoothing=args.smoothing, mixup=args.mixup, cutmix=args.cutmix,
        calib_batches=args.calib_batches, max_steps_per_epoch=args.max_steps_per_epoch,
        save_every=args.save_every, output_dir=args.output_dir, seed=args.seed,
        workers=args.workers, train_limit=args.train_limit, val_limit=args.val_limit,
        data_pipeline=pipeline_options(args),
        wandb_project=args.wandb_project, wandb_entity=args.wandb_entity, device=args.device,
        bf16=args.bf16, compile=args.compile, fused_optimizer=args.fused_optimizer,
        skip_bad_images=args.skip_bad_images, progress=not args.no_progress)


def _resumed_config(args: argparse.Namespace):
    """``train --resume RUN``: the run's saved configuration, with only the training
    options typed now (``--epochs 40`` to extend it, say) changed."""
    from dataclasses import fields, replace

    from .models.checkpoint import read_metadata
    from .train.loop import resume_path
    from .train.options import TrainConfig

    saved = read_metadata(resume_path(args.resume))["info"].get("train")
    if saved is None:
        raise ValueError(f"{args.resume} was not written by `intvit train`; start a new run "
                         f"from it with --checkpoint instead")
    names = {f.name for f in fields(TrainConfig)} - {"model", "model_overrides", "quant",
                                                     "checkpoint", "pretrained", "weights"}
    typed = {k: getattr(args, k) for k in args.given & names if k != "resume"}
    typed |= {"progress": not args.no_progress}
    ignored = sorted(args.given - names - {"resume", "json", "no_progress"})
    if ignored:
        parser = argparse.ArgumentParser()
        _train_arguments(parser)
        flags = {a.dest: a.option_strings[0] for a in parser._actions}
        print(f"note: resuming keeps the run's model, weights and quantization; ignored: "
              f"{', '.join(flags.get(k, k) for k in ignored)}")
    return replace(TrainConfig(**saved), **typed, resume=args.resume)


ENGINE_CHOICES = ("model", "int", "onnx", "tvm")


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="an intvit checkpoint")
    p.add_argument("--program", help="an integer program from `intvit export` (engines int, "
                   "onnx, tvm)")
    p.add_argument("--engine", choices=ENGINE_CHOICES, default="model",
                   help="model: the eval-mode quantized model (default); int, onnx, tvm: the "
                        "integer program (exported from --checkpoint if no --program) on "
                        "PyTorch integer ops, ONNX Runtime or TVM")
    p.add_argument("--debug-overflow", action="store_true",
                   help="engine int: check every declared width and every node's int32 "
                        "output at run time (slower)")
    _data_arguments(p, required=True)
    p.add_argument("--json", metavar="FILE", help="write top1/top3/top5/loss/images_per_s")
    p.add_argument("--io-stats", metavar="FILE",
                   help="record every quantized layer's integer input/output ranges, scales, "
                        "widths and shapes to FILE (CSV; .parquet needs pandas and pyarrow) "
                        "and samples of the GELU/Softmax/LayerNorm inputs next to it "
                        "(FILE's stem + .samples.safetensors; see `analyze --from-stats`)")
    device_argument(p)


@command("eval", "evaluate a checkpoint (the integer model) on a dataset", _eval_arguments)
def run_eval(args: argparse.Namespace) -> int:
    from .data import build_loader
    from .evaluation import evaluate
    from .models.checkpoint import load_checkpoint

    check_outputs(args, {"--json": "json", "--io-stats": "io_stats"}, {},
                  {"--checkpoint": "checkpoint", "--program": "program"})
    if args.engine != "model":
        return _eval_engine(args)
    if not args.checkpoint:
        raise ValueError("eval --engine model needs --checkpoint")
    model, meta = load_checkpoint(args.checkpoint)
    model.to(resolve_device(args.device))
    loader = build_loader(data_config(args, model, meta["info"]), "val")
    if args.io_stats:
        from .analysis.iostats import IOStats

        with IOStats(model) as stats:
            result = evaluate(model, loader)
        table, samples = stats.save(args.io_stats)
        print(f"activation statistics written to {table}"
              + (f", input samples to {samples}" if samples else ""))
    else:
        result = evaluate(model, loader)
    print(result.summary())
    write_json(args.json, {k: v for k, v in result.as_dict().items() if k != "images"})
    return 0


def _eval_engine(args: argparse.Namespace) -> int:
    """``eval --engine int|onnx|tvm``: the integer program on a dataset."""
    from .data import build_loader
    from .engine.commands import load_program, program_data
    from .engine.engines import make_engine
    from .evaluation import evaluate

    if args.io_stats:
        raise ValueError("--io-stats records the model's layers: use --engine model")
    program = load_program(args)
    engine = make_engine(args.engine, program, debug=args.debug_overflow)
    data = program_data(program, args.data, batch_size=args.batch_size, workers=args.workers,
                        seed=args.seed, train_limit=args.train_limit, val_limit=args.val_limit,
                        skip_bad_images=args.skip_bad_images)
    result = evaluate(engine, build_loader(data, "val"), desc=f"eval ({args.engine})")
    print(f"engine {args.engine}: {result.summary()}")
    write_json(args.json, {k: v for k, v in result.as_dict().items() if k != "images"}
               | {"engine": args.engine})
    return 0


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="where to write results")
    _quant_arguments(p)
    device_argument(p)


@command("demo", "the main job on a built-in default: analysis, float baseline, PTQ, QAT",
         _demo_arguments)
def run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo as demo, table

    out = Path(args.out)
    analyze_args = build_parser().parse_args(["analyze", "--op", "all", "--out",
                                              str(out / "analysis"), "--json",
                                              str(out / "analysis" / "analysis.json")])
    analyze_args.command_line = args.command_line
    run_analyze(analyze_args)
    results = demo(out, quant_config(args), args.device)
    from .analysis.report import REPORT_FILE, build_report, discover

    fileio.write_run_manifest(out, args.command_line, {}, {
        "analysis": out / "analysis", "results": out / "results.json",
        "engines": results["engines"]["program"], "report": out / REPORT_FILE})

    found = discover(out)
    engines = results["engines"]
    found["extra_tables"] = found.get("extra_tables", {}) | {
        "Engine parity: integer logits that differ from the eval-mode model's":
            [dict(engine=name, **counts) for name, counts in engines["parity"].items()],
        "Latency (ms; speed-up against PyTorch FP32 eager)": engines["latency"]}
    report = build_report(out / REPORT_FILE, title=f"intvit demo: {out}", run_dir=out,
                          **found)
    print(f"\n{table(results)}\n\nreport: {report} (open it in a browser)\n"
          f"results: {out}/results.json, checkpoints: {out}/, plots: {out}/analysis/")
    return 0


def module_command(name: str, help: str, module: str, arguments: str = "add_arguments",
                   run: str = "run") -> None:
    """Register a command whose ``arguments(p)`` and ``run(args)`` functions live in
    ``module`` (relative to this package, imported when the command is built)."""
    def load():
        return importlib.import_module(module, __package__)

    COMMANDS[name] = (help, lambda p: getattr(load(), arguments)(p),
                      lambda args: getattr(load(), run)(args))


module_command("sweep", "run a W&B sweep file's grid locally, without W&B: one training per "
               "combination, a results table", ".train.sweep")
module_command("search", "search the best combination of GELU/Softmax/LayerNorm "
               "approximations (PTQ accuracy vs hardware cost, Pareto front)",
               ".analysis.search")
module_command("report", "one self-contained HTML report of a run folder: accuracy, "
               "approximation analysis, search results, plots embedded", ".analysis.report")
module_command("export", "export a quantized checkpoint as an integer program, an ONNX graph "
               "or golden test vectors", ".engine.commands", "export_arguments", "run_export")
module_command("verify", "check that engines give identical integer logits (or replay golden "
               "vectors)", ".engine.commands", "verify_arguments", "run_verify")
module_command("bench", "latency of the integer engines against PyTorch FP32, ONNX Runtime "
               "FP32 and ONNX Runtime's dynamic int8 (speed-ups measured in one run)",
               ".engine.bench")
module_command("inspect", "describe an integer program or an exported ONNX graph (ops, "
               "dtypes, sizes)", ".engine.commands", "inspect_arguments", "run_inspect")


def build_parser(only_given: bool = False) -> argparse.ArgumentParser:
    """The parser; ``only_given`` leaves out every default, so that parsing tells which
    options the user typed."""
    parser = argparse.ArgumentParser(prog="intvit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, arguments, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        arguments(p)
        p.add_argument("--no-progress", action="store_true",
                       help="no progress bars (in a log file they are plain lines anyway)")
        if only_given:
            for action in p._actions:
                action.default = argparse.SUPPRESS
        else:
            p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.given = set(vars(build_parser(only_given=True).parse_args(argv))) - {"command"}
    args.command_line = fileio.command_line(argv)
    progress.enable(not args.no_progress)
    try:
        return args.run(args)
    except (UnknownApproximation, ValueError, OverflowError) as err:
        print(f"intvit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except TrainingStopped as err:
        print(f"intvit {args.command}: stopped: {err}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
