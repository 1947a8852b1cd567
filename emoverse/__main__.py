"""`python -m emoverse COMMAND ...`: the same as the `emoverse` command."""

import sys

from emoverse.cli import main

sys.exit(main())
