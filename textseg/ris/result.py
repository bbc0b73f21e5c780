"""The one result type of referring segmentation, whatever the method."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from textseg.ris.proposals import Proposals


@dataclass(eq=False)
class ReferResult:
    """What every referring method returns (:meth:`Segmenter.refer <textseg.segmenter.Segmenter.refer>`).

    Attributes:
        mask: (H, W) bool mask of the target; all False when there is no target.
        score: the chosen candidate's score (proposal methods: logit scale × cosine; ``"best-group"``: the cosine;
            ``"points"``: the promptable segmenter's predicted IoU); ``-inf`` without candidates.
        index: the chosen candidate's index in ``scores``; None: no target (no candidate, or the best score is
            below the no-target threshold).
        scores: (N,) every candidate's score: the proposals', the groups' (``"best-group"``) or the points'
            logits (``"points"``).
        method: the method that made it.
        proposals: the proposals scored (proposal methods).
        regions: (H, W) group map whose ids index ``scores`` (``"best-group"``).
        points: (K, 2) xy point prompts in image pixels and ``labels`` (K,) 1 positive, 0 negative (``"points"``).
        positive_map, negative_map: (gh, gw) point logits at the CLIP's patch grid (``"points"``).
        reading: how the sentence was read when spatial language was used (:mod:`textseg.ris.spatial`: head,
            position, size, relation, anchor, and the candidates and anchor proposal of the geometric score).
    """

    mask: np.ndarray
    score: float
    index: int | None
    scores: np.ndarray
    method: str = ""
    proposals: Proposals | None = field(default=None, repr=False)
    regions: np.ndarray | None = field(default=None, repr=False)
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    positive_map: np.ndarray | None = field(default=None, repr=False)
    negative_map: np.ndarray | None = field(default=None, repr=False)
    reading: dict | None = None

    @property
    def no_target(self) -> bool:
        return self.index is None

    @property
    def point_scores(self) -> np.ndarray:
        """Deprecated alias (one release) of :attr:`scores` for ``"points"``."""
        return self.scores

    @property
    def region_scores(self) -> list[float]:
        """Deprecated alias (one release) of :attr:`scores` for ``"best-group"``."""
        return [float(v) for v in self.scores]

    @cached_property
    def response(self) -> np.ndarray:
        """(H, W) float32 response map; its argmax lies in the chosen candidate (PointM).

        Proposals: at each pixel the best score of the proposals that cover it (the lowest score where none does;
        zeros without proposals). Groups: each group's score painted over it. Points: the positive map at the image
        size (nearest patch).
        """
        if self.positive_map is not None:
            h, w = self.mask.shape
            gh, gw = self.positive_map.shape
            rows = np.minimum((np.arange(h) + 0.5) * gh / h, gh - 1).astype(int)
            cols = np.minimum((np.arange(w) + 0.5) * gw / w, gw - 1).astype(int)
            return self.positive_map[rows][:, cols].astype(np.float32)
        if self.regions is not None:
            return np.asarray(self.scores, dtype=np.float32)[self.regions]
        out = np.zeros(self.mask.shape, dtype=np.float32)
        if len(self.scores) and self.proposals is not None:
            finite = self.scores[np.isfinite(self.scores)]
            out[:] = finite.min() if finite.size else 0.0
            for i in np.argsort(self.scores, kind="stable"):  # ascending: a better score paints over a worse one
                if np.isfinite(self.scores[i]):
                    out[self.proposals.masks[i]] = self.scores[i]
        return out


__all__ = ["ReferResult"]
