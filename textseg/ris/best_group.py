"""The zero-shot region baseline of referring segmentation: the group of the model's own grouping whose region
embedding best matches the sentence (no proposals, no global term)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from textseg.config import Protocol
from textseg.errors import UserError
from textseg.io import ImageLike, load_image
from textseg.pipeline import as_pipeline
from textseg.ris.result import ReferResult


class BestGroupReferrer:
    """Groups the whole image once (no sliding window) and picks the group whose region embedding has the highest
    cosine similarity with the sentence (encoded as it is, no template; averaged over the protocol's grid offsets).

    Args:
        segmenter: a :class:`~textseg.segmenter.Segmenter` or its :class:`~textseg.pipeline.RegionPipeline`.
        protocol: the settings (default: the segmenter's).
        **overrides: protocol fields to change, e.g. ``short_side=None``.
    """

    method = "best-group"

    def __init__(self, segmenter: Any, protocol: Protocol | None = None, **overrides: Any) -> None:
        self.pipeline = as_pipeline(segmenter)
        self.protocol = protocol
        self.overrides = overrides

    @torch.no_grad()
    def __call__(self, image: ImageLike, sentence: str) -> ReferResult:
        """The group ``sentence`` refers to; the result's ``regions`` is the group map, ``scores`` the groups'
        cosines."""
        if not sentence or not sentence.strip():
            raise UserError("the referring sentence is empty")
        p = self.protocol or self.pipeline.protocol
        p = p.replace(**self.overrides) if self.overrides else p
        groups, sims = self.pipeline.grid_mean(self.pipeline.similarities(load_image(image), [sentence], ("{}",), p))
        scores = sims[:, 0].numpy()
        best = int(scores.argmax())
        return ReferResult(mask=groups == best, score=float(scores[best]), index=best, scores=scores,
                           method=self.method, regions=groups)


__all__ = ["BestGroupReferrer"]
