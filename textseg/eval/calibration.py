"""Choosing the constant background score (``bg_score``) of a protocol on a held-out set."""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import numpy as np

from textseg.config import Protocol
from textseg.errors import ConfigError
from textseg.eval.runner import progress_bar, prompt_names, sample_count
from textseg.metrics import SemsegMetric

DEFAULT_CANDIDATES: tuple[float, ...] = tuple(float(c) for c in np.round(np.arange(-0.3, 1.01, 0.05), 2))
# With refinement, the candidates on each side of the unrefined best that are scored refined too
REFINED_NEIGHBOURS = 2
# ... and the most bytes of region similarities kept from the first pass for the second
CACHE_BYTES = 1 << 29


def calibrate_bg_score(segmenter: Any, dataset: Any, protocol: Protocol, *,
                       candidates: Sequence[float] = DEFAULT_CANDIDATES, limit: int | None = None,
                       progress: bool = True) -> tuple[float, dict[float, float]]:
    """Choose the constant background score that maximises mIoU on a held-out set.

    Use a development split, never the split you report: on the OpenMoji workbench, scenes of another seed. Regions
    are grouped and scored once per image, grouping and grid offset (``segmenter.grouping_similarities`` under
    ``protocol``, with the protocol's background classes); every candidate is then scored from the same
    similarities. With several groupings (``protocol.group_counts``) or grid offsets (``protocol.grid_shifts``),
    pixels take the class of the highest class probability averaged over them, as
    :meth:`~textseg.segmenter.Segmenter.predict` does. With ``pamr_steps`` (one refinement per image and
    candidate), every candidate is first scored without the refinement, then the best of them and its
    :data:`REFINED_NEIGHBOURS` neighbours on each side are scored again with it, in a second pass (from the first
    pass's similarities, kept in memory up to :data:`CACHE_BYTES`).

    Returns:
        The best score and the mIoU of every candidate scored under the whole protocol (with ``pamr_steps``,
        those of the second pass).

    Raises:
        ConfigError: the dataset has no background label 0, or ``limit`` is negative.
    """
    if not getattr(dataset, "has_background", True):
        raise ConfigError("bg_score calibration needs a dataset whose label 0 is background")
    total = sample_count(len(dataset), limit)
    cache = _PartsCache() if protocol.pamr_steps else None
    scores = _score_candidates(segmenter, dataset, protocol.replace(pamr_steps=0), candidates, total, progress,
                               cache)
    if protocol.pamr_steps:
        ranked = sorted(scores)
        at = ranked.index(max(scores, key=scores.get))
        near = ranked[max(0, at - REFINED_NEIGHBOURS): at + REFINED_NEIGHBOURS + 1]
        scores = _score_candidates(segmenter, dataset, protocol, near, total, progress, cache)
    best_score = max(scores, key=scores.get)
    return float(best_score), scores


class _PartsCache:
    """The first pass's region similarities per sample, kept for the second while they fit in ``budget`` bytes
    (the rest are computed again)."""

    def __init__(self, budget: int | None = None) -> None:
        self.parts: dict[int, list] = {}
        self.left = CACHE_BYTES if budget is None else budget

    def get(self, i: int) -> list | None:
        return self.parts.get(i)

    def put(self, i: int, parts: list) -> None:
        size = sum(np.asarray(g).nbytes + s.numel() * s.element_size() for g, s in parts)
        if size <= self.left:
            self.parts[i], self.left = parts, self.left - size


def _score_candidates(segmenter: Any, dataset: Any, protocol: Protocol, candidates: Sequence[float], total: int,
                      progress: bool, cache: _PartsCache | None = None) -> dict[float, float]:
    """mIoU of each background score on the first ``total`` samples, labelled as predict labels them; region
    similarities are taken from ``cache`` where it has them and put there otherwise."""
    import torch

    from textseg.dense.pamr import pamr_affinities
    from textseg.labels import channel_max, with_bg_score
    from textseg.pipeline import resized_size

    names = prompt_names(dataset)[1:]
    metrics = {c: SemsegMetric(len(dataset.class_names), dataset.ignore_index) for c in candidates}
    bar = progress_bar(total, 0, "calibrate bg" + (" (refined)" if protocol.pamr_steps else ""), progress)
    try:
        for i in range(total):
            item = dataset[i]
            parts = cache.get(i) if cache is not None else None
            if parts is None:
                parts = segmenter.grouping_similarities(item["image"], names + list(protocol.background_classes),
                                                        protocol)
                if cache is not None:
                    cache.put(i, parts)
            # count-major: the grid offsets of one grouping come together and share its group map
            per = len(parts) // len(protocol.group_counts or [None])
            merged = [(parts[i][0], [sims for _, sims in parts[i: i + per]]) for i in range(0, len(parts), per)]
            # predict smooths and refines at the resized scale; these maps are at the input size
            size = resized_size(parts[0][0].shape, protocol.short_side, protocol.max_long_side)
            sigma = protocol.smooth_sigma * len(parts[0][0]) / size[0]
            image = _refine_image(item["image"], segmenter, protocol)
            weights = None
            if image is not None:
                image = image.to(parts[0][1].device)
                weights = pamr_affinities(image[None], protocol.pamr_dilations)
            fast = len(parts) == 1 and not sigma and image is None  # each region's best score: no probabilities
            # (candidates, K, C + 1) region probabilities of each grouping, summed over its grid offsets
            region_probs = None if fast else [(torch.from_numpy(groups), _candidate_probs(
                same, list(metrics), segmenter.logit_scale)) for groups, same in merged]
            for j, (c, metric) in enumerate(metrics.items()):
                if fast:
                    groups, sims = parts[0]
                    best = with_bg_score(sims, c).argmax(1).numpy()[groups]
                else:
                    probs = sum(rp[j][groups] for groups, rp in region_probs)
                    # smoothed and refined as predict labels (only the classes that can win: channel_max)
                    best = channel_max(probs.permute(2, 0, 1), partial(_smooth_refine, sigma=sigma, image=image,
                                                                        weights=weights, protocol=protocol))[1]
                    best = best.numpy()
                metric.update(np.where(best < len(names), best + 1, 0), item["label"])  # background names -> 0
            bar.update(1)
    finally:
        bar.close()
    return {c: float(m.compute()["mIoU"]) for c, m in metrics.items()}


def _candidate_probs(same: Sequence[Any], candidates: Sequence[float], logit_scale: Any) -> Any:
    """(len(candidates), K, C + 1) class probabilities of K regions for each background score, summed over the
    (K, C) similarities of ``same`` (one grouping's grid offsets): :func:`~textseg.labels.region_class_probs` of
    every candidate at once."""
    import torch

    sims = torch.stack(list(same))  # (G, K, C)
    bg = torch.tensor(candidates, dtype=sims.dtype, device=sims.device).view(-1, 1, 1, 1)
    scores = torch.cat([sims.expand(len(candidates), *sims.shape), bg.expand(-1, *sims.shape[:-1], 1)], -1)
    return (logit_scale * scores).softmax(-1).sum(1)


def _refine_image(image: Any, segmenter: Any, protocol: Protocol) -> Any:
    """The (3, h, w) image at the resized scale in [0, 1] that predict refines with, or None without refinement."""
    if not protocol.pamr_steps:
        return None
    return segmenter.pipeline.to_device(np.asarray(image.convert("RGB") if hasattr(image, "convert") else image),
                                        protocol)[0]


def _smooth_refine(probs: Any, sigma: float, image: Any, weights: Any, protocol: Protocol) -> Any:
    """(C, H, W) input-size probabilities smoothed, then (with an ``image``) refined as predict refines them: at
    the resized scale of ``image``, whose PAMR weights are ``weights`` (brought there and back bilinearly when the
    sizes differ)."""
    import torch.nn.functional as F

    from textseg.dense.pamr import pamr
    from textseg.labels import gaussian_smooth

    probs = gaussian_smooth(probs, sigma)
    if image is None:
        return probs
    steps, dilations = protocol.pamr_steps, protocol.pamr_dilations
    size, small = tuple(probs.shape[1:]), tuple(image.shape[1:])
    if size == small:
        return pamr(image[None], probs[None], steps, dilations, weights)[0]
    out = F.interpolate(probs[None], small, mode="bilinear", align_corners=False, antialias=True)
    out = pamr(image[None], out, steps, dilations, weights)
    return F.interpolate(out, size, mode="bilinear", align_corners=False)[0]


def choose_no_target_threshold(target_scores: Sequence[float], no_target_scores: Sequence[float]
                               ) -> tuple[float, float]:
    """The threshold on the best proposal score that best separates sentences with a target (answered: score at or
    above it) from no-target sentences (score below it), by balanced accuracy; candidates are the midpoints between
    consecutive distinct scores (and one below / above them all).

    Returns:
        The threshold and its balanced accuracy (percent).

    Raises:
        ConfigError: either list is empty.
    """
    pos = np.asarray(target_scores, dtype=np.float64)
    neg = np.asarray(no_target_scores, dtype=np.float64)
    values = np.unique(np.concatenate([pos[np.isfinite(pos)], neg[np.isfinite(neg)]]))
    if not len(pos) or not len(neg) or not len(values):
        raise ConfigError("choosing a no-target threshold needs scored sentences with and without a target")
    candidates = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2, [values[-1] + 1.0]])
    balanced = [((pos >= t).mean() + (neg < t).mean()) / 2 for t in candidates]
    best = int(np.argmax(balanced))
    return float(candidates[best]), float(balanced[best] * 100)


def referring_best_scores(segmenter: Any, dataset: Any, *, method: str = "global-local",
                          options: dict[str, Any] | None = None, limit: int | None = None,
                          progress: bool = True) -> np.ndarray:
    """The best proposal score of every sentence of a RIS dataset (``segmenter.refer`` without a no-target
    threshold; -inf for an image without proposals)."""
    options = {k: v for k, v in (options or {}).items() if k != "no_target_threshold"}
    total = sample_count(len(dataset), limit)
    bar = progress_bar(total, 0, f"scores {getattr(dataset, 'split', '')}", progress)
    scores = []
    try:
        for i in range(total):
            item = dataset[i]
            scores.append(segmenter.refer(item["image"], item["sentence"], method=method, **options).score)
            bar.update(1)
    finally:
        bar.close()
    return np.asarray(scores, dtype=np.float64)
