"""``python -m atpstar.run.cli ...`` is the same as ``atpstar ...``."""

import sys

from . import main

sys.exit(main())
