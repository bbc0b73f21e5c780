"""Benchmark dataset readers, class names, and image-caption shards from a captions file.

Importing this package does not import torch (writing shards does, through webdataset).
"""

from textseg.data.caption_files import CaptionRow, read_caption_file
from textseg.data.caption_shards import ShardReport, SkippedItem, make_shards, write_shards
from textseg.data.coco_masks import decode_segmentation
from textseg.data.coco_object import convert_coco_object
from textseg.data.names import BENCHMARKS, IGNORE_INDEX, get_class_names
from textseg.data.refcoco import RefDataset
from textseg.data.semseg import (
    ADE20K,
    SEMSEG_DATASETS,
    Cityscapes,
    COCOObject,
    COCOStuff,
    PascalContext,
    SemsegDataset,
    VOCSegmentation,
    build_semseg_dataset,
)

__all__ = [
    "ADE20K",
    "BENCHMARKS",
    "COCOObject",
    "CaptionRow",
    "COCOStuff",
    "Cityscapes",
    "IGNORE_INDEX",
    "PascalContext",
    "RefDataset",
    "SEMSEG_DATASETS",
    "SemsegDataset",
    "ShardReport",
    "SkippedItem",
    "VOCSegmentation",
    "build_semseg_dataset",
    "convert_coco_object",
    "decode_segmentation",
    "get_class_names",
    "make_shards",
    "read_caption_file",
    "write_shards",
]
