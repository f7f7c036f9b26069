"""``python -m intvit ...`` (and ``torchrun -m intvit train ...``)."""

import sys

from .cli import main

sys.exit(main())
