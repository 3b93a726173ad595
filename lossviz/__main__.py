"""``python -m lossviz``: the ``lossviz`` command line (see :mod:`lossviz.cli`)."""

import sys

from lossviz.cli import main

if __name__ == "__main__":
    sys.exit(main())
