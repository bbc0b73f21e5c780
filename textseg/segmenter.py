"""Open-vocabulary semantic segmentation with a :class:`TextSegModel` (groups → labels), and the entry point of
referring segmentation (:meth:`Segmenter.refer`, which dispatches to :mod:`textseg.ris`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textseg.config import Protocol, load_protocol
from textseg.dense.predict import DensePredictor
from textseg.errors import UserError
from textseg.io import ImageLike, label_dtype, load_image
from textseg.labels import (CropPlan, SegmentationResult, check_class_names, check_maps, region_class_probs,
                            window_starts, with_bg_score)
from textseg.model import TextSegModel
from textseg.pipeline import RegionPipeline, grid_offsets, resized_size
from textseg.ris.best_group import BestGroupReferrer
from textseg.ris.points import PointReferrer
from textseg.ris.referrer import Referrer
from textseg.ris.result import ReferResult
from textseg.text import TextEncoder
from textseg.vocab import ClassSpec, Vocabulary

#: Per window batch: ``(crops (B, 3, h, w), given maps (B, h, w) or None)`` → one ``(group maps (B, h, w), region
#: probabilities (B, K, C'), weight)`` per grouping; ``weight``: the passes summed into the probabilities.
WindowScorer = Callable[[torch.Tensor, "torch.Tensor | None"], list[tuple[torch.Tensor, torch.Tensor, int]]]

#: Deprecated alias (one release): every referring method returns a :class:`~textseg.ris.result.ReferResult`.
ReferringResult = ReferResult


def check_batch_size(batch_size: int) -> None:
    """Raise a UserError unless ``batch_size`` is at least 1."""
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")


class Segmenter:
    """Segments images into any list of classes with region-level CLIP recognition.

    Args:
        model: a model from :func:`textseg.create_model`.
        protocol: the default inference settings: a :class:`~textseg.config.Protocol`, a preset name
            (``groupvit``, ``sclip``, ``workbench``, ``naclip-voc21``, ...) or None: the protocol the model's config
            names (``sclip-b16`` → ``sclip-voc21``, as the method's public code), else the defaults (short side
            448, 80 templates).
        text_cache_dir: disk cache of class embeddings; ``None`` for the default folder, ``False`` for none.
        **overrides: protocol fields to change, e.g. ``templates="single"``.

    Attributes:
        pipeline: the :class:`~textseg.pipeline.RegionPipeline` (input sizing, grouping, region embeddings) that
            this segmenter and its referrers share.
    """

    def __init__(self, model: TextSegModel, protocol: Protocol | str | None = None, *,
                 text_cache_dir: str | Path | None | bool = None, **overrides: Any):
        if protocol is None and model.config.protocol:
            protocol = model.config.protocol
        protocol = load_protocol(protocol) if isinstance(protocol, str) else protocol or Protocol()
        protocol = protocol.replace(**overrides) if overrides else protocol
        self.pipeline = RegionPipeline(model, protocol, text_cache_dir=text_cache_dir)
        self.referrers: dict[tuple, Any] = {}

    @property
    def model(self) -> TextSegModel:
        return self.pipeline.model

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    @property
    def text(self) -> TextEncoder:
        return self.pipeline.text

    @property
    def protocol(self) -> Protocol:
        """The default inference settings (shared with :attr:`pipeline`)."""
        return self.pipeline.protocol

    @protocol.setter
    def protocol(self, value: Protocol) -> None:
        self.pipeline.protocol = value

    def resolve_protocol(self, protocol: Protocol | None = None, overrides: dict[str, Any] | None = None
                         ) -> Protocol:
        """``protocol`` (default: the segmenter's) with ``overrides`` applied."""
        p = protocol or self.protocol
        return p.replace(**overrides) if overrides else p

    @torch.no_grad()
    def group_map(self, image: ImageLike, protocol: Protocol | None = None, **overrides: Any) -> np.ndarray:
        """Group the whole image once (no sliding window), resized per the protocol: its (H, W) int64 group map at
        the input size."""
        return self.pipeline.group_map(load_image(image), self.resolve_protocol(protocol, overrides))

    @torch.no_grad()
    def predict(self, image: ImageLike, classes: Sequence[ClassSpec], protocol: Protocol | None = None, *,
                return_probs: bool = False, return_scores: bool = False, **overrides: Any) -> SegmentationResult:
        """Label every pixel with one of ``classes`` or background.

        Args:
            image: path, PIL image or (H, W, 3) array.
            classes: the classes (any vocabulary): each a name, or a list of synonyms scored as the best of them
                and reported under the first (``["person", "person in shirt"]``).
            protocol: inference settings (:class:`~textseg.config.Protocol`); defaults to the segmenter's.
                ``background``: ``"threshold"`` (a pixel whose best probability is below ``bg_threshold``, or whose
                best class is a background class, is background), ``"classes"`` (background classes only) or
                None (every pixel gets a class); ``bg_score``: a constant background cosine similarity scored like
                one more background class (TCL); ``window``/``stride``: sliding windows at the resized scale.
            return_probs: keep the (C', H, W) probability maps in the result.
            return_scores: keep the (1 + C, H, W) label scores (row 0 the background's) in the result.
            **overrides: protocol fields to change for this call, e.g. ``short_side=None``,
                ``background_classes=["sky", "wall"]`` (names that mean background, synonyms of label 0).

        Returns:
            A :class:`SegmentationResult` at the input image's size.
        """
        return self.predict_batch([image], classes, protocol, return_probs=return_probs, return_scores=return_scores,
                                  **overrides)[0]

    @torch.no_grad()
    def predict_batch(self, images: Sequence[ImageLike], classes: Sequence[ClassSpec],
                      protocol: Protocol | None = None, *, batch_size: int = 32, return_probs: bool = False,
                      return_scores: bool = False, **overrides: Any) -> list[SegmentationResult]:
        """:meth:`predict` for many images at once, with the same results as one call per image.

        Each image is resized per the protocol and cut into its sliding windows (or kept whole). Crops of the same
        size, from one image or several, go through the model together, ``batch_size`` at a time: one grouping
        and one region pass per chunk. The class text is encoded once per call; each window's group map and region
        probabilities stay on the model's device until the image's last crop is done and it is labelled (see
        :meth:`~textseg.labels.CropPlan.label`), so device memory is bounded by ``batch_size`` crops whatever the
        number of images.
        The decoded images and the results of the call stay on the host: feed a large collection in slices (as
        ``textseg segment`` does).

        A model with a dense mode (``config.dense.mode``: ``sclip-b16``, ``naclip-b16``, ``proxyclip-b16``) labels
        pixels as that method does (:class:`~textseg.dense.predict.DensePredictor`), every window of every image
        batched the same way.

        Args:
            images: paths, PIL images or (H, W, 3) arrays; sizes may differ.
            classes, protocol, return_probs, return_scores, overrides: as for :meth:`predict`.
            batch_size: the most crops per model call.

        Returns:
            One :class:`SegmentationResult` per image, in the order given.
        """
        p = self.resolve_protocol(protocol, overrides)
        check_batch_size(batch_size)
        if self.model.config.dense.mode is not None:
            if p.smooth_sigma:
                raise UserError(f"smooth_sigma applies to labelling groups; {self.model.config.name} labels pixels "
                                "densely (its refinement is pamr_steps)")
            vocab = Vocabulary.make(classes, p.background_classes)
            return DensePredictor(self.pipeline).predict_batch([load_image(im) for im in images], vocab, p,
                                                               batch_size=batch_size, return_scores=return_scores,
                                                               return_probs=return_probs)
        if p.group_vote:
            raise UserError(f"group_vote applies to models with a dense mode; {self.model.config.name} labels "
                            "its groups already")
        scorer = self.region_probs(classes, p)
        return self.label_windows(images, classes, p, scorer, batch_size=batch_size, return_probs=return_probs,
                                  return_scores=return_scores, passes=len(p.group_counts or [None]))

    def region_probs(self, classes: Sequence[ClassSpec], protocol: Protocol,
                     counts: Sequence[int | None] | None = None) -> WindowScorer:
        """The window scorer of :meth:`predict_batch`: regions (the model's groups, once per count of ``counts``,
        default the protocol's ``group_counts``; or the given region maps) embedded on the protocol's patch grids,
        and their class probabilities (:func:`~textseg.labels.region_class_probs`, summed over the grids) against
        ``classes`` and the protocol's background classes. The class text is encoded here, once.

        Raises:
            UserError: an empty or repeated class name, or more classes than a label map holds.
        """
        vocab = Vocabulary.make(classes, protocol.background_classes)
        label_dtype(len(vocab.classes) + 1)  # refuses more classes than a label map holds, before any work
        # a background class that is also a class ties with it, and the class (listed first) wins the argmax
        names = vocab.queries
        text = self.text.encode_classes(names, protocol.templates).to(self.device)
        counts = list(counts) if counts is not None else list(protocol.group_counts or [None])
        grids = len(grid_offsets(self.model.region.patch_size, protocol.grid_shifts))
        scale = self.model.logit_scale.float()

        def score(crops: torch.Tensor, given: torch.Tensor | None) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
            passes = self.pipeline.regions_batch(crops, given=given, counts=counts, shifts=protocol.grid_shifts)
            return [(passes[first][0], sum(region_class_probs(emb @ text.T, protocol.bg_score, scale)
                                           for _, emb in passes[first: first + grids]), grids)
                    for first in range(0, len(passes), grids)]  # count-major: the grids of one grouping together

        return score

    @torch.no_grad()
    def label_windows(self, images: Sequence[ImageLike], classes: Sequence[ClassSpec], protocol: Protocol,
                      scorer: WindowScorer, *, maps: Sequence[np.ndarray] | None = None, batch_size: int = 32,
                      return_probs: bool = False, return_scores: bool = False, passes: int = 1
                      ) -> list[SegmentationResult]:
        """The loop of :meth:`predict_batch` with any window scorer: each image is resized per the protocol and cut
        into its windows; crops of one size go to ``scorer`` together, ``batch_size`` at a time; each window's
        region probabilities are painted over its group maps, averaged, brought to the input size and labelled
        (:meth:`~textseg.labels.CropPlan.label`).

        Args:
            images: paths, PIL images or (H, W, 3) arrays.
            classes: the classes (label i + 1 = ``classes[i]``; a class is a name or a list of synonyms); the
                scorer's probability channels are :attr:`~textseg.vocab.Vocabulary.queries`, then the constant
                background score if the protocol has one.
            protocol: the settings (resizing, windows, background rule).
            scorer: a :data:`WindowScorer`; it gets the crops of ``maps`` (resized with the image, nearest) too.
            maps: one (H, W) integer map per image (checked by :func:`~textseg.labels.check_maps`), or None.
            batch_size: the most crops per scorer call.
            return_probs: keep the probability maps.
            return_scores: keep the label scores.
            passes: the groupings the scorer returns per window.
        """
        check_batch_size(batch_size)
        vocab = Vocabulary.make(classes, protocol.background_classes)
        label_dtype(len(vocab.classes) + 1)
        owners = vocab.owners(self.device)
        arrays = [load_image(im) for im in images]
        given = None if maps is None else check_maps(maps, arrays, "map")
        plans = [CropPlan.make(i, a.shape[:2], protocol, passes=passes) for i, a in enumerate(arrays)]
        by_size: dict[tuple[int, int], list[CropPlan]] = {}
        for plan in plans:
            by_size.setdefault(plan.window, []).append(plan)
        results: list[SegmentationResult | None] = [None] * len(arrays)
        for (win_h, win_w), same_size in by_size.items():
            crops = [(plan, y0, x0) for plan in same_size for y0, x0 in plan.starts]
            for chunk in (crops[i: i + batch_size] for i in range(0, len(crops), batch_size)):
                for plan, _, _ in chunk:
                    if plan.image is None:  # the first crop of this image: resize it and open its accumulators
                        plan.open(self.pipeline.to_device(arrays[plan.index], protocol), None if given is None else
                                  self.pipeline.map_to_device(given[plan.index], plan.size))
                batch = torch.cat([plan.image[..., y0: y0 + win_h, x0: x0 + win_w] for plan, y0, x0 in chunk])
                given_batch = None if given is None else torch.stack(
                    [plan.given[y0: y0 + win_h, x0: x0 + win_w] for plan, y0, x0 in chunk])
                for pixels, region_probs, weight in scorer(batch, given_batch):
                    for b, (plan, y0, x0) in enumerate(chunk):
                        plan.add(y0, x0, pixels[b], region_probs[b].T, weight=weight)
                        if plan.left == 0:
                            results[plan.index] = plan.label(arrays[plan.index].shape[:2], owners,
                                                             ["background", *vocab.names], protocol, return_probs,
                                                             return_scores)
        return results  # type: ignore[return-value]

    @torch.no_grad()
    def region_similarities(self, image: ImageLike, names: Sequence[str], protocol: Protocol | None = None,
                            **overrides: Any) -> tuple[np.ndarray, torch.Tensor]:
        """Group the whole image once (no sliding window) and score every region against every name.

        Returns:
            (H, W) group map at the input size and (K, len(names)) cosine similarities of region k to name c
            (averaged over the protocol's grid offsets, ``grid_shifts``).
        """
        p = self.resolve_protocol(protocol, overrides)
        return self.pipeline.grid_mean(self.pipeline.similarities(load_image(image), names, p.templates, p))

    @torch.no_grad()
    def grouping_similarities(self, image: ImageLike, names: Sequence[str], protocol: Protocol | None = None,
                              **overrides: Any) -> list[tuple[np.ndarray, torch.Tensor]]:
        """:meth:`region_similarities` once per group count of the protocol's ``group_counts`` (the model's own k
        when it has none) and grid offset (``grid_shifts``), count-major, not averaged: :meth:`predict` averages
        the class probabilities of these parts."""
        p = self.resolve_protocol(protocol, overrides)
        return self.pipeline.similarities(load_image(image), names, p.templates, p, p.group_counts or [None])

    @property
    def logit_scale(self) -> float:
        """The CLIP's logit scale: region-to-class cosine similarities times this are the logits of a prediction."""
        return float(self.model.logit_scale.detach())

    def refer(self, image: ImageLike, sentence: str, *, proposals: Any = None, method: str = "global-local",
              **options: Any) -> ReferResult:
        """What a referring sentence refers to in the image.

        Args:
            image: path, PIL image or (H, W, 3) array.
            sentence: the referring expression.
            proposals: this image's proposals (a :class:`~textseg.ris.Proposals`, an (N, H, W) bool array or a mask
                file); None: the proposals of ``options["proposer"]`` (default: multi-scale grouping proposals).
            method: ``"global-local"`` (masked crops), ``"region"`` (region tokens, one forward), ``"best-group"``
                (the group of the model's own grouping that best matches the sentence; no proposals) or
                ``"points"`` (point prompts for a promptable segmenter, :class:`~textseg.ris.points.PointReferrer`).
            **options: the options of the method's referrer: :class:`~textseg.ris.Referrer` (``proposer``,
                ``no_target_threshold``, ``alpha``, ``beta``, ``masked_blocks``, ``mode``, ``spatial`` (read the
                sentence's spatial language and let geometry choose among the proposals of the right kind), ...),
                :class:`~textseg.ris.best_group.BestGroupReferrer` (``protocol`` and protocol fields) or
                :class:`~textseg.ris.points.PointReferrer` (``promptable`` (required), ``generator``,
                ``n_positive``, ``n_negative``). The referrer of each set of options is kept, with its per-image
                cache.

        Returns:
            A :class:`~textseg.ris.result.ReferResult` (the same type for every method).
        """
        key = (method, tuple(sorted((k, repr(v)) for k, v in options.items())))
        if method in ("points", "best-group"):
            if proposals is not None:
                raise UserError(f"method {method!r} makes its own mask; it takes no proposals")
            if key not in self.referrers:
                make = PointReferrer if method == "points" else BestGroupReferrer
                self.referrers[key] = make(self, **options)
            return self.referrers[key](image, sentence)
        if key not in self.referrers:
            self.referrers[key] = Referrer(self, method=method, **options)
        return self.referrers[key](image, sentence, proposals)

    def predict_referring(self, image: ImageLike, sentence: str, protocol: Protocol | None = None,
                          **overrides: Any) -> ReferResult:
        """Deprecated alias (one release) of ``refer(image, sentence, method="best-group", ...)``."""
        return self.refer(image, sentence, method="best-group", protocol=protocol, **overrides)


__all__ = ["CropPlan", "ReferringResult", "SegmentationResult", "Segmenter", "WindowScorer", "check_batch_size",
           "check_class_names", "resized_size", "window_starts", "with_bg_score"]
