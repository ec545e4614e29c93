"""``python -m examples.rpc [--backend trio] [--quick] [--keep]``."""

from __future__ import annotations

import sys

from .story import main

if __name__ == "__main__":
    sys.exit(main())
