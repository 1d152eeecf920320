"""`python -m mvbind …`: the command line."""

import sys

from mvbind.cli import main

sys.exit(main())
