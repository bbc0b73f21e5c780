"""The spatial reading for point prompting: move the positive map onto the instance the sentence places.

A patch-level positive map cannot tell two touching objects of one kind apart, and its peak lands on whichever scores
higher, left or right. :func:`spatial_positive_map` lets instance proposals (pixel-accurate, e.g.
:class:`~textseg.ris.hierarchy.MultiScaleProposer`'s) stand for the instances: each proposal's appearance is the
mean of the standardised positive map over its pixels (plus the proposals' support prior), geometry chooses among
the proposals of the right kind as for the proposal methods (:func:`~textseg.ris.geometry.spatial_scores`), and the
map outside the chosen proposal is lowered below its minimum, so the top-k positive points land inside it. A
reading with nothing geometry can judge leaves the map as it is.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from textseg.ris.geometry import ProposalGeometry, spatial_scores
from textseg.ris.spatial import SpatialReading


def standardise(score_map: torch.Tensor) -> torch.Tensor:
    """A (gh, gw) map minus its mean, over its standard deviation (1 when it is flat)."""
    std = score_map.std()
    return (score_map - score_map.mean()) / (std if float(std) > 0 else 1.0)


def proposal_means(score_map: torch.Tensor, masks: np.ndarray) -> np.ndarray:
    """(N,) the mean of a (gh, gw) patch map, upsampled bilinearly to the masks' (H, W), over each of N masks."""
    if len(masks) == 0:
        return np.zeros(0)
    h, w = masks.shape[1:]
    up = F.interpolate(score_map[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    m = torch.from_numpy(np.ascontiguousarray(masks)).to(up.device).reshape(len(masks), -1).float()
    return ((m @ up.reshape(-1)) / m.sum(1).clamp_min(1)).cpu().numpy()


def spatial_positive_map(positive: torch.Tensor, reading: SpatialReading, masks: np.ndarray, *,
                         anchor_map: torch.Tensor | None = None, prior: np.ndarray | float = 0.0,
                         margin: float = 1.0, weight: float = 8.0) -> tuple[torch.Tensor, dict[str, Any]]:
    """The (gh, gw) positive map with everything outside the proposal the reading places pushed below its minimum.

    Args:
        positive: (gh, gw) positive logits (or cosines) on the CLIP patch grid.
        reading: the sentence's spatial reading.
        masks: (N, H, W) bool instance proposals at the image's size.
        anchor_map: (gh, gw) the same map for the anchor's noun phrase (relations).
        prior: (N,) added to the proposals' appearance (e.g. the support prior), in standard deviations.
        margin, weight: the candidates' margin and the geometric weight, in standard deviations of the map.

    Returns:
        The map, and what was used: ``candidates``, ``terms``, ``anchor_proposal``, ``chosen`` (None: unchanged).
    """
    info: dict[str, Any] = {"candidates": 0, "terms": [], "anchor_proposal": None, "chosen": None}
    if len(masks) == 0 or not reading.has_spatial:
        return positive, info
    appearance = proposal_means(standardise(positive), masks) + prior
    anchor = None
    if anchor_map is not None and reading.relation:
        anchor = proposal_means(standardise(anchor_map), masks) + prior
    fused, used = spatial_scores(appearance, reading, ProposalGeometry.from_masks(masks), anchor, margin=margin,
                                 weight=weight)
    info.update({k: used[k] for k in ("candidates", "terms", "anchor_proposal")})
    if not used["terms"]:
        return positive, info
    chosen = int(np.argmax(fused))
    info["chosen"] = chosen
    gh, gw = positive.shape
    inside = F.adaptive_avg_pool2d(torch.from_numpy(masks[chosen]).float()[None, None], (gh, gw))[0, 0]
    inside = inside.to(positive.device) > 0
    if not bool(inside.any()):
        return positive, info
    drop = positive.max() - positive.min() + 1.0
    return torch.where(inside, positive, positive - drop), info


__all__ = ["proposal_means", "spatial_positive_map", "standardise"]
