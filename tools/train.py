"""Train on caption shards: `python tools/train.py CONFIG key=value ...`, or on N processes:
`torchrun --nproc_per_node=N tools/train.py CONFIG ...` (multi-node: add torchrun's --nnodes/--rdzv-* options)."""

import sys

from textseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
