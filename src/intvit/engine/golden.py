"""Golden vectors: per node of a program, the integer inputs and output for a few
images, so a hardware team can check an RTL or C implementation layer by layer.

``DIR/program.safetensors`` is the program itself (weights, dyadic pairs, tables);
``DIR/manifest.json`` lists the nodes in order (op, module, attrs, the program tensors
it reads as ``params``, and its file); ``DIR/nodes/NNNN_<op>.safetensors`` holds
``input0``, ``input1``, ... and ``output`` in the narrowest integer type that holds
them (the images and the logits' float form stay float32). A safetensors file is a JSON
header and raw little-endian arrays, simple to read from C.
:func:`check_golden` replays every node through the runtime's ops and compares.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..fileio import atomic_folder
from ..progress import tqdm
from .lowering import compact
from .ops import OPS, as_value
from .program import IntProgram, ProgramError
from .runtime import IntRuntime

MANIFEST_VERSION = 1


def _stored(t: torch.Tensor) -> torch.Tensor:
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        return t.contiguous()
    return compact(t)


def write_golden(program: IntProgram, images: torch.Tensor, out: str | Path,
                 progress: bool = True) -> Path:
    """The folder ``out`` of golden vectors, written whole or not at all
    (:func:`intvit.fileio.atomic_folder`)."""
    values = IntRuntime(program).run(images)
    return atomic_folder(out, lambda tmp: _write_golden(program, images, values, tmp,
                                                        progress))


def _write_golden(program: IntProgram, images: torch.Tensor, values, out: Path,
                  progress: bool) -> None:
    (out / "nodes").mkdir(parents=True, exist_ok=True)
    program.save(out / "program.safetensors")
    entries = []
    for i, node in enumerate(tqdm(program.nodes, desc="golden", disable=not progress)):
        name = f"nodes/{i:04d}_{node.op}.safetensors"
        tensors = {f"input{k}": _stored(values[v]) for k, v in enumerate(node.inputs)}
        tensors["output"] = _stored(values[node.output])
        save_file(tensors, str(out / name))
        entries.append({"index": i, "op": node.op, "module": node.module, "attrs": node.attrs,
                        "params": node.params, "inputs": node.inputs, "output": node.output,
                        "file": name,
                        "shapes": {k: list(t.shape) for k, t in tensors.items()}})
    manifest = {"format": "intvit-golden", "version": MANIFEST_VERSION,
                "program": "program.safetensors", "images": int(images.shape[0]),
                "logits": program.output, "nodes": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))


@dataclass
class GoldenReport:
    nodes: int
    mismatches: list[str]

    @property
    def ok(self) -> bool:
        return not self.mismatches


def check_golden(directory: str | Path, progress: bool = True) -> GoldenReport:
    """Replay every node of a golden directory through the runtime's ops."""
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        raise ProgramError(f"{directory} holds no manifest.json; write golden vectors with "
                           "`intvit export --format golden --out DIR`")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != "intvit-golden" or manifest.get("version") != MANIFEST_VERSION:
        raise ProgramError(f"{manifest_path} is not an intvit golden manifest of version "
                           f"{MANIFEST_VERSION}")
    program = IntProgram.load(directory / manifest["program"])
    mismatches = []
    for entry in tqdm(manifest["nodes"], desc="check", disable=not progress):
        tensors = load_file(str(directory / entry["file"]))
        args = [as_value(tensors[f"input{k}"]) for k in range(len(entry["inputs"]))]
        params = {role: program.tensors[name] for role, name in entry["params"].items()}
        got = OPS[entry["op"]](*args, **entry["attrs"], **params)
        expected = as_value(tensors["output"])
        if got.shape != expected.shape or not torch.equal(got, expected):
            mismatches.append(f"node {entry['index']} ({entry['op']}, {entry['module']})")
    return GoldenReport(len(manifest["nodes"]), mismatches)
