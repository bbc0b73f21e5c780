"""The image-text pairs the point generator trains on: shard patterns resolved against a data root, and endless
batches whose order is a function of the shards and the seed alone (so a resumed run can pass over the batches it
has used)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from textseg.errors import UserError
from textseg.train.data import caption_pipeline, expand_urls


def resolve_shards(patterns: Sequence[str], root: Path | None) -> list[str]:
    """The shard files of brace-notation ``patterns``; relative ones are taken from ``root``.

    Raises:
        UserError: a shard file does not exist (the message names it, its pattern and the root).
    """
    urls: list[str] = []
    for pattern in patterns:
        full = pattern if root is None or Path(pattern).is_absolute() or "://" in pattern else str(root / pattern)
        found = expand_urls(full)
        missing = [u for u in found if "://" not in u and not Path(u).is_file()]
        if missing:
            raise UserError(f"training shard {missing[0]} does not exist (from {pattern!r}"
                            f"{f', data root {root}' if root else ''})")
        urls += found
    return urls


def pair_batches(urls: list[str], batch_size: int, image_size: int, seed: int, skip: int = 0
                 ) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Endless ``(images (B, S, S, 3) uint8, sentences)`` batches from image-text shards, reshuffled each epoch;
    only the image and the text of a sample are decoded (corrupt samples are counted and skipped).

    A batch may span two epochs (the last samples of one and the first of the next).

    Args:
        urls: shard files.
        batch_size: pairs per batch.
        image_size: side the images are resized to.
        seed: seed of the shard and sample shuffles.
        skip: batches passed over first (read, not yielded): a resumed run's data position.

    Raises:
        UserError: an epoch yields no readable sample.
    """
    from PIL import Image

    def resize(img: Image.Image) -> np.ndarray:
        return np.asarray(img.resize((image_size, image_size), Image.BILINEAR) if img.size != (image_size,) * 2
                          else img)

    pipe = caption_pipeline(urls, shuffle_buffer=1000, seed=seed, split_by_node=False, split_by_worker=False,
                            image_transform=resize)
    epoch, images, texts, made = 0, [], [], 0
    while True:
        pipe.set_epoch(epoch)
        n = 0
        for image, text in pipe:
            n += 1
            images.append(image)
            texts.append(text)
            if len(images) == batch_size:
                made += 1
                if made > skip:
                    yield np.stack(images), texts
                images, texts = [], []
        if n == 0:
            raise UserError(f"no readable image-text sample in {len(urls)} shard(s) ({urls[0]} ...)")
        epoch += 1


__all__ = ["pair_batches", "resolve_shards"]
