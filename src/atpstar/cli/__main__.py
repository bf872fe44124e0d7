"""``python -m atpstar.cli ...`` is the same as ``atpstar ...``."""

import sys

from . import main

sys.exit(main())
