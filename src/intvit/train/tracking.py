"""Weights & Biases logging: optional, never required, offline-capable
(``WANDB_MODE=offline``). Without a project nothing is imported or logged."""

from __future__ import annotations

from typing import Any


class Tracker:
    def __init__(self, project: str | None, entity: str | None, config: dict[str, Any],
                 name: str | None = None, enabled: bool = True) -> None:
        self.run = None
        if not project or not enabled:
            return
        try:
            import wandb
        except ImportError:
            raise ValueError("--wandb-project needs the wandb package: pip install wandb "
                             "(or drop the flag)") from None
        self.run = wandb.init(project=project, entity=entity, config=config, name=name)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
