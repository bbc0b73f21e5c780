"""Class-name lists of the semantic segmentation benchmarks, and the ignore label.

The standard lists ship as ``textseg/data/classnames/<benchmark>.txt`` (one name per line, line i = label i), in the
label order of the on-disk formats the readers in :mod:`textseg.data.semseg` accept (mmsegmentation's conventions).
``get_class_names(name, prompt=True)`` returns the same list with names that are not plain words rewritten for a
text prompt ("diningtable" -> "dining table", "wall-brick" -> "brick wall").
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from textseg.errors import ConfigError

CLASSNAMES_DIR = Path(__file__).resolve().parent / "classnames"
IGNORE_INDEX = 255  # label of pixels that are not scored, in every benchmark's label space

BENCHMARKS: tuple[str, ...] = (
    "voc21",
    "voc20",
    "context60",
    "context59",
    "coco_object",
    "ade20k",
    "coco_stuff171",
    "cityscapes",
)

# Standard names that are not words a text encoder knows well. COCO-Stuff's "x-other" / "x-stuff" suffixes only
# separate a stuff class from a thing class of the same name in the annotation tool; the prompt drops them.
PROMPT_NAMES: dict[str, str] = {
    "diningtable": "dining table",
    "pottedplant": "potted plant",
    "tvmonitor": "tv monitor",
    "motorbike": "motorbike",
    "aeroplane": "aeroplane",
    "bedclothes": "bed clothes",
    "building-other": "building",
    "ceiling-other": "ceiling",
    "ceiling-tile": "tiled ceiling",
    "desk-stuff": "desk",
    "door-stuff": "door",
    "floor-marble": "marble floor",
    "floor-other": "floor",
    "floor-stone": "stone floor",
    "floor-tile": "tiled floor",
    "floor-wood": "wooden floor",
    "food-other": "food",
    "furniture-other": "furniture",
    "ground-other": "ground",
    "mirror-stuff": "mirror",
    "plant-other": "plant",
    "playingfield": "playing field",
    "sky-other": "sky",
    "solid-other": "solid",
    "structural-other": "structure",
    "textile-other": "textile",
    "wall-brick": "brick wall",
    "wall-concrete": "concrete wall",
    "wall-other": "wall",
    "wall-panel": "wall panel",
    "wall-stone": "stone wall",
    "wall-tile": "tiled wall",
    "wall-wood": "wooden wall",
    "water-other": "water",
    "waterdrops": "water drops",
    "window-blind": "window blind",
    "window-other": "window",
    "crt screen": "crt screen",
    "ashcan": "trash can",
}


@lru_cache(maxsize=None)
def _read(name: str) -> tuple[str, ...]:
    path = CLASSNAMES_DIR / f"{name}.txt"
    if name not in BENCHMARKS or not path.is_file():
        raise ConfigError(f"unknown benchmark {name!r}; choose one of: {', '.join(BENCHMARKS)}")
    return tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def get_class_names(name: str, prompt: bool = False) -> list[str]:
    """Return the class names of a benchmark, index i = label i.

    Args:
        name: One of :data:`BENCHMARKS`.
        prompt: Rewrite names that are not plain words (see :data:`PROMPT_NAMES`) for use in a text prompt.
    """
    names = list(_read(name))
    if prompt:
        names = [PROMPT_NAMES.get(n, n) for n in names]
    return names
