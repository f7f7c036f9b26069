"""Running an exported library as a host program (``kernels/intvit_harness.c``): its
logits, and in the debug build (``-DINTVIT_DEBUG``) every node's output, which
:func:`replay_golden` compares with golden vectors layer by layer.

The harness is an executable rather than a shared object so that it can be built with
``-fsanitize=undefined,address``: a sanitizer report, or any failure, is an error that
quotes the program's output.
"""

from __future__ import annotations

import importlib.resources
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ..golden import GoldenReport
from ..program import IntProgram, ProgramError
from .build import build
from .library import CLibrary, generate

DUMP_TYPES = {0: np.int8, 1: np.uint8, 2: np.int16, 3: np.int32}
SANITIZE = ("-O2", "-g", "-fsanitize=undefined,address", "-fno-sanitize-recover=all")


def harness_source() -> str:
    return importlib.resources.files(__package__).joinpath(
        "kernels/intvit_harness.c").read_text()


def run_harness(library: CLibrary, images: torch.Tensor, flags: tuple[str, ...] = ("-O1",),
                debug: bool = False) -> tuple[torch.Tensor, dict[tuple[int, int], np.ndarray]]:
    """Logits (B, classes) of ``images`` through the compiled library, and with ``debug``
    the output of every node per image: ``{(image, node): values}``."""
    flags = (*flags, "-DINTVIT_DEBUG") if debug else tuple(flags)
    exe = build(library, flags, shared=False,
                extra_sources={"intvit_harness.c": harness_source()})
    classes = library.plan.values[library.plan.logits].numel
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / n for n in ("images.f32", "logits.i32", "nodes.bin")]
        paths[0].write_bytes(images.to(torch.float32).contiguous().numpy().tobytes())
        done = subprocess.run([str(exe), *map(str, paths)], capture_output=True, text=True)
        if done.returncode != 0:
            raise ProgramError(f"the compiled C model failed (exit {done.returncode}):\n"
                               f"{(done.stdout + done.stderr)[-4000:]}")
        logits = np.frombuffer(paths[1].read_bytes(), dtype=np.int32).reshape(-1, classes)
        dumps = _read_dumps(paths[2].read_bytes()) if debug else {}
    return torch.from_numpy(logits.astype(np.int64)), dumps


def _read_dumps(data: bytes) -> dict[tuple[int, int], np.ndarray]:
    dumps, at = {}, 0
    while at < len(data):
        image, node, kind, count = np.frombuffer(data, dtype=np.int32, count=4, offset=at)
        at += 16
        dtype = DUMP_TYPES[int(kind)]
        dumps[int(image), int(node)] = np.frombuffer(data, dtype=dtype, count=int(count),
                                                     offset=at)
        at += int(count) * np.dtype(dtype).itemsize
    return dumps


def image_slice(expected: torch.Tensor, shape: tuple[int, ...], images: int, b: int
                ) -> torch.Tensor:
    """Image ``b``'s part of a node output of ``images`` images, whose one-image shape is
    ``shape``: the batch is the one axis that is ``images`` times longer (it need not be
    the first: the attention's stacked q, k, v put it second)."""
    if images == 1:
        return expected
    axes = [a for a, (n, one) in enumerate(zip(expected.shape, shape)) if n == one * images]
    if len(axes) != 1 or len(shape) != expected.dim():
        raise ProgramError(f"cannot find the batch axis of shape {tuple(expected.shape)}")
    return expected.narrow(axes[0], b * shape[axes[0]], shape[axes[0]])


def replay_golden(directory: str | Path, flags: tuple[str, ...] = ("-O1",)) -> GoldenReport:
    """Run a golden directory's images through the debug build of its program's C export
    and compare every node's output with the golden vectors."""
    directory = Path(directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    program = IntProgram.load(directory / manifest["program"])
    library = generate(program)
    first = load_file(str(directory / manifest["nodes"][0]["file"]))
    images = first["input0"]
    _, dumps = run_harness(library, images, flags, debug=True)
    mismatches = []
    for entry in manifest["nodes"]:
        i = entry["index"]
        if entry["op"] == "dequantize":
            continue
        expected = load_file(str(directory / entry["file"]))["output"].to(torch.int64)
        shape = library.plan.values[entry["output"]].shape
        for b in range(images.shape[0]):
            want = image_slice(expected, shape, images.shape[0], b).reshape(-1)
            got = torch.from_numpy(dumps[b, i].astype(np.int64))
            if not torch.equal(got, want):
                mismatches.append(f"node {i} ({entry['op']}, {entry['module']}), image {b}")
                break
    return GoldenReport(sum(e["op"] != "dequantize" for e in manifest["nodes"]), mismatches)
