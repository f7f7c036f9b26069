"""intvit: integer-only vision transformers.

The integer kernels live in :mod:`intvit.arith` (primitives) and :mod:`intvit.approx`
(the non-linear approximations); everything else calls them.
"""

__version__ = "0.1.0"
