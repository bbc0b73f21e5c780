#!/usr/bin/env python
"""Write image-caption webdataset shards: ``make_shards.py IMAGES_DIR CAPTIONS_FILE OUT_DIR [--max-count N]
[--max-size-mb M]``. See :mod:`textseg.shards` for the accepted captions files."""

import sys

from textseg.shards import cli

if __name__ == "__main__":
    sys.exit(cli())
