"""Export of an integer program to a dependency-free C99 library (``intvit export
--format c``), its memory plan, and the ``c`` engine that compiles and runs it.

:mod:`.plan` proves every value's range and type and lays out the scratch buffer,
:mod:`.emit` writes one kernel call per node, :mod:`.library` assembles the files,
:mod:`.build` compiles them (cached by content, :mod:`.toolchain`) for the ``c``
engine, its constants apart from the code (:mod:`.weights`). The kernel layer
is ``kernels/intvit_kernels.h``, written once in plain C.
"""

from .library import CLibrary, MemoryFigures, generate, memory

__all__ = ["CLibrary", "MemoryFigures", "generate", "memory"]
