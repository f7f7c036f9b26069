"""Evaluate a model on a dataset: top-1/3/5 accuracy, loss and throughput."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from .progress import tqdm

from .device import cpu_chunks, model_device, to_device
from .quant import Mode


@dataclass
class EvalResult:
    top1: float
    top3: float
    top5: float
    loss: float
    images_per_s: float
    images: int

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"top-1 {self.top1:.2f}%  top-3 {self.top3:.2f}%  top-5 {self.top5:.2f}%  "
                f"loss {self.loss:.4f}  {self.images_per_s:.1f} images/s  ({self.images} images)")


def exact_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Float64 logits; for the integer model, the int32 logits times their scales, exact
    (a float32 product would round integers above 2^24), on a CPU in chunks of images
    (:func:`~intvit.device.cpu_chunks`). An engine of
    :mod:`intvit.engine` gives its own."""
    if hasattr(model, "exact_logits"):
        return model.exact_logits(images)
    if getattr(model, "mode", None) is Mode.INT:
        chunks = [model.forward_int(chunk) for chunk in cpu_chunks(images)]
        return torch.cat([c.value.double() * c.scale.double() for c in chunks])
    return model(images).double()


def integer_evaluator(model: nn.Module, engine: str = "model"):
    """What evaluates ``model``'s integers: the eval-mode model itself (``model``), or the
    engine ``engine`` of :mod:`intvit.engine` (``auto``: the fastest this machine can
    build; on a GPU the model) on the program exported from it. All give the same
    integers, so the same accuracy; an engine pays its export and build once. A model
    with a kernel that has no integer data (a float reference) is evaluated by itself."""
    engine = resolve_engine(model, engine)
    if engine == "model":
        return model
    from .engine import export_program
    from .engine.engines import make_engine
    from .engine.program import NotIntegerOnly
    try:
        program = export_program(model)
    except NotIntegerOnly:
        return model
    return make_engine(engine, program)


def resolve_engine(model: nn.Module, engine: str) -> str:
    """``auto``: the model on a GPU, else the fastest engine this machine can build; any
    other name as it is."""
    if engine != "auto":
        return engine
    from .engine.engines import fastest_engine
    return "model" if model_device(model).type != "cpu" else fastest_engine()


@torch.no_grad()
def evaluate(model: nn.Module, loader, progress: bool = True, desc: str = "eval") -> EvalResult:
    """Evaluate in the model's eval mode (the integer model when quantization is on), or
    an inference engine."""
    if isinstance(model, nn.Module):
        model.eval()
    device = model_device(model)
    totals = torch.zeros(5, dtype=torch.float64)  # images, loss sum, top1, top3, top5
    start = time.perf_counter()
    for images, labels in tqdm(loader, desc=desc, disable=not progress, leave=False):
        logits = exact_logits(model, to_device(images, device)).cpu()
        totals[0] += labels.shape[0]
        totals[1] += float(F.cross_entropy(logits, labels, reduction="sum"))
        ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = ranked == labels[:, None]
        for slot, k in enumerate((1, 3, 5), start=2):
            totals[slot] += float(hits[:, :k].any(dim=1).sum())
    elapsed = time.perf_counter() - start
    if dist.is_available() and dist.is_initialized():
        reduced = totals.to(device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(reduced)
        totals = reduced.cpu()
    images = int(totals[0])
    if images == 0:
        raise ValueError("evaluation saw no images: the dataset is empty")
    pct = lambda v: 100.0 * float(v) / images  # noqa: E731
    return EvalResult(pct(totals[2]), pct(totals[3]), pct(totals[4]), float(totals[1]) / images,
                      images / elapsed if elapsed > 0 else float("inf"), images)
