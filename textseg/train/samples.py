"""What one training batch holds: images resized and grouped in the data workers, padded region masks, and the
caption nouns of the noun-to-region loss.

* :class:`TrainTransform`: resize and group one image in the data workers; it holds only a CPU
  :class:`~textseg.grouping.Grouper` (the frozen grouping backbone and k-means settings), never the CLIP.
* :func:`collate` pads the per-image region masks; :class:`NounBatcher` turns captions into noun prompts, (noun,
  image) pairs and the shared-noun positives of the noun-to-region loss.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from textseg.errors import ConfigError
from textseg.grouping import Grouper, pad_region_masks

class TrainTransform:
    """PIL image → (image tensor (3, S, S) in [0, 1], (K, gh, gw) region masks on the CLIP grid).

    Grouping is frozen and runs here, in the data workers, so it overlaps with the training step. Give it a CPU
    grouper of its own (e.g. ``copy.deepcopy(model.grouper).cpu()``): workers must not touch the GPU. Being frozen
    and deterministic, an image's groups are computed once: later epochs take them from a cache keyed by a hash of
    the image's pixels (the newest ``cache_size`` images, bit-packed: 16,384 images of 32 regions on a 14 × 14 grid
    take 12.5 MB; 0 turns it off).
    """

    def __init__(self, grouper: Grouper, image_size: int, cache_size: int = 16384) -> None:
        if image_size % grouper.patch_size:
            raise ConfigError(f"data.image_size {image_size} is not a multiple of the model's patch size "
                              f"{grouper.patch_size}")
        self.grouper = grouper.eval()
        self.size = image_size
        self.cache_size = cache_size
        self._cache: OrderedDict[bytes, tuple[np.ndarray, tuple[int, ...]]] = OrderedDict()

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), resample=Image.Resampling.BICUBIC)
        pixels = np.array(image)
        x = torch.from_numpy(pixels).permute(2, 0, 1).float().div(255)
        if not self.cache_size:
            return x, self.grouper(x[None], pixels=False).region_masks[0]
        key = hashlib.blake2b(pixels.tobytes(), digest_size=16, person=str(pixels.shape).encode()[:16]).digest()
        hit = self._cache.get(key)
        if hit is None:
            masks = self.grouper(x[None], pixels=False).region_masks[0].bool()
            self._cache[key] = (np.packbits(masks.numpy()), tuple(masks.shape))
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return x, masks
        self._cache.move_to_end(key)
        bits, shape = hit
        return x, torch.from_numpy(np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool))


def random_hflip(images: torch.Tensor, masks: torch.Tensor | None, prob: float, seed: int, step: int
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mirror each image of a batch left-right with probability ``prob``, its region masks (B, K, h, w) with it.

    The draw depends only on ``seed`` and ``step`` (a generator of its own, not the global RNG), so a resumed run
    flips the images the uninterrupted run flipped.
    """
    if prob <= 0:
        return images, masks
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    flip = (torch.rand(images.shape[0], generator=g) < prob).to(images.device)
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    if masks is not None:
        masks = torch.where(flip.to(masks.device)[:, None, None, None], masks.flip(-1), masks)
    return images, masks


def collate(batch: list[tuple]) -> dict[str, Any]:
    """Stack images, pad region masks to the batch's largest K, keep captions (and shard URLs) as lists."""
    return {"images": torch.stack([b[0][0] for b in batch]), "masks": pad_region_masks([b[0][1] for b in batch]),
            "captions": [b[1] for b in batch], "urls": [b[2] for b in batch] if len(batch[0]) > 2 else []}


class NounBatcher:
    """Caption nouns → unique noun prompts to encode, (noun, image) pairs and the shared-noun positives.

    Args:
        template: prompt of a noun, e.g. ``"a photo of a {}."``.
        max_nouns: nouns taken per caption.
        keep_background_nouns: count :data:`~textseg.nouns.BACKGROUND_NOUNS` ("background", "texture", ...) as
            nouns (in the workbench, captions name the background on purpose).
        parser: the :class:`~textseg.nouns.NounExtractor` backend, ``auto``, ``spacy`` or ``rule``.
    """

    def __init__(self, template: str = "a photo of a {}.", max_nouns: int = 3, keep_background_nouns: bool = True,
                 parser: str = "auto"):
        from textseg.nouns import BACKGROUND_NOUNS, STOP_NOUNS, NounExtractor

        stop = STOP_NOUNS - BACKGROUND_NOUNS if keep_background_nouns else STOP_NOUNS
        self.extractor = NounExtractor(backend=parser, stop_nouns=stop)
        self.template, self.max_nouns = template, max_nouns

    def __call__(self, captions: Sequence[str]) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(prompts, noun_ids, noun_image, positives)``.

        ``prompts`` are the batch's unique nouns in the template; pair ``i`` is noun ``prompts[noun_ids[i]]`` of
        caption ``noun_image[i]``; ``positives[i, j]`` is true when caption ``j`` has that noun too (M, B).
        """
        per_image = [self.extractor.extract_nouns(c, max_nouns=self.max_nouns) for c in captions]
        vocab = list(dict.fromkeys(n for nouns in per_image for n in nouns))
        index = {n: i for i, n in enumerate(vocab)}
        has = torch.zeros(len(vocab), len(captions), dtype=torch.bool)
        pairs = []
        for image, nouns in enumerate(per_image):
            for n in nouns:
                has[index[n], image] = True
                pairs.append((index[n], image))
        noun_ids = torch.tensor([p[0] for p in pairs], dtype=torch.long)
        noun_image = torch.tensor([p[1] for p in pairs], dtype=torch.long)
        return [self.template.format(n) for n in vocab], noun_ids, noun_image, has[noun_ids]
