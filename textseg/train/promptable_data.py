"""The stand-in's training data: workbench scenes of the stream "segmenter", their objects' visible masks and
random point prompts, as SAM is trained. Sample ``i`` is scene ``i``, its prompts drawn from a generator seeded by
(seed, i): any worker count, and a run resumed at any step, gives the same data."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

MAX_POSITIVES = 3
MAX_NEGATIVES = 2


def min_object_area(image_size: int) -> int:
    """The fewest visible pixels an object needs to be trained or evaluated on (0.2% of the image)."""
    return max(4, round(0.002 * image_size * image_size))


def sample_prompts(rng: np.random.Generator, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random training prompts of (N, H, W) masks, as SAM is trained.

    Returns:
        one positive point per mask (N, 1, 2), uniform inside it (for the multimask outputs); and 1 to
        :data:`MAX_POSITIVES` positives inside with 0 to :data:`MAX_NEGATIVES` negatives outside, padded with
        label -1 to (N, K, 2) points and (N, K) labels (for the single output).
    """
    n, _, w = masks.shape
    k = MAX_POSITIVES + MAX_NEGATIVES
    one = np.zeros((n, 1, 2), np.float32)
    many = np.zeros((n, k, 2), np.float32)
    labels = np.full((n, k), -1, np.int64)
    for i, m in enumerate(masks):
        inside, outside = np.flatnonzero(m), np.flatnonzero(~m)
        p = inside[rng.integers(len(inside))]
        one[i, 0] = (p % w, p // w)
        n_pos = int(rng.integers(1, MAX_POSITIVES + 1))
        n_neg = int(rng.integers(0, MAX_NEGATIVES + 1)) if len(outside) else 0
        chosen = np.concatenate([inside[rng.integers(len(inside), size=n_pos)],
                                 outside[rng.integers(max(1, len(outside)), size=n_neg)]])
        many[i, : len(chosen)] = np.stack([chosen % w, chosen // w], axis=1)
        labels[i, :n_pos], labels[i, n_pos: len(chosen)] = 1, 0
    return one, many, labels


class SegmenterScenes(torch.utils.data.Dataset):
    """Training sample ``index``: scene ``index`` of the workbench stream "segmenter", up to ``prompts`` of its
    objects' visible masks (objects of at least :func:`min_object_area` pixels, distractors included) and
    :func:`sample_prompts` for them, from a generator seeded by (seed, index): any worker count gives the same data.
    """

    def __init__(self, length: int, *, prompts: int, seed: int = 0, workbench_seed: int = 0,
                 image_size: int = 96) -> None:
        self.length, self.prompts, self.seed = length, prompts, seed
        self.workbench_seed, self.image_size = workbench_seed, image_size
        self._glyphs: Any = None  # one GlyphCache per process, made on first use (so in each worker)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        from textseg.workbench.glyphs import GlyphCache
        from textseg.workbench.scenes import make_scene

        if self._glyphs is None:
            self._glyphs = GlyphCache()
        scene = make_scene(self.workbench_seed, int(index), self.image_size, stream="segmenter", cache=self._glyphs)
        rng = np.random.default_rng([self.seed, int(index)])
        area = min_object_area(self.image_size)
        masks = [o.visible for o in scene.objects if o.visible_area >= area]
        if len(masks) > self.prompts:
            masks = [masks[i] for i in sorted(rng.choice(len(masks), self.prompts, replace=False))]
        masks = np.stack(masks) if masks else np.zeros((0, *scene.image.shape[:2]), bool)
        one, many, labels = sample_prompts(rng, masks)
        return {"image": scene.image, "masks": masks, "one": one, "many": many, "labels": labels}


def collate_scenes(samples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """A batch of :class:`SegmenterScenes` samples: ``images`` (B, H, W, 3) uint8, the N objects' ``masks``,
    ``one``, ``many``, ``labels`` concatenated, and ``image_index`` (N,)."""
    counts = torch.tensor([len(s["masks"]) for s in samples], dtype=torch.long)
    return {"images": torch.from_numpy(np.stack([s["image"] for s in samples])),
            "image_index": torch.arange(len(samples)).repeat_interleave(counts),
            **{k: torch.from_numpy(np.concatenate([s[k] for s in samples]))
               for k in ("masks", "one", "many", "labels")}}


__all__ = ["MAX_NEGATIVES", "MAX_POSITIVES", "SegmenterScenes", "collate_scenes", "min_object_area", "sample_prompts"]
