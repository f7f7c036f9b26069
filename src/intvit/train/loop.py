"""Quantization-aware training (and float training with quantization off).

The DeiT recipe: AdamW without weight decay on norms, biases and embeddings; cosine
learning rate per step with linear warmup; label smoothing or mixup/cutmix with soft
targets; gradient accumulation. Activation ranges are calibrated before training (PTQ)
and then kept frozen, so the integer kernels' constants stay fixed during QAT.

Nothing is lost: after every epoch (and every ``save_every`` steps, always at the end of
an accumulation) the model, the optimizer, schedule, position, loss sums, history and
random states go to ``last.safetensors``, one file written atomically, so the weights and
the state found there always belong to the same step. The run holds a lock on its output
folder (a second run into it is refused). ``--resume DIR_OR_CHECKPOINT`` continues exactly
where the last save left off: the data order of each epoch is a function of the seed and the epoch, and the
torch, numpy and Python random states are saved and restored, so with ``--workers 0`` a
resumed run computes exactly what the uninterrupted run would have. A
non-finite loss stops the run before the bad step is applied; the last good checkpoint
stays. When an epoch's steps are not a multiple of ``accum_steps``, its last update
applies the tail's gradients, so none leak into the next epoch.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from ..progress import tqdm

from ..data import DataConfig, build_dataset, build_loader
from ..evaluation import evaluate
from ..fileio import DirLock
from ..models.checkpoint import load_checkpoint, load_train_state, save_checkpoint
from ..models.factory import ModelSource, make_model
from ..quant import QuantConfig, calibrate, is_calibrated
from ..device import resolve_device, to_device
from .distributed import init_from_env, is_main, shutdown
from .options import TrainConfig, TrainingStopped
from .tracking import Tracker

LAST, BEST = "last.safetensors", "best.safetensors"


def _no_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim <= 1 or name.endswith(("cls_token", "pos_embed", "position_bias_table"))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, plain = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (plain if _no_decay(name, param) else decay).append(param)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": plain, "weight_decay": 0.0}], lr=cfg.lr,
                             fused=True if cfg.fused_optimizer else None)


def lr_at(step: int, total: int, warmup: int, cfg: TrainConfig) -> float:
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def make_criterion(cfg: TrainConfig, num_classes: int):
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix,
                      label_smoothing=cfg.smoothing, num_classes=num_classes)
        return mixup, SoftTargetCrossEntropy()
    if cfg.smoothing > 0:
        return None, LabelSmoothingCrossEntropy(cfg.smoothing)
    return None, nn.CrossEntropyLoss()


def resume_path(resume: str) -> Path:
    """The checkpoint ``--resume`` names: a run folder's last one, or the file given."""
    path = Path(resume)
    return path / LAST if path.is_dir() else path


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    rank, world = init_from_env(device)
    try:
        if rank != 0:
            return _train(cfg, rank, world, device)
        with DirLock(cfg.output_dir, "intvit training"):
            return _train(cfg, rank, world, device)
    finally:
        shutdown()


def _train(cfg: TrainConfig, rank: int, world: int, device: torch.device) -> dict[str, Any]:
    log = print if is_main() else (lambda *a, **k: None)
    torch.manual_seed(cfg.seed)  # every rank builds and calibrates the same model
    out = Path(cfg.output_dir)
    state: dict[str, Any] = {}
    if cfg.resume:
        ck_path = resume_path(cfg.resume)
        model, meta = load_checkpoint(ck_path)
        state = load_train_state(ck_path)
        if state["epoch"] >= cfg.epochs:
            raise ValueError(f"{ck_path} has finished {state['epoch']} epochs, and --epochs "
                             f"{cfg.epochs} asks for no more; give --epochs N with N > "
                             f"{state['epoch']} to train further")
        log(f"resuming from {ck_path} at epoch {state['epoch']}, "
            f"step {state['step_in_epoch']}")
    qcfg = QuantConfig.from_dict(cfg.quant) if cfg.quant else None
    data_probe = DataConfig(data=cfg.data, img_size=224, in_chans=3, batch_size=cfg.batch_size,
                            workers=cfg.workers, seed=cfg.seed, train_limit=cfg.train_limit,
                            val_limit=cfg.val_limit, skip_bad_images=cfg.skip_bad_images,
                            **cfg.data_pipeline)
    if not cfg.resume:
        overrides = dict(cfg.model_overrides)
        if "num_classes" not in overrides and not cfg.checkpoint:
            overrides["num_classes"] = build_dataset(data_probe, "val")[1]
        model, _ = make_model(ModelSource(cfg.model, cfg.checkpoint, cfg.pretrained, cfg.weights,
                                          overrides), qcfg, log)
    mcfg, qcfg = model.cfg, model.qcfg
    model.to(device)
    log(f"device: {device}" + (f" (one of {world} processes)" if world > 1 else ""))
    data = DataConfig(**{**data_probe.__dict__, "img_size": mcfg.img_size,
                         "in_chans": mcfg.in_chans})
    train_loader = build_loader(data, "train", distributed=world > 1)
    val_loader = build_loader(data, "val", distributed=world > 1)
    if train_loader.num_classes > mcfg.num_classes:
        raise ValueError(f"the model has {mcfg.num_classes} classes but --data {cfg.data} has "
                         f"{train_loader.num_classes}; drop --nb-classes (or give "
                         f"--nb-classes {train_loader.num_classes})")
    if qcfg.enabled and not state and not is_calibrated(model):
        used = calibrate(model, train_loader, cfg.calib_batches, cfg.progress and is_main())
        log(f"calibrated activation ranges on {used} batches")
    torch.manual_seed(cfg.seed + rank)  # from here on, each rank draws its own augmentation
    model.train()
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    optimizer = make_optimizer(model, cfg)
    mixup, criterion = make_criterion(cfg, mcfg.num_classes)
    steps_per_epoch = len(train_loader)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    updates_per_epoch = -(-steps_per_epoch // cfg.accum_steps)
    total_updates = updates_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * updates_per_epoch)
    if state:
        optimizer.load_state_dict(state["optimizer"])
    epoch0, skip = state.get("epoch", 0), state.get("step_in_epoch", 0)
    update, best = state.get("update", 0), state.get("best_top1", -1.0)
    history: list[dict[str, Any]] = list(state.get("history", []))
    tracker = Tracker(cfg.wandb_project, cfg.wandb_entity,
                      {**cfg.as_dict(), "model_config": mcfg.as_dict(), "quant": qcfg.as_dict()},
                      enabled=is_main())

    def save(epoch: int, step_in_epoch: int, metrics: dict[str, Any] | None = None,
             sums: tuple[int, float] = (0, 0.0)) -> None:
        if not is_main():
            return
        info = {"epoch": epoch, "step_in_epoch": step_in_epoch, "update": update,
                "metrics": metrics or {}, "train": cfg.as_dict()}
        save_checkpoint(out / LAST, model, info, {
            "optimizer": optimizer.state_dict(), "epoch": epoch,
            "step_in_epoch": step_in_epoch, "update": update, "best_top1": best,
            "rng": rng_state(), "seen": sums[0], "loss_sum": sums[1], "history": history})
        tracker.log({"checkpoint": str(out / LAST)}, step=update)

    for epoch in range(epoch0, cfg.epochs):
        if hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        if train_loader.generator is not None:
            train_loader.generator.manual_seed(cfg.seed * 100_003 + epoch)
        if state and skip == 0 and epoch == epoch0:
            set_rng_state(state["rng"])
        model.train()
        seen, loss_sum = (state["seen"], state["loss_sum"]) if skip else (0, 0.0)
        seen0, start = seen, time.perf_counter()
        bar = tqdm(total=steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not (cfg.progress and is_main()), leave=False)
        for step, (images, labels) in enumerate(train_loader):
            if step >= steps_per_epoch:
                break
            if step < skip:  # resuming: replay the order, then the saved randomness
                if step == skip - 1:
                    set_rng_state(state["rng"])
                continue
            images, labels = to_device(images, device), to_device(labels, device)
            if mixup is not None:
                images, labels = mixup(images, labels)
            try:
                with torch.autocast(device.type, torch.bfloat16, enabled=cfg.bf16):
                    loss = criterion(net(images), labels) / cfg.accum_steps
            except (ValueError, ArithmeticError) as err:
                if update == state.get("update", 0):
                    raise  # no update applied yet: the setup is wrong, not the steps
                bar.close()
                tracker.finish()
                raise TrainingStopped(_diverged(f"the integer kernels failed ({err})", epoch,
                                                step, out)) from None
            loss_value = float(loss.detach()) * cfg.accum_steps
            if not math.isfinite(loss_value):
                bar.close()
                tracker.finish()
                raise TrainingStopped(_diverged(f"loss became {loss_value}", epoch, step, out))
            loss.backward()
            if (step + 1) % cfg.accum_steps == 0 or step + 1 == steps_per_epoch:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(update, total_updates, warmup, cfg)
                if cfg.clip_grad:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                update += 1
            seen += images.shape[0]
            loss_sum += loss_value
            rate = (seen - seen0) / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{loss_sum / (step + 1):.4f}", img_s=f"{rate:.1f}",
                            lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            bar.update(1)
            tracker.log({"train/loss": loss_value,
                         "train/lr": optimizer.param_groups[0]["lr"]}, step=update)
            if cfg.save_every and (step + 1) % cfg.save_every == 0:
                save(epoch, step + 1, sums=(seen, loss_sum))
        bar.close()
        skip = 0
        result = evaluate(model, val_loader, cfg.progress and is_main(), "validate")
        metrics = {"epoch": epoch + 1, "train_loss": loss_sum / max(1, steps_per_epoch),
                   **{f"val_{k}": v for k, v in result.as_dict().items()}}
        history.append(metrics)
        log(f"epoch {epoch + 1}: train loss {metrics['train_loss']:.4f}, val {result.summary()}")
        tracker.log({f"val/{k}": v for k, v in result.as_dict().items()}, step=update)
        if result.top1 > best:
            best = result.top1
            if is_main():
                save_checkpoint(out / BEST, model, {"epoch": epoch + 1, "metrics": metrics,
                                                    "train": cfg.as_dict()})
        save(epoch + 1, 0, metrics)
    tracker.summary({"best_top1": best})
    tracker.finish()
    return {"history": history, "best_top1": best, "checkpoint": str(out / LAST),
            "rank": rank}


def _diverged(what: str, epoch: int, step: int, out: Path) -> str:
    """The message of a run stopped because training diverged."""
    return (f"{what} at epoch {epoch + 1}, step {step}: training diverged; stopped before "
            f"applying it. The last good checkpoint is {out / LAST} (resume with --resume "
            f"{out}); try a lower --lr")


def rng_state() -> dict[str, Any]:
    """Every random state augmentation and mixup draw from (torch, numpy, random)."""
    return {"torch": torch.get_rng_state(), "numpy": _np_state_to_tensor(),
            "python": torch.tensor(random.getstate()[1], dtype=torch.int64)}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys, pos = state["numpy"][:-1].numpy().astype(np.uint32), int(state["numpy"][-1])
    np.random.set_state(("MT19937", keys, pos))
    random.setstate((3, tuple(int(v) for v in state["python"]), None))


def _np_state_to_tensor() -> torch.Tensor:
    _, keys, pos, *_ = np.random.get_state()
    return torch.tensor([*keys.tolist(), pos], dtype=torch.int64)
