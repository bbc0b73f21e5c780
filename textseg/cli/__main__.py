"""``python -m textseg.cli ...`` (what torchrun and subprocesses use when the console script is not on PATH)."""

import sys

from textseg.cli import main

sys.exit(main())
