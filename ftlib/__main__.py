"""`python -m ftlib ...`: see ftlib/cli.py."""

import sys

from ftlib.cli import main

sys.exit(main())
