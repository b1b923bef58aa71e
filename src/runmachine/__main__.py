"""``python -m runmachine``: the same command line as the ``runmachine`` script."""

import sys

from runmachine.cli import main

sys.exit(main())
