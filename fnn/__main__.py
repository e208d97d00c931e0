"""``python -m fnn``: the same as the ``fnn`` console script."""

import sys

from fnn.cli.commands import main

sys.exit(main())
