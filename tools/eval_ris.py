#!/usr/bin/env python
"""Evaluate a model on a referring segmentation benchmark: same as `textseg eval ris ...`."""

import sys

from textseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", "ris", *sys.argv[1:]]))
