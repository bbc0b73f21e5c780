"""Caption-shard training: region-adapted CLIP with a noun-to-region loss, on one process or under torchrun/DDP.

Modules: :mod:`~textseg.train.config` (the typed config), :mod:`~textseg.train.data` (caption pipeline, the
grouping transform, collate, noun batching), :mod:`~textseg.artifacts` (the only checkpoint reader and
writer), :mod:`~textseg.train.distributed` and :mod:`~textseg.train.loop` (:func:`train`, :func:`build_model`);
:mod:`~textseg.train.selfsup` trains the self-supervised grouping backbone (DINO on images alone).
"""

from typing import Any

from textseg.train.config import TrainConfig, load_train_config

__all__ = ["TrainConfig", "build_model", "load_train_config", "train"]


def __getattr__(name: str) -> Any:
    if name in ("train", "build_model"):  # imported on use: the loop pulls in torch, open_clip and webdataset
        from textseg.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
