#!/usr/bin/env python
"""Evaluate a model on a semantic segmentation benchmark: same as `textseg eval semseg ...`."""

import sys

from textseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", "semseg", *sys.argv[1:]]))
