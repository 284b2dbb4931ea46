"""``python -m lite_facade run [flags] script.py [args]``: the ``lite`` console script."""

import sys

from lite_facade._cli import main

if __name__ == "__main__":
    sys.exit(main())
