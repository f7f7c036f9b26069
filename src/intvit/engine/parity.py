"""Engines compared on the same images (``intvit verify``, the demo): which engines to
compare, and the count of integer logits and images in which each differs from the
first."""

from __future__ import annotations

from .engines import ENGINES


def engine_list(text: str, have_checkpoint: bool) -> list[str]:
    """``--engines a,b,...``: at least two known, distinct engines."""
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    known = ["model", *ENGINES]
    unknown = [k for k in kinds if k not in known]
    if unknown:
        raise ValueError(f"unknown engine(s) {', '.join(unknown)}; engines: "
                         f"{', '.join(known)}, e.g. --engines model,int,onnx")
    twice = sorted({k for k in kinds if kinds.count(k) > 1})
    if twice:
        raise ValueError(f"--engines names {', '.join(twice)} more than once; an engine "
                         f"compared with itself proves nothing")
    if len(kinds) < 2:
        raise ValueError(f"verify compares at least two engines, got {text!r}; e.g. "
                         f"--engines model,int,onnx (engines: {', '.join(known)})")
    if "model" in kinds and not have_checkpoint:
        raise ValueError("engine 'model' needs --checkpoint")
    return kinds


def compare_engines(engines: dict, batches) -> dict[str, dict[str, int]]:
    """Run every engine on the same batches; count logits and images that differ from the
    first engine's."""
    names = list(engines)
    counts = {n: {"images": 0, "logits": 0, "differing_logits": 0, "differing_images": 0}
              for n in names[1:]}
    for images in batches:
        reference = engines[names[0]](images)
        for name in names[1:]:
            got = engines[name](images)
            differs = got != reference
            c = counts[name]
            c["images"] += images.shape[0]
            c["logits"] += differs.numel()
            c["differing_logits"] += int(differs.sum())
            c["differing_images"] += int(differs.any(dim=1).sum())
    return counts
