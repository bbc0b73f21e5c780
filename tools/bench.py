#!/usr/bin/env python
"""Benchmarks, run on demand: same as `textseg bench segment ...`."""

import sys

from textseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
