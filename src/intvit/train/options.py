"""Everything a training run is configured with (the flags of the original
``quant_train.py`` plus the DeiT recipe), serializable for checkpoints and W&B."""

from __future__ import annotations

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
    progress: bool = True
    device: str = "auto"                 # auto, cpu, cuda, cuda:N (torchrun: LOCAL_RANK)
    # fast QAT on a GPU; off by default, so a CPU run computes what it always did
    bf16: bool = False                   # bf16 autocast of the float parts of the step
    compile: bool = False                # torch.compile the model's training forward
    fused_optimizer: bool = False        # AdamW's fused kernel

    def __post_init__(self) -> None:
        checks = {"epochs": self.epochs >= 1, "batch_size": self.batch_size >= 1,
                  "accum_steps": self.accum_steps >= 1, "lr": self.lr > 0,
                  "calib_batches": self.calib_batches >= 0}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid training options: {', '.join(bad)} "
                             f"(epochs, batch size and accumulation >= 1, lr > 0)")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
