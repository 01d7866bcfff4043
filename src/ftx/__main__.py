"""``python -m ftx``: the same as the ``ftx`` command."""

import sys

from ftx.cli import main

sys.exit(main())
