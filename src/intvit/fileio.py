"""Writing files so that nothing is ever half-written, and checking outputs before work.

Every file intvit writes goes through :func:`atomic_write`: the content is written to a
temporary file ``.NAME.PID.XXXX.tmp`` in the destination's folder, flushed to disk, then
renamed onto the destination, so a reader (or a later run after a crash or a full disk)
sees either the old file or the complete new one, never a truncated one. The new file
gets the mode a plain ``open(path, "w")`` would give it (``0666`` less the umask), not
the temporary file's ``0600``. Temporary files left by a killed writer (whose process no
longer runs) are removed by the next write into the same folder. A folder of files
(golden vectors, a C library) is written the same way with :func:`atomic_folder`, which
replaces only a folder it wrote itself, never one of the user's.

:func:`check_output` and :func:`check_distinct` run before a command starts its work, so
an unwritable destination or an output that would overwrite an input is an error at
once, not after an hour of training. :func:`DirLock` keeps two runs out of one folder.

Every command that writes a run folder records what it did in the folder's ``run.json``
(:func:`write_run_manifest`, read back by :func:`read_run_manifest`): the command line,
the intvit, torch and Python versions, the inputs it read, the outputs it wrote and when
it finished. ``intvit report`` reads it.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

TMP_SUFFIX = ".tmp"
LOCK_FILE = ".intvit.lock"
RUN_MANIFEST = "run.json"
MANIFEST_FORMAT = "intvit-run/1"


class OutputError(ValueError):
    """An output that cannot be written where asked; the message says why and what to do."""


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(folder: Path) -> list[Path]:
    """Remove the temporary files of writers that no longer run (killed mid-write)."""
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        parts = entry.name.split(".")
        if not (entry.name.startswith(".") and entry.name.endswith(TMP_SUFFIX)
                and len(parts) >= 5 and parts[-3].isdigit()):
            continue
        if not _alive(int(parts[-3])):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _tmp_name(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def atomic_write(path: str | Path, write: Callable[[str], object], mode: int = 0o666) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see half a file.
    ``mode``: the permissions before the umask (``0o777`` for a program)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give a file name for this output")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_name(path), suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


FOLDER_MARK = ".intvit-output"  # in every folder atomic_folder writes


def check_replaceable_folder(path: str | Path, what: str = "--out") -> None:
    """A folder output may replace only an empty folder or one that :func:`atomic_folder`
    wrote (it holds :data:`FOLDER_MARK`): a folder of the user's own files is never
    swept away by an export."""
    path = Path(path)
    if path.is_dir() and any(path.iterdir()) and not (path / FOLDER_MARK).exists():
        raise OutputError(f"{what} {path} is a folder of other files, which this output "
                          f"would replace; give a new or empty folder, e.g. {path / 'out'}")


def atomic_folder(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_folder)`` then put the folder at ``path`` (replacing an old one
    that this function wrote, see :func:`check_replaceable_folder`): a reader finds the
    old folder or the complete new one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} is a file; give a folder name for this output")
    check_replaceable_folder(path, "output folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path.parent)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_tmp_name(path), suffix=TMP_SUFFIX))
    old = tmp.with_name(tmp.name.replace(TMP_SUFFIX, ".old" + TMP_SUFFIX))
    try:
        write(tmp)
        (tmp / FOLDER_MARK).write_text("written by intvit; replaced whole by the next "
                                       "export here\n")
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, old):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """``path.write_text(text)``, atomically (UTF-8)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | Path, payload: object) -> Path:
    """``payload`` as indented JSON, atomically."""
    return write_text(path, json.dumps(payload, indent=2) + "\n")


def write_bytes(path: str | Path, data: bytes) -> Path:
    """``path.write_bytes(data)``, atomically (an ONNX model's serialization, say)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def command_line(argv: Sequence[str]) -> str:
    """The command line ``intvit ARGS`` as a shell would read it back (``argv``: the
    arguments after the program name, as the caller ran or built them)."""
    return "intvit " + shlex.join(list(argv))


def _manifest_paths(paths: Mapping[str, Any] | None) -> dict[str, Any]:
    def one(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [one(v) for v in value]
        return None if value is None else str(value)

    return {name: one(value) for name, value in (paths or {}).items()}


def write_run_manifest(folder: str | Path, command: str,
                       inputs: Mapping[str, Any] | None = None,
                       outputs: Mapping[str, Any] | None = None) -> Path:
    """Write ``folder/run.json`` atomically and return its path.

    ``command`` is the command line (see :func:`command_line`); ``inputs`` and
    ``outputs`` name the files and folders the command read and wrote (a path, a list
    of paths, or None for an option not given), stored as strings. The manifest also
    holds ``format`` (:data:`MANIFEST_FORMAT`), ``versions`` (intvit, torch, Python) and
    ``finished`` (ISO 8601, local time with offset)."""
    import torch

    from . import __version__

    manifest = {"format": MANIFEST_FORMAT, "command": command,
                "versions": {"intvit": __version__, "torch": torch.__version__,
                             "python": platform.python_version()},
                "inputs": _manifest_paths(inputs), "outputs": _manifest_paths(outputs),
                "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    return write_json(Path(folder) / RUN_MANIFEST, manifest)


def read_run_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The ``run.json`` of ``folder`` written by :func:`write_run_manifest`, or None if
    there is none (a folder written before intvit wrote manifests). Raises ValueError
    if the file is not such a manifest."""
    path = Path(folder) / RUN_MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); rerun the command that wrote "
                         "the folder") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not an intvit run manifest (format "
                         f"{MANIFEST_FORMAT!r}); rerun the command that wrote the folder")
    return manifest


def _writable_folder(folder: Path, what: str) -> None:
    """``folder`` accepts a new file, or can be created (its nearest existing ancestor
    accepts one); nothing is created."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{what}: {existing} is a file, so {folder} cannot be a folder; "
                          f"choose another path")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=_tmp_name(existing),
                                     suffix=TMP_SUFFIX)
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise OutputError(f"{what}: cannot write into {folder} ({err.strerror or err}); "
                          f"choose a writable location") from None


def check_output(path: str | Path | None, what: str, folder: bool = False) -> None:
    """Before any work: the output ``path`` (a file, or a ``folder``) can be written.
    ``what`` names it in the message (e.g. ``"--out"``)."""
    if path is None or path == "":
        return
    path = Path(path)
    if folder:
        if path.exists() and not path.is_dir():
            raise OutputError(f"{what} {path} is a file, not a folder; give a folder path")
        _writable_folder(path, f"{what} {path}")
        return
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name, e.g. "
                          f"{path / 'out'}{path.suffix or ''}")
    _writable_folder(path.parent, f"{what} {path}")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{what} {path} exists and is read-only; choose another path "
                          f"or make it writable")


def check_distinct(outputs: dict[str, str | Path | None],
                   inputs: dict[str, str | Path | None]) -> None:
    """No output is an input (or another output): writing it would destroy what is read."""
    def key(p: str | Path) -> Path:
        return Path(p).expanduser().resolve()

    seen: dict[Path, str] = {}
    for flag, path in inputs.items():
        if path:
            seen.setdefault(key(path), flag)
    for flag, path in outputs.items():
        if not path:
            continue
        other = seen.get(key(path))
        if other is not None:
            raise OutputError(f"{flag} {path} is also {other}: writing it would destroy "
                              f"it; choose another output path")
        seen[key(path)] = flag


class DirLock:
    """An exclusive lock on an output folder for one run (``with DirLock(out, "intvit training"): ...``).

    The lock is an ``flock`` on ``FOLDER/.intvit.lock``, which names its holder: pid,
    host, start time (ISO 8601 with offset) and ``command`` (a name such as ``intvit training``, never the
    arguments: they may hold paths, and need not be UTF-8). A second run is refused with
    that name and told how to clear a stale lock; the kernel releases the lock of a
    process that died, and the next run takes it over with a note.
    """

    def __init__(self, folder: str | Path, command: str,
                 log: Callable[[str], object] = print) -> None:
        self.folder, self.command, self.log, self.file = Path(folder), command, log, None

    def __enter__(self) -> "DirLock":
        import fcntl

        check_output(self.folder, "--output-dir", folder=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_FILE
        f = open(path, "a+", encoding="utf-8", errors="replace")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "a process that did not name itself"
            f.close()
            raise OutputError(
                f"{self.folder} is in use by a running intvit ({holder}); wait for it to "
                f"finish, or choose another --output-dir. If that process no longer runs, "
                f"the lock is stale (a process it started still holds it, or the folder is "
                f"on a network file system): delete {path} and run again") from None
        f.seek(0)
        previous = f.read().strip()
        if previous:
            self.log(f"note: took over the lock of a run that no longer runs ({previous})")
        f.seek(0)
        f.truncate()
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}: "
                f"{self.command}\n")
        f.flush()
        self.file = f
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.seek(0)
            self.file.truncate()
            self.file.close()
            self.file = None

