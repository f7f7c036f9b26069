"""The host's C compiler as the ``c`` engine's build uses it, and the build cache.

Every product of the build (a weights object, the linked library) is one file under
``$INTVIT_CACHE/c/`` (default ``~/.cache/intvit``), named by a hash of everything that
went into it, written atomically (:func:`intvit.fileio.atomic_write`) with the sha256 of
its bytes beside it in ``NAME.sha256``. :func:`cached` uses an entry only when that
digest matches: a missing, truncated or altered file is built again, never loaded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from ...fileio import atomic_write, write_text
from ..program import ProgramError

_OPENMP: dict[str, bool] = {}
_VERSION: dict[str, str] = {}


def compiler() -> str:
    """``$CC``, else ``cc``/``gcc``/``clang`` on the PATH."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    raise ProgramError("the c engine needs a C compiler: install gcc or clang, or set CC")


def compiler_version(cc: str) -> str:
    """``cc --version``, asked once per process: part of every cache key."""
    if cc not in _VERSION:
        _VERSION[cc] = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    return _VERSION[cc]


def has_openmp(cc: str) -> bool:
    """Whether ``cc -fopenmp`` compiles and links a program that includes ``omp.h``."""
    if cc not in _OPENMP:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "omp.c"
            src.write_text("#include <omp.h>\nint main(void) { return omp_get_max_threads() < 1; }\n")
            done = subprocess.run([cc, "-fopenmp", "-o", str(Path(tmp) / "omp"), str(src)],
                                  capture_output=True)
            _OPENMP[cc] = done.returncode == 0
    return _OPENMP[cc]


def run_compiler(command: list[str], what: str, cwd: str | Path | None = None) -> None:
    """Run a compiler command; its failure is an error quoting the compiler's output."""
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd)
    if done.returncode != 0:
        raise ProgramError(f"compiling {what} failed:\n{(done.stdout + done.stderr)[-4000:]}")


def cache_root() -> Path:
    return Path(os.environ.get("INTVIT_CACHE", Path.home() / ".cache" / "intvit")) / "c"


def key(*parts: str) -> str:
    """A cache name: the sha256 (24 hex digits) of ``parts``."""
    sha = hashlib.sha256()
    for part in parts:
        sha.update(part.encode())
        sha.update(b"\0")
    return sha.hexdigest()[:24]


def file_digest(path: Path) -> str:
    """The sha256 of a file's bytes, read a MiB at a time (``hashlib.file_digest`` needs
    Python 3.11; intvit supports 3.10)."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def cached(path: Path, make: Callable[[str], object], executable: bool = False) -> Path:
    """``path`` if its bytes match the digest recorded beside it, else made again by
    ``make(tmp)`` (which writes the file ``tmp``) and then recorded; ``executable``: a
    program (mode 0777 less the umask)."""
    digest = path.with_name(path.name + ".sha256")
    if path.is_file() and digest.is_file() and digest.read_text().strip() == file_digest(path):
        return path
    atomic_write(path, make, 0o777 if executable else 0o666)
    write_text(digest, file_digest(path) + "\n")
    return path
