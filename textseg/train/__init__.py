"""Caption-shard training: region-adapted CLIP with a noun-to-region loss, on torchrun/DDP."""

from textseg.train.config import load_config
from textseg.train.engine import train

__all__ = ["load_config", "train"]
