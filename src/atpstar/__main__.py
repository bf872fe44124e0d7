"""``python -m atpstar ...`` is the same as ``atpstar ...``."""

import sys

from .run.cli import main

sys.exit(main())
