"""What the engine commands run on: an integer program (saved, or exported from a
checkpoint on the fly) and a data set at the program's input size and channels."""

from __future__ import annotations

from pathlib import Path

from .program import IntProgram


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
