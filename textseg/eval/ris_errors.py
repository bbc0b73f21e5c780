"""What limits a referring method: the proposal oracle and a breakdown of each sentence's outcome.

For a sentence with a target, :func:`classify_outcome` says which of these its predicted mask is, judged against every
annotated instance of the image:

- ``hit``: IoU with the target >= 0.5;
- ``poor_mask``: the instance the mask overlaps best (by IoU) is the target, but IoU < 0.5;
- ``wrong_instance``: it is another instance of the target's category (the right kind, the wrong one);
- ``wrong_kind``: it is an instance of another category, or the mask overlaps no instance (background);
- ``no_mask``: the method gave no mask.

The proposal oracle of a sentence is the best IoU any of its proposals reaches with the target: what a perfect
scorer over the same proposals would get.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

OUTCOMES: tuple[str, ...] = ("hit", "poor_mask", "wrong_instance", "wrong_kind", "no_mask")
HIT_IOU = 0.5


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int(np.count_nonzero(a | b))
    return int(np.count_nonzero(a & b)) / union if union else 0.0


def classify_outcome(pred: np.ndarray | None, target_ann: int, instances: Sequence[tuple[int, int, np.ndarray]]
                     ) -> str:
    """The outcome (one of :data:`OUTCOMES`) of a predicted (H, W) mask for the target annotation ``target_ann``.

    Args:
        pred: the predicted mask (None: no mask).
        target_ann: the target's annotation id, one of ``instances``.
        instances: every annotated instance of the image as (annotation id, category id, (H, W) bool mask).

    Raises:
        ValueError: ``target_ann`` is not among ``instances``.
    """
    by_id = {int(a): (int(c), np.asarray(m, dtype=bool)) for a, c, m in instances}
    if int(target_ann) not in by_id:
        raise ValueError(f"target annotation {target_ann} is not among the image's instances")
    if pred is None:
        return "no_mask"
    pred = np.asarray(pred, dtype=bool)
    target_cat, target_mask = by_id[int(target_ann)]
    if _iou(pred, target_mask) >= HIT_IOU:
        return "hit"
    ious = {a: _iou(pred, m) for a, (_, m) in by_id.items()}
    best = max(ious, key=lambda a: (ious[a], a == int(target_ann)))  # a tie goes to the target
    if ious[best] == 0.0:
        return "wrong_kind"
    if best == int(target_ann):
        return "poor_mask"
    return "wrong_instance" if by_id[best][0] == target_cat else "wrong_kind"


def proposal_oracle(proposals: np.ndarray, target: np.ndarray) -> float:
    """The best IoU of (N, H, W) ``proposals`` with the (H, W) ``target`` (0 without proposals)."""
    if len(proposals) == 0:
        return 0.0
    p = np.asarray(proposals, dtype=bool).reshape(len(proposals), -1)
    t = np.asarray(target, dtype=bool).reshape(-1)
    inter = np.count_nonzero(p & t, axis=1)
    union = np.count_nonzero(p | t, axis=1)
    return float((inter / np.maximum(union, 1)).max())


def summarize_outcomes(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """From evaluated rows (with ``outcome`` and / or ``oracle`` and ``n_proposals``): ``outcomes`` (percent of the
    rows with an outcome, per kind, and their count ``n``), ``proposal_oracle`` (mean oracle IoU, percent) and
    ``proposals_per_sentence`` (mean count). Keys are left out when no row has what they need."""
    out: dict[str, Any] = {}
    judged = [r["outcome"] for r in rows if r.get("outcome") in OUTCOMES]
    if judged:
        out["outcomes"] = {k: 100.0 * judged.count(k) / len(judged) for k in OUTCOMES}
        out["outcomes"]["n"] = len(judged)
    oracle = [float(r["oracle"]) for r in rows if isinstance(r.get("oracle"), (int, float))]
    if oracle:
        out["proposal_oracle"] = 100.0 * float(np.mean(oracle))
        out["proposals_per_sentence"] = float(np.mean([int(r.get("n_proposals", 0)) for r in rows
                                                       if isinstance(r.get("oracle"), (int, float))]))
    return out


__all__ = ["HIT_IOU", "OUTCOMES", "classify_outcome", "proposal_oracle", "summarize_outcomes"]
