"""Writing files so that nothing is ever half-written.

Every file intvit writes goes through :func:`atomic_write`: the content is written to a
temporary file in the destination's folder, flushed, then renamed onto the destination,
so a reader (or a later run after a crash or a full disk) sees either the old file or the
complete new one, never a truncated one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """``path.write_text(text)``, atomically (UTF-8)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | Path, payload: object) -> Path:
    """``payload`` as indented JSON, atomically."""
    return write_text(path, json.dumps(payload, indent=2) + "\n")
