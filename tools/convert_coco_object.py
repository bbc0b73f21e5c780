#!/usr/bin/env python
"""COCO instances JSON -> COCO-Object label PNGs: same as `textseg convert-coco-object JSON OUT_DIR`."""

import sys

from textseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert-coco-object", *sys.argv[1:]]))
