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
its version, the graph as JSON (``intvit inspect FILE`` prints it) and a SHA-256 of
everything that defines the program (the graph's JSON text, then each tensor's name,
dtype, shape and bytes), so a truncated, corrupted, edited or foreign file is an error
that says so. :meth:`IntProgram.check` also checks each node's attributes against its
op's signature (names, and integer values where integers are due).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file

from ..fileio import atomic_write

FORMAT = "intvit-program"
VERSION = 2  # 2: the checksum covers the graph too
FLOAT_TENSORS = ("input.scale", "output.scale")


class ProgramError(ValueError):
    """A program that cannot be built, read or run; the message says why and what to do."""


class NotIntegerOnly(ProgramError):
    """A model that has no integer program: a kernel of it is a float reference or has no
    integer data (only the model itself evaluates it)."""


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
            _check_attrs(i, node, OPS[node.op])
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
        graph = json.dumps(self.graph())
        metadata = {"format": FORMAT, "version": str(VERSION),
                    "graph": graph, "sha256": _digest(tensors, graph)}
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
            hint = (" It is an ONNX file: run it with --engine onnx after exporting with "
                    "`intvit export --format onnx`, or give the integer program "
                    "(.safetensors) here" if _looks_like_onnx(path) else "")
            raise ProgramError(f"{path} is not a readable intvit program (truncated or "
                               f"corrupted, or another kind of file): {err}.{hint}") from None
        if metadata.get("format") != FORMAT:
            raise ProgramError(f"{path} is not an intvit program (format "
                               f"{metadata.get('format')!r}); export one with `intvit export`")
        if metadata.get("version") != str(VERSION):
            raise ProgramError(f"{path} is program format version {metadata.get('version')}; "
                               f"this intvit reads version {VERSION}: re-export it with this "
                               "version's `intvit export`")
        if metadata.get("sha256") != _digest(tensors, metadata.get("graph", "")):
            raise ProgramError(f"{path} is corrupted or was edited: its graph and tensors do "
                               "not match the checksum written with them; export it again")
        try:
            graph = json.loads(metadata["graph"])
            program = cls([Node(**n) for n in graph["nodes"]], tensors, graph["meta"],
                          graph["input"], graph["output"])
        except (KeyError, TypeError, ValueError) as err:
            raise ProgramError(f"{path} has a malformed graph ({type(err).__name__}: {err}); "
                               "export it again") from None
        program.check()
        return program


def _looks_like_onnx(path: Path) -> bool:
    try:
        import onnx

        onnx.load(str(path), load_external_data=False)
        return True
    except Exception:  # noqa: BLE001  (anything unreadable is simply not ONNX)
        return False


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_tree(v: Any) -> bool:
    """An integer, or a (nested) list of integers."""
    return _is_int(v) or (isinstance(v, list) and all(_int_tree(x) for x in v))


def _check_attrs(i: int, node: Node, fn) -> None:
    """``node``'s attributes and params are the keyword arguments of its op: no unknown
    one, every required one, integers (or lists of them) where the op takes no string;
    ``lo <= hi``."""
    where = f"node {i} ({node.op}, {node.module})"
    if not isinstance(node.attrs, dict) or not isinstance(node.params, dict):
        raise ProgramError(f"{where}: attrs and params must be JSON objects")
    keyword = {n: p for n, p in inspect.signature(fn).parameters.items()
               if p.kind is inspect.Parameter.KEYWORD_ONLY}
    given = {**node.attrs, **node.params}
    unknown = sorted(set(given) - set(keyword))
    missing = sorted(n for n, p in keyword.items()
                     if p.default is inspect.Parameter.empty and n not in given)
    if unknown or missing:
        raise ProgramError(f"{where}: " + "; ".join(
            ([f"unknown attribute(s) {', '.join(unknown)}"] if unknown else [])
            + ([f"missing attribute(s) {', '.join(missing)}"] if missing else []))
            + f"; {node.op} takes {', '.join(keyword)}")
    for name, value in node.attrs.items():
        textual = isinstance(keyword[name].default, str)
        if not (isinstance(value, str) if textual else (_int_tree(value) or
                                                        isinstance(value, bool))):
            raise ProgramError(f"{where}: attribute {name} = {value!r} must be "
                               f"{'a string' if textual else 'an integer (or a list of them)'}")
    for name, value in node.params.items():
        if not isinstance(value, str):
            raise ProgramError(f"{where}: param {name} = {value!r} must name a tensor")
    lo, hi = node.attrs.get("lo"), node.attrs.get("hi")
    if _is_int(lo) and _is_int(hi) and lo > hi:
        raise ProgramError(f"{where}: clamp bounds lo = {lo} > hi = {hi}")


def _digest(tensors: dict[str, torch.Tensor], graph: str) -> str:
    sha = hashlib.sha256()
    sha.update(graph.encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        sha.update(f"{name}:{t.dtype}:{list(t.shape)};".encode())
        sha.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()
