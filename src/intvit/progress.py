"""Progress bars people can read in a terminal and in a log file.

:class:`tqdm` is tqdm's bar with two changes: when its stream is not a terminal (output
redirected to a file, a CI log), it writes one plain line at most every
:data:`LOG_INTERVAL` seconds (tqdm's ``mininterval``) instead of carriage-return frames,
and :func:`enable` (``False`` for ``--no-progress``) turns every bar off.
"""

from __future__ import annotations

import sys

from tqdm import tqdm as _tqdm

LOG_INTERVAL = 10.0
_enabled = True


def enable(on: bool) -> None:
    """Progress bars from here on, or none (``--no-progress``)."""
    global _enabled
    _enabled = bool(on)


class _Lines:
    """A stream wrapper that turns tqdm's ``\\r``-separated frames into plain lines."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        for piece in text.replace("\r", "\n").split("\n"):
            if piece.strip():
                self.stream.write(piece.rstrip() + "\n")

    def flush(self) -> None:
        self.stream.flush()


class tqdm(_tqdm):  # noqa: N801  (a drop-in for tqdm.tqdm)
    def __init__(self, *args, **kwargs) -> None:
        if not _enabled:
            kwargs["disable"] = True
        stream = kwargs.get("file") or sys.stderr
        if not getattr(stream, "isatty", lambda: False)():
            kwargs["file"] = _Lines(stream)
            kwargs.setdefault("mininterval", LOG_INTERVAL)
            kwargs.setdefault("ncols", 100)
        super().__init__(*args, **kwargs)
