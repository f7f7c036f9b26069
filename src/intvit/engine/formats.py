"""The formats of ``intvit export`` and the file names each writes: ``int`` (the integer
program, ``.safetensors``), ``onnx`` (its ONNX graph, ``.onnx``), ``golden`` (per-layer
test vectors, a folder) and ``c`` (the C99 library, a folder)."""

from __future__ import annotations

from pathlib import Path

FORMATS = ("int", "onnx", "golden", "c")
SUFFIXES = {"int": ".safetensors", "onnx": ".onnx"}  # golden and c: a folder


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
