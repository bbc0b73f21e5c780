"""Build the OpenMoji workbench: ``python tools/make_workbench.py --out DIR [--scenes N ...]``."""

import sys

from textseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["workbench", "build", *sys.argv[1:]]))
