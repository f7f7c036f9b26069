"""Where the ``int`` and ``c`` engines' time goes, by op class: each node of the program
timed as the engine runs it (``intvit bench --profile``; the ``c`` engine through its
profile build, :mod:`.c.profile`).

An engine profiled in a fresh process (``python -m intvit.engine.c.profile SPEC``, and
``intvit.engine.tvm.profile``'s) reads its program and images from a spec that
:func:`write_profile_spec` writes and :func:`read_profile_spec` reads back.

| class          | program ops                        |
|----------------|------------------------------------|
| int8 products  | ``linear``, ``matmul``             |
| requantization | ``requantize``                     |
| GELU           | ``lookup`` (the GELU table)        |
| Softmax        | ``softmax``                        |
| LayerNorm      | ``layernorm``                      |
| quantization   | ``quantize``, ``dequantize``       |
| data movement  | every other op (reshape, transpose, take, slice, concat, broadcast, roll, pad, where, sum) |

In the ``c`` engine a requantize fused into its product (``MATMUL8_RQ``) has no time of its
own: it counts under int8 products.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import torch

from ..tables import markdown_table
from .program import IntProgram
from .runtime import IntRuntime

OP_CLASSES = {"linear": "int8 products", "matmul": "int8 products",
              "requantize": "requantization", "lookup": "GELU", "softmax": "Softmax",
              "layernorm": "LayerNorm", "quantize": "quantization",
              "dequantize": "quantization"}
CLASSES = ("int8 products", "requantization", "GELU", "Softmax", "LayerNorm",
           "quantization", "data movement")


def op_class(op: str) -> str:
    return OP_CLASSES.get(op, "data movement")


def profile_int(program: IntProgram, images: torch.Tensor, repeats: int = 3
                ) -> dict[str, float]:
    """Milliseconds per op class (every class of :data:`CLASSES`) of one ``int`` engine
    run on ``images``, the mean of ``repeats`` runs after one warm-up run."""
    runtime = IntRuntime(program)
    totals: dict[str, float] = defaultdict(float)
    for run in range(repeats + 1):
        values = dict(runtime.constants)
        values[program.input] = images.to(torch.float32)
        with torch.inference_mode():
            for node, (fn, inputs, kwargs, output, _) in zip(program.nodes, runtime.steps):
                start = time.perf_counter()
                values[output] = fn(*[values[i] for i in inputs], **kwargs)
                if run:
                    totals[op_class(node.op)] += time.perf_counter() - start
    return {c: 1e3 * totals[c] / repeats for c in CLASSES}


def profile_c(program: IntProgram, images: torch.Tensor, threads: int = 1, repeats: int = 3,
              flags: tuple[str, ...] | None = None) -> dict[str, float]:
    """Milliseconds per op class of the ``c`` engine running ``images`` one after another,
    each on ``threads`` OpenMP threads (the engine's batch split over threads is not
    modelled), each node's median over ``repeats`` runs after one warm-up run; ``flags`` as
    :class:`.c.build.CEngine`'s (default: the engine's build)."""
    from .c.profile import ProfiledCEngine

    seconds, _ = ProfiledCEngine(program, threads, flags).node_seconds(images, repeats)
    totals: dict[str, float] = defaultdict(float)
    for node, s in zip(program.nodes, seconds):
        totals[op_class(node.op)] += s
    return {c: 1e3 * totals[c] for c in CLASSES}


def write_profile_spec(program: IntProgram, images: dict[int, torch.Tensor], threads: int,
                       workdir: Path) -> dict:
    """A fresh-process profile's spec (JSON-able): ``program`` and each batch's
    ``images`` saved under ``workdir``, and the engine's thread count."""
    from safetensors.torch import save_file

    workdir.mkdir(parents=True, exist_ok=True)
    inputs = {}
    for batch, x in images.items():
        inputs[batch] = str(workdir / f"profile_inputs_{batch}.safetensors")
        save_file({"images": x.contiguous()}, inputs[batch])
    return {"program": str(program.save(workdir / "profile_program.safetensors")),
            "inputs": inputs, "threads": threads}


def read_profile_spec(spec: dict) -> tuple[IntProgram, dict[int, torch.Tensor]]:
    """The program and the images per batch of a :func:`write_profile_spec` spec (after
    its trip through JSON, whose keys are strings)."""
    from safetensors.torch import load_file

    return IntProgram.load(spec["program"]), {int(b): load_file(path)["images"]
                                              for b, path in spec["inputs"].items()}


def profile_markdown(label: str, profiles: dict[int, dict[str, float]]) -> str:
    """A table: one row per op class, one column per batch size (ms and share)."""
    batches = sorted(profiles)
    headers = [f"{label}: op class"] + [h for b in batches for h in (f"batch {b}: ms", "share")]
    rows = []
    for c in CLASSES:
        cells = [c]
        for b in batches:
            total = sum(profiles[b].values()) or 1.0
            cells += [f"{profiles[b][c]:.1f}", f"{100 * profiles[b][c] / total:.0f}%"]
        rows.append(cells)
    rows.append(["total"] + [cell for b in batches
                             for cell in (f"{sum(profiles[b].values()):.1f}", "100%")])
    return markdown_table(headers, rows, align="l" + "rr" * len(batches))
