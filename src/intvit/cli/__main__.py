"""``python -m intvit.cli ...``: the same as ``intvit ...``."""

import sys

from . import main

sys.exit(main())
