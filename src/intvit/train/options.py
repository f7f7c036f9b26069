"""Everything a training run is configured with (the flags of the original
``quant_train.py`` plus the DeiT recipe), serializable for checkpoints and W&B."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


class TrainingStopped(RuntimeError):
    """Training stopped on purpose (a non-finite loss); the message says what was kept."""


@dataclass
class TrainConfig:
    model: str | None = None
    data: str = "synthetic"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    weights: str | None = None
    checkpoint: str | None = None
    quant: dict[str, Any] = field(default_factory=dict)
    epochs: int = 30
    lr: float = 5e-7
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    weight_decay: float = 0.05
    batch_size: int = 64
    accum_steps: int = 1
    clip_grad: float | None = None
    smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    calib_batches: int = 8
    max_steps_per_epoch: int | None = None
    save_every: int = 0
    output_dir: str = "runs/train"
    resume: str | None = None
    seed: int = 0
    workers: int = 0
    train_limit: int | None = None
    val_limit: int | None = None
    data_pipeline: dict[str, Any] = field(default_factory=dict)  # DataConfig's augmentation
    wandb_project: str | None = None
    wandb_entity: str | None = None
    skip_bad_images: bool = False
    progress: bool = True
    device: str = "auto"                 # auto, cpu, cuda, cuda:N (torchrun: LOCAL_RANK)
    # fast QAT on a GPU; off by default, so a CPU run computes what it always did
    bf16: bool = False                   # bf16 autocast of the float parts of the step
    compile: bool = False                # torch.compile the model's training forward
    fused_optimizer: bool = False        # AdamW's fused kernel

    def __post_init__(self) -> None:
        problems = [f"{name} {why}, got {getattr(self, name)!r}"
                    for name, ok, why in self._checks() if not ok]
        if problems:
            raise ValueError("invalid training options: " + "; ".join(problems)
                             + " (flags are the names with - for _, e.g. --clip-grad)")

    def _checks(self):
        def finite(v) -> bool:
            return isinstance(v, (int, float)) and math.isfinite(v)

        def count(v, low: int) -> bool:
            return isinstance(v, int) and v >= low

        def optional(v, low: int) -> bool:
            return v is None or count(v, low)

        return [
            ("epochs", count(self.epochs, 1), "must be >= 1"),
            ("batch_size", count(self.batch_size, 1), "must be >= 1"),
            ("accum_steps", count(self.accum_steps, 1), "must be >= 1"),
            ("lr", finite(self.lr) and self.lr > 0, "must be a finite number > 0"),
            ("min_lr", finite(self.min_lr) and 0 <= self.min_lr <= self.lr,
             "must be a finite number in [0, lr]"),
            ("warmup_epochs", finite(self.warmup_epochs) and self.warmup_epochs >= 0,
             "must be a finite number >= 0"),
            ("weight_decay", finite(self.weight_decay) and self.weight_decay >= 0,
             "must be a finite number >= 0"),
            ("clip_grad", self.clip_grad is None or (finite(self.clip_grad)
                                                     and self.clip_grad > 0),
             "must be a finite number > 0 (or unset: no clipping)"),
            ("smoothing", finite(self.smoothing) and 0 <= self.smoothing < 1,
             "must lie in [0, 1)"),
            ("mixup", finite(self.mixup) and self.mixup >= 0, "must be >= 0 (0: off)"),
            ("cutmix", finite(self.cutmix) and self.cutmix >= 0, "must be >= 0 (0: off)"),
            ("calib_batches", count(self.calib_batches, 0), "must be >= 0"),
            ("max_steps_per_epoch", optional(self.max_steps_per_epoch, 1),
             "must be >= 1 (or unset: the whole epoch)"),
            ("save_every", count(self.save_every, 0) and self.save_every % self.accum_steps
             == 0, f"must be >= 0 (0: only per epoch) and a multiple of accum_steps "
                   f"({self.accum_steps}), so saves fall between updates"),
            ("seed", count(self.seed, 0), "must be >= 0"),
            ("workers", count(self.workers, 0), "must be >= 0"),
            ("train_limit", optional(self.train_limit, 1), "must be >= 1 (or unset)"),
            ("val_limit", optional(self.val_limit, 1), "must be >= 1 (or unset)"),
        ]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
