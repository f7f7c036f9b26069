"""``intvit calibrate`` and ``intvit train``: post-training quantization and QAT, their
flags turned into a :class:`~intvit.train.options.TrainConfig` (or a calibration)."""

from __future__ import annotations

import argparse

from .. import fileio
from ..data import DataConfig
from ..device import resolve_device
from .common import (check_outputs, data_arguments, data_config, declared_options,
                     device_argument, model_arguments, model_overrides, pipeline_options,
                     evaluation_figures, positive_int, quant_arguments, quant_config,
                     recorded_pipeline, write_json)


def calibrate_arguments(p: argparse.ArgumentParser) -> None:
    model_arguments(p)
    quant_arguments(p)
    data_arguments(p)
    device_argument(p)
    p.add_argument("--batches", type=positive_int, default=16, help="calibration batches")
    p.add_argument("--out", required=True, help="the calibrated checkpoint to write")
    p.add_argument("--json", metavar="FILE", help="write the evaluation after calibration")


def run_calibrate(args: argparse.Namespace) -> int:
    from ..data import build_dataset, build_loader
    from ..evaluation import evaluate
    from ..models.checkpoint import save_checkpoint
    from ..models.factory import ModelSource, make_model
    from ..quant import calibrate

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
    write_json(args.json, "evaluation", evaluation_figures(result, "model"))
    return 0


def train_arguments(p: argparse.ArgumentParser) -> None:
    model_arguments(p)
    quant_arguments(p)
    data_arguments(p)
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


def run_train(args: argparse.Namespace) -> int:
    from ..train.loop import run_training

    check_outputs(args, {"--json": "json"}, {"--output-dir": "output_dir"},
                  {"--checkpoint": "checkpoint", "--weights": "weights"})
    config = resumed_config(args) if args.resume else train_config(args)
    result = run_training(config)
    if result.pop("rank") == 0:
        print(f"checkpoint: {result['checkpoint']}; best top-1 {result['best_top1']:.2f}%")
        write_json(args.json, "training", result)
        fileio.write_run_manifest(config.output_dir, args.command_line, {
            "checkpoint": args.checkpoint, "weights": args.weights, "resume": args.resume,
            "data": args.data}, {"checkpoint": result["checkpoint"], "json": args.json})
    return 0


def train_config(args: argparse.Namespace):
    """The :class:`~intvit.train.options.TrainConfig` of parsed ``intvit train`` flags
    (a new run; see :func:`resumed_config` for ``--resume``)."""
    from ..train.options import TrainConfig

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


def train_flags() -> dict[str, str]:
    """Each ``intvit train`` option's destination -> its first flag (``clip_grad`` ->
    ``--clip-grad``)."""
    flags: dict[str, str] = {}
    for flag, action in declared_options(train_arguments).items():
        flags.setdefault(action.dest, action.option_strings[0])
    return flags


def resumed_config(args: argparse.Namespace):
    """``train --resume RUN``: the run's saved configuration, with only the training
    options typed now (``--epochs 40`` to extend it, say) changed."""
    from dataclasses import fields, replace

    from ..models.checkpoint import read_metadata
    from ..train.loop import resume_path
    from ..train.options import TrainConfig

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
        flags = train_flags()
        print(f"note: resuming keeps the run's model, weights and quantization; ignored: "
              f"{', '.join(flags.get(k, k) for k in ignored)}")
    return replace(TrainConfig(**saved), **typed, resume=args.resume)
