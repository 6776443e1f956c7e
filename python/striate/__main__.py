"""``python -m striate``: the same command line as the ``striate`` console script.

Only an entry point; the commands live in ``striate.cli``.
"""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
