"""Benchmark dataset readers (numpy + PIL only; no torch)."""

from textseg.data.coco_masks import decode_segmentation
from textseg.data.coco_object import convert_coco_object
from textseg.data.names import BENCHMARKS, get_class_names
from textseg.data.refer import RefDataset
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
    "COCOStuff",
    "Cityscapes",
    "PascalContext",
    "RefDataset",
    "SEMSEG_DATASETS",
    "SemsegDataset",
    "VOCSegmentation",
    "build_semseg_dataset",
    "convert_coco_object",
    "decode_segmentation",
    "get_class_names",
]
