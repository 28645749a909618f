"""``python -m engine``: see ``python -m engine --help``."""

import sys

from engine._cli import main

if __name__ == "__main__":
    sys.exit(main())
