"""The integer program: what ``intvit export`` writes and every engine runs.

A program is a list of nodes over named values, plus named integer tensors:

* a **node** has an ``op`` (one of :data:`intvit.engine.ops.OPS`), its ``inputs`` (value
  or tensor names), one ``output`` value, integer/list ``attrs`` and ``params`` (role ->
  tensor name: weights, biases, dyadic pairs, tables), and the ``module`` of the model it
  was lowered from;
* **tensors** are int8 weights, int32 biases, int32 dyadic ``(m, e)`` pairs, integer
  tables and constants. The only float tensors are the input quantization scale
  (``input.scale``) and the output dequantization scale (``output.scale``).

On disk it is one safetensors file: the tensors, and in the metadata the format name,
its version, the graph as JSON (``intvit inspect FILE`` prints it) and a SHA-256 of the
tensor bytes, so a truncated, corrupted or foreign file is an error that says so.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file

from ..fileio import atomic_write

FORMAT = "intvit-program"
VERSION = 1
FLOAT_TENSORS = ("input.scale", "output.scale")


class ProgramError(ValueError):
    """A program that cannot be built, read or run; the message says why and what to do."""


@dataclass
class Node:
    op: str
    inputs: list[str]
    output: str
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    module: str = ""


@dataclass
class IntProgram:
    nodes: list[Node]
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    input: str = "images"
    output: str = "logits"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.meta["input_shape"])

    @property
    def num_classes(self) -> int:
        return int(self.tensors["output.scale"].numel())

    def graph(self) -> dict[str, Any]:
        """The JSON-able description: format, meta, nodes, and each tensor's dtype/shape."""
        return {"format": FORMAT, "version": VERSION, "meta": self.meta,
                "input": self.input, "output": self.output,
                "tensors": {k: {"dtype": str(v.dtype).removeprefix("torch."),
                                "shape": list(v.shape)} for k, v in self.tensors.items()},
                "nodes": [asdict(n) for n in self.nodes]}

    def check(self) -> None:
        """Structural checks: every input defined before use, only the two scales float."""
        from .ops import OPS
        defined = {self.input, *self.tensors}
        for i, node in enumerate(self.nodes):
            if node.op not in OPS:
                raise ProgramError(f"node {i} ({node.module}) has unknown op {node.op!r}; this "
                                   f"intvit knows {', '.join(OPS)}")
            for name in [*node.inputs, *node.params.values()]:
                if name not in defined:
                    raise ProgramError(f"node {i} ({node.op}, {node.module}) reads {name!r}, "
                                       "which nothing defines before it")
            defined.add(node.output)
        if self.output not in defined:
            raise ProgramError(f"the program's output {self.output!r} is never computed")
        floats = [k for k, v in self.tensors.items() if v.dtype.is_floating_point]
        if sorted(floats) != sorted(FLOAT_TENSORS):
            raise ProgramError(f"an integer program holds exactly two float tensors "
                               f"{FLOAT_TENSORS}; this one holds {floats}")

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def save(self, path: str | Path) -> Path:
        self.check()
        path = Path(path)
        tensors = {k: v.contiguous() for k, v in self.tensors.items()}
        metadata = {"format": FORMAT, "version": str(VERSION),
                    "graph": json.dumps(self.graph()), "sha256": _digest(tensors)}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "IntProgram":
        path = Path(path)
        if not path.is_file():
            raise ProgramError(f"no program at {path}; write one with `intvit export "
                               f"--checkpoint CK --out {path}`")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as err:
            raise ProgramError(f"{path} is not a readable intvit program (truncated or "
                               f"corrupted?): {err}") from err
        if metadata.get("format") != FORMAT:
            raise ProgramError(f"{path} is not an intvit program (format "
                               f"{metadata.get('format')!r}); export one with `intvit export`")
        if metadata.get("version") != str(VERSION):
            raise ProgramError(f"{path} is program format version {metadata.get('version')}; "
                               f"this intvit reads version {VERSION}: re-export it with this "
                               "version's `intvit export`")
        if metadata.get("sha256") != _digest(tensors):
            raise ProgramError(f"{path} is corrupted: its tensors do not match the checksum "
                               "written with them; export it again")
        graph = json.loads(metadata["graph"])
        program = cls([Node(**n) for n in graph["nodes"]], tensors, graph["meta"],
                      graph["input"], graph["output"])
        program.check()
        return program


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    sha = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        sha.update(f"{name}:{t.dtype}:{list(t.shape)};".encode())
        sha.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()
