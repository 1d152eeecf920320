"""`python cli.py …` in a checkout: the same command line as the `mvbind` console script.

All click code lives in mvbind/cli.py (installed as `mvbind.cli`); this file only runs it.
"""

import sys

from mvbind.cli import main

if __name__ == "__main__":
    sys.exit(main())
