"""Benchmarks, run on demand: `python tools/bench.py segment [--window 448 --stride 224]`."""

import sys

from textseg.bench import main

if __name__ == "__main__":
    sys.exit(main())
