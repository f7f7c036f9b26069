"""The engine's parts behind ``intvit export``, ``intvit verify`` and ``intvit inspect``:
the export formats and their file names, the program of a checkpoint, and the comparison
of engines on the same images (the commands themselves are in :mod:`intvit.cli.engine`)."""

from __future__ import annotations

from pathlib import Path

from .engines import ENGINES
from .program import IntProgram

FORMATS = ("int", "onnx", "golden", "c")
SUFFIXES = {"int": ".safetensors", "onnx": ".onnx"}  # golden and c: a folder


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


def export_format(fmt: str | None, out: str) -> str:
    """The format asked for (or the one ``out``'s extension names), checked against
    ``out``: ``.safetensors`` for int, ``.onnx`` for onnx, a folder for golden and c."""
    suffix = Path(out).suffix
    fmt = fmt or ("onnx" if suffix == ".onnx" else "int")
    if fmt in SUFFIXES and Path(out).is_dir():
        raise ValueError(f"--out {out} is a folder; --format {fmt} writes one file, e.g. "
                         f"{Path(out) / ('model' + SUFFIXES[fmt])}")
    want = SUFFIXES.get(fmt)
    if want and suffix != want:
        raise ValueError(f"--format {fmt} writes a {want} file, but --out {out} ends in "
                         f"{suffix or 'no extension'}; name it {Path(out).stem}{want}"
                         + ("" if fmt == "onnx" else " (or use --format onnx for ONNX)"))
    if fmt in ("golden", "c") and suffix in SUFFIXES.values():
        raise ValueError(f"--format {fmt} writes a folder, but --out {out} is named like "
                         f"a file; give a folder name, e.g. {Path(out).with_suffix('')}")
    return fmt


def load_program(program: str | Path | None, checkpoint: str | Path | None) -> IntProgram:
    """The integer program saved in ``program``, or the one exported on the fly from
    ``checkpoint`` (``--program FILE`` / ``--checkpoint CK``)."""
    if program:
        return IntProgram.load(program)
    if not checkpoint:
        raise ValueError("give --checkpoint CK (a calibrated or trained model) or --program "
                         "FILE (from `intvit export`)")
    from ..models.checkpoint import load_checkpoint
    from .export import export_program

    model, _ = load_checkpoint(checkpoint)
    return export_program(model, info={"checkpoint": str(checkpoint)})


def parse_bytes(text: str) -> int:
    """``300000``, ``512K``, ``2M`` (KiB and MiB) as bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = units.get(t[-1:], 1)
    number = t[:-1] if t[-1:] in units else t
    if not number.isdigit():
        raise ValueError(f"--max-ram takes a byte count such as 300000, 512K or 2M; got {text!r}")
    return int(number) * scale


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


def program_data(program: IntProgram, data: str, **fields):
    """The data configuration of a dataset at the program's input size and channels."""
    from ..data import DataConfig
    c, size, _ = program.input_shape
    return DataConfig(data=data, img_size=size, in_chans=c, **fields)


def validation_batches(program: IntProgram, data: str, limit: int, batch_size: int):
    """The first ``limit`` validation images of a dataset, at the program's input size."""
    from ..data import build_loader
    return build_loader(program_data(program, data, batch_size=batch_size, val_limit=limit),
                        "val")
