#!/usr/bin/env python
"""Image-caption webdataset shards: same as `textseg make-shards IMAGES_DIR CAPTIONS_FILE OUT_DIR`."""

import sys

from textseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["make-shards", *sys.argv[1:]]))
