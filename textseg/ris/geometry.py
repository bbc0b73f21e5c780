"""Geometric scores of mask proposals for a spatial reading of the sentence (:mod:`textseg.ris.spatial`).

Appearance picks the candidates of the right kind (the proposals whose appearance score is within ``margin`` of the
best); geometry picks among them: each candidate gets a score in [0, 1] from its mask's centroid and area against
the reading's absolute position, ordinal and size (ranks among the candidates), and from its place relative to the
anchor (the proposal that best matches the anchor's noun phrase) for a relation. The fused score is the appearance
score plus ``weight`` times the geometric score, for the candidates only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from textseg.ris.spatial import SpatialReading


@dataclass(frozen=True)
class ProposalGeometry:
    """Centroids, areas and boxes of N masks, in image fractions (x right, y down).

    Attributes:
        cx, cy: (N,) centroid; area: (N,) share of the image; x0, x1, y0, y1: (N,) bounding box.
    """

    cx: np.ndarray
    cy: np.ndarray
    area: np.ndarray
    x0: np.ndarray
    x1: np.ndarray
    y0: np.ndarray
    y1: np.ndarray

    @classmethod
    def from_masks(cls, masks: np.ndarray) -> "ProposalGeometry":
        """The geometry of (N, H, W) bool masks (an empty mask sits at the centre with no area)."""
        n, h, w = masks.shape
        rows = masks.any(2)
        cols = masks.any(1)
        count = masks.sum((1, 2)).astype(np.float64)
        safe = np.maximum(count, 1)
        ys = (np.arange(h) + 0.5) / h
        xs = (np.arange(w) + 0.5) / w
        cy = np.where(count > 0, (masks.sum(2) * ys).sum(1) / safe, 0.5)
        cx = np.where(count > 0, (masks.sum(1) * xs).sum(1) / safe, 0.5)

        def ends(occ: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
            first = np.where(occ.any(1), occ.argmax(1), 0) / size
            last = np.where(occ.any(1), size - occ[:, ::-1].argmax(1), size) / size
            return first, last

        y0, y1 = ends(rows, h)
        x0, x1 = ends(cols, w)
        return cls(cx, cy, count / (h * w), x0, x1, y0, y1)


def rank_score(values: np.ndarray, candidates: np.ndarray, ascending: bool, ordinal: int | None = None) -> np.ndarray:
    """(N,) in [0, 1]: 1 for the candidate first in the order (``ascending`` values), falling linearly to 0 for the
    last; with ``ordinal`` k, 1 for the k-th and falling with the distance in ranks. Non-candidates score 0."""
    out = np.zeros(len(values))
    idx = np.flatnonzero(candidates)
    if idx.size == 0:
        return out
    order = idx[np.argsort(values[idx] if ascending else -values[idx], kind="stable")]
    target = 0 if ordinal is None else min(ordinal - 1, idx.size - 1)
    out[order] = 1.0 - np.abs(np.arange(idx.size) - target) / max(idx.size - 1, 1)
    return out


def absolute_score(reading: SpatialReading, geom: ProposalGeometry, candidates: np.ndarray) -> np.ndarray | None:
    """(N,) mean of the position, ordinal and size terms the reading has; None when it has none."""
    terms = []
    if reading.horizontal in ("left", "right"):
        terms.append(rank_score(geom.cx, candidates, reading.horizontal == "left", reading.ordinal))
    elif reading.horizontal == "center":
        terms.append(np.where(candidates, 1 - 2 * np.abs(geom.cx - 0.5), 0.0))
    if reading.vertical in ("top", "bottom"):
        ordinal = reading.ordinal if reading.horizontal is None else None
        terms.append(rank_score(geom.cy, candidates, reading.vertical == "top", ordinal))
    elif reading.vertical == "middle":
        terms.append(np.where(candidates, 1 - 2 * np.abs(geom.cy - 0.5), 0.0))
    if reading.size in ("large", "small"):
        terms.append(rank_score(geom.area, candidates, reading.size == "small"))
    return np.mean(terms, 0) if terms else None


def relation_score(relation: str, geom: ProposalGeometry, anchor: int, candidates: np.ndarray) -> np.ndarray | None:
    """(N,) how well each candidate stands in ``relation`` to proposal ``anchor`` (the anchor itself scores 0);
    None for relations geometry cannot judge (depth: in front of, behind)."""
    dx, dy = geom.cx - geom.cx[anchor], geom.cy - geom.cy[anchor]
    soft = 0.05  # a tenth of the image's half-width moves the score from 0.12 to 0.88
    if relation == "left_of":
        s = 1 / (1 + np.exp(dx / soft))
    elif relation == "right_of":
        s = 1 / (1 + np.exp(-dx / soft))
    elif relation in ("above", "on"):
        s = 1 / (1 + np.exp(dy / soft))
        if relation == "on":  # above and overlapping in x
            overlap = np.clip(np.minimum(geom.x1, geom.x1[anchor]) - np.maximum(geom.x0, geom.x0[anchor]), 0, None)
            s = s * np.minimum(1.0, overlap / np.maximum(geom.x1 - geom.x0, 1e-6))
    elif relation in ("below", "under"):
        s = 1 / (1 + np.exp(-dy / soft))
    elif relation in ("next_to", "near", "between"):
        s = 1 - np.minimum(1.0, np.hypot(dx, dy) / 0.5)
    elif relation == "inside":
        s = ((geom.cx >= geom.x0[anchor]) & (geom.cx <= geom.x1[anchor]) & (geom.cy >= geom.y0[anchor])
             & (geom.cy <= geom.y1[anchor])).astype(float)
    else:
        return None
    s = np.where(candidates, s, 0.0)
    s[anchor] = 0.0
    return s


def spatial_scores(appearance: np.ndarray, reading: SpatialReading, geom: ProposalGeometry,
                   anchor_appearance: np.ndarray | None = None, *, margin: float = 2.0, weight: float = 2.0
                   ) -> tuple[np.ndarray, dict]:
    """Fused (N,) scores: ``appearance`` plus ``weight`` × the geometric score for the candidates (appearance
    within ``margin`` of the best); unchanged when the reading has nothing geometry can judge.

    Args:
        appearance: (N,) the proposals' appearance scores (logit scale × cosine) for the sentence.
        reading: the sentence's spatial reading.
        geom: the proposals' geometry.
        anchor_appearance: (N,) the proposals' appearance scores for the anchor's noun phrase (relations).
        margin, weight: in appearance-score units.

    Returns:
        The fused scores and what was used (``candidates``, ``anchor_proposal`` index, ``terms``).
    """
    info: dict = {"candidates": 0, "anchor_proposal": None, "terms": []}
    if len(appearance) == 0:
        return appearance, info
    candidates = appearance >= appearance.max() - margin
    info["candidates"] = int(candidates.sum())
    terms = []
    absolute = absolute_score(reading, geom, candidates)
    if absolute is not None:
        terms.append(absolute)
        info["terms"].append("absolute")
    if reading.relation and anchor_appearance is not None and len(anchor_appearance) == len(appearance):
        anchor = int(np.argmax(anchor_appearance))
        rel = relation_score(reading.relation, geom, anchor, candidates & (np.arange(len(appearance)) != anchor))
        if rel is not None:
            terms.append(rel)
            info["terms"].append("relation")
            info["anchor_proposal"] = anchor
    if not terms:
        return appearance, info
    return appearance + weight * np.mean(terms, 0), info


__all__ = ["ProposalGeometry", "absolute_score", "rank_score", "relation_score", "spatial_scores"]
