"""Ablation table on the OpenMoji workbench: `python tools/ablate.py [VARIANT.yaml ...] --init STAGE1.pt`."""

import sys

from textseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["ablate", *sys.argv[1:]]))
