"""Zero-shot referring segmentation over mask proposals: the proposal a sentence refers to, or none.

:class:`Referrer` ties the pieces together: proposals of an image (textseg's grouping made instance-like by
default, SAM, or masks given by the user), a visual feature per proposal, and a sentence + noun-phrase text feature
(:class:`~textseg.ris.global_local.GlobalLocalCLIP`). Two ways to get the visual feature:

* ``method="global-local"``: Global-Local CLIP, α·global (masked last blocks) + (1 − α)·local (the masked crop
  through CLIP), one batched forward per branch.
* ``method="region"``: the fast mode: the local term comes from textseg's region tokens, every proposal embedded
  in ONE forward of the whole image (contextual masking in the last CLIP block) instead of one crop each.

The visual features of an image's proposals do not depend on the sentence: they are cached for the last few
images, so that the sentences of one image (a refer-format dataset has several) cost one text pass each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from textseg.errors import UserError
from textseg.grouping import masks_to_region_masks
from textseg.io import ImageCache, ImageLike, load_image
from textseg.ris.geometry import ProposalGeometry, spatial_scores
from textseg.ris.global_local import GlobalLocalCLIP
from textseg.ris.hierarchy import MultiScaleProposer, proposal_prior
from textseg.pipeline import RegionPipeline, as_pipeline
from textseg.ris.mask_files import load_mask_proposals
from textseg.ris.proposals import GroupingProposer, Proposals
from textseg.ris.result import ReferResult
from textseg.ris.spatial import SpatialParser, SpatialReading

METHODS = ("global-local", "region")
PROPOSERS = ("multiscale", "grouping")
ProposalSource = Callable[[np.ndarray], Proposals]


def proposal_short_side(model: Any, short_side: int | None) -> int | None:
    """The short side at which the proposals' grouping runs: the protocol's ``short_side``, times the grouping
    backbone's patch size when its features are per-pixel colours (then one grouping cell per pixel of the resized
    image; colour k-means is cheap, and object outlines need the pixel grid)."""
    backbone = model.config.backbone
    if short_side is None or backbone.type != "color":
        return short_side
    return short_side * int(backbone.patch_size)


def default_proposer(pipeline: RegionPipeline, kind: str | None = None) -> ProposalSource:
    """textseg's own proposals for a pipeline's model and protocol: ``"multiscale"`` (the default,
    :class:`~textseg.ris.hierarchy.MultiScaleProposer`) or ``"grouping"``
    (:class:`~textseg.ris.proposals.GroupingProposer`), grouping at :func:`proposal_short_side`.

    Raises:
        UserError: an unknown kind.
    """
    kind = kind or "multiscale"
    if kind not in PROPOSERS:
        raise UserError(f"proposer must be one of {', '.join(PROPOSERS)} or a callable, got {kind!r}")
    p = pipeline.protocol
    cls = MultiScaleProposer if kind == "multiscale" else GroupingProposer
    return cls(pipeline, short_side=proposal_short_side(pipeline.model, p.short_side), max_long_side=p.max_long_side)


class Referrer:
    """Picks the mask proposal a sentence refers to (module docstring).

    Args:
        segmenter: a :class:`~textseg.segmenter.Segmenter` or its :class:`~textseg.pipeline.RegionPipeline`: the
            model's CLIP scores, its grouping and protocol (short side) make the default proposals and the region
            tokens' input.
        method: ``"global-local"`` or ``"region"``.
        proposer: image array → :class:`~textseg.ris.proposals.Proposals`, or ``"multiscale"`` (the default:
            :class:`~textseg.ris.hierarchy.MultiScaleProposer`, group counts 8, 16, 32 and their merge hierarchies,
            at most 100 proposals) or ``"grouping"`` (:class:`~textseg.ris.proposals.GroupingProposer`, the
            model's one group count). Both group at :func:`proposal_short_side`.
        no_target_threshold: a best score below it means "no target" (an empty mask); None: always a mask when
            there is a proposal. Choose it on a development split, never on the evaluation split.
        cache_size: images whose proposals and visual features are kept.
        spatial: read the sentence's spatial language (:mod:`textseg.ris.spatial`) and let geometry choose among
            the proposals of the right kind (:func:`~textseg.ris.geometry.spatial_scores`), the kind judged on the
            target's noun phrase when the sentence has spatial terms.
        spatial_margin, spatial_weight: the candidates' appearance margin and the geometric score's weight, in
            appearance-score units (logit scale × cosine).
        support_weight, area_weight: proposals whose records carry ``support``
            (:class:`~textseg.ris.hierarchy.MultiScaleProposer`: how many candidates agree on the region) get
            :func:`~textseg.ris.hierarchy.proposal_prior` added to their appearance score (``support_weight ×
            log(support) + area_weight × log(area share)``), so that a whole object beats its parts and the larger
            regions around it; 0 and 0 turn it off.
        spatial_backend: the reading's parser, ``"auto"`` (spaCy when a pipeline is installed), ``"spacy"`` or
            ``"rules"``.
        **scorer_options: :class:`~textseg.ris.global_local.GlobalLocalCLIP` options (``alpha``, ``beta``,
            ``masked_blocks`` (default 3, or the CLIP's depth if smaller), ``mode``, ``chunk_size``, ``fill``).
    """

    def __init__(self, segmenter: Any, *, method: str = "global-local",
                 proposer: ProposalSource | str | None = None, no_target_threshold: float | None = None,
                 cache_size: int = 4, spatial: bool = False, spatial_margin: float = 2.0,
                 spatial_weight: float = 2.0, support_weight: float = 2.0, area_weight: float = -0.5,
                 spatial_backend: str = "auto", **scorer_options: Any) -> None:
        if method not in METHODS:
            raise UserError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        self.pipeline = as_pipeline(segmenter)
        self.method = method
        model = self.pipeline.model
        depth = len(model.clip.visual.transformer.resblocks)
        scorer_options.setdefault("masked_blocks", min(3, depth))  # the paper's 3, or all blocks of a shallower CLIP
        self.scorer = GlobalLocalCLIP.from_model(model, **scorer_options)
        if method == "region" and self.scorer.mode != "clean":
            raise UserError("method 'region' has no reference mode (the public code has no region tokens)")
        own = proposer is None or isinstance(proposer, str)
        self.proposer = default_proposer(self.pipeline, proposer) if own else proposer
        self.no_target_threshold = no_target_threshold
        self._cache = ImageCache(cache_size)
        self.spatial = SpatialParser(spatial_backend) if spatial else None
        self.spatial_margin, self.spatial_weight = spatial_margin, spatial_weight
        self.support_weight, self.area_weight = support_weight, area_weight

    # -- visual side ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def region_features(self, image: np.ndarray, masks: np.ndarray) -> torch.Tensor:
        """(N, D) un-normalised region-token embeddings of N (H, W) masks, all from one forward of the image at the
        segmenter's resize (the masks brought to the CLIP patch grid as the grouper's regions are)."""
        x = self.pipeline.prepare(image)
        patch = self.pipeline.model.region.patch_size
        grid = (x.shape[-2] // patch, x.shape[-1] // patch)
        region_masks = masks_to_region_masks(torch.from_numpy(masks).to(x.device)[None], grid)
        return self.pipeline.model(x, region_masks).regions[0].float()

    @torch.no_grad()
    def visual_features(self, image: np.ndarray, proposals: Proposals) -> torch.Tensor:
        """(N, D) un-normalised visual features, α·global + (1 − α)·(crop or region-token) feature."""
        if len(proposals) == 0:
            return torch.zeros(0, self.scorer.embed_dim, device=self.scorer.device)
        prep = self.scorer.prepare(image)
        masks = proposals.masks
        g = self.scorer.global_features(prep, masks)
        if self.method == "global-local":
            local = self.scorer.local_features(prep, masks)
        else:
            local = self.region_features(image, masks)
        return self.scorer.alpha * g + (1 - self.scorer.alpha) * local

    def proposals_and_features(self, image: np.ndarray) -> tuple[Proposals, torch.Tensor]:
        """An image's proposals from :attr:`proposer` and their visual features, cached per image content."""
        def compute() -> tuple[Proposals, torch.Tensor]:
            proposals = self.proposer(image)
            return proposals, self.visual_features(image, proposals)

        return self._cache.get(image, compute)

    # -- text and scores --------------------------------------------------------------------------------------

    @torch.no_grad()
    def text_features(self, sentences: list[str]) -> torch.Tensor:
        """(S, D) un-normalised β·sentence + (1 − β)·noun-phrase features."""
        nps = self.scorer.noun_phrases(sentences)
        text = self.scorer.encode_text(sentences + nps)
        return self.scorer.beta * text[: len(sentences)] + (1 - self.scorer.beta) * text[len(sentences):]

    @torch.no_grad()
    def scores(self, visual: torch.Tensor, sentences: list[str]) -> torch.Tensor:
        """(S, N) logit scale × cosine of each sentence's text feature with each proposal's visual feature."""
        text = self.text_features(sentences)
        scale = self.scorer.clip.logit_scale.exp().float()
        return scale * F.normalize(text, dim=-1) @ F.normalize(visual, dim=-1).T

    @torch.no_grad()
    def __call__(self, image: ImageLike, sentence: str,
                 proposals: Proposals | np.ndarray | str | Path | None = None) -> ReferResult:
        """The proposal ``sentence`` refers to.

        Args:
            image: path, PIL image or (H, W, 3) array.
            sentence: the referring expression.
            proposals: this image's proposals (a :class:`Proposals`, an (N, H, W) bool array, or a mask file as
                :func:`~textseg.ris.mask_files.load_mask_proposals` reads); None: :attr:`proposer`'s.

        Raises:
            UserError: an empty sentence, unreadable image or proposals of another size.
        """
        if not sentence or not sentence.strip():
            raise UserError("the referring sentence is empty")
        arr = load_image(image)
        if proposals is None:
            props, visual = self.proposals_and_features(arr)
        else:
            if isinstance(proposals, (str, Path)):
                props = load_mask_proposals(proposals, arr.shape[:2])
            elif isinstance(proposals, Proposals):
                props = proposals
            else:  # an array: empty masks are dropped, the records keep each mask's index in it
                masks = np.asarray(proposals)
                if masks.ndim != 3:
                    raise UserError(f"proposals are an (N, H, W) array of masks, got shape {masks.shape}")
                masks = masks.astype(bool)
                keep = np.flatnonzero(masks.any((1, 2)))
                props = Proposals(masks[keep], [{"source": "given", "index": int(i)} for i in keep])
            if len(props) and props.image_size != arr.shape[:2]:
                raise UserError(f"proposals are {props.image_size[0]}x{props.image_size[1]}, the image "
                                f"{arr.shape[0]}x{arr.shape[1]}")
            visual = self.visual_features(arr, props)
        prior = self.prior(props)
        spatial = self.spatial.read(sentence) if self.spatial is not None else None
        # with spatial terms the target's noun phrase judges the kind: the spatial words are geometry's to judge
        text = spatial.head if spatial is not None and spatial.has_spatial and spatial.head else sentence
        scores = self.scores(visual, [text])[0].cpu().numpy() + prior
        reading = None
        if spatial is not None:
            scores, reading = self.spatial_rescore(spatial, scores, visual, props, prior)
        empty = np.zeros(arr.shape[:2], dtype=bool)
        if len(scores) == 0:
            return ReferResult(empty, float("-inf"), None, scores, self.method, props, reading=reading)
        best = int(scores.argmax())
        score = float(scores[best])
        if self.no_target_threshold is not None and score < self.no_target_threshold:
            return ReferResult(empty, score, None, scores, self.method, props, reading=reading)
        return ReferResult(props.masks[best].copy(), score, best, scores, self.method, props, reading=reading)

    def prior(self, props: Proposals) -> np.ndarray | float:
        """(N,) the proposals' :func:`~textseg.ris.hierarchy.proposal_prior` at this referrer's weights (0 for
        proposals without ``support``)."""
        return proposal_prior(props, self.support_weight, self.area_weight)

    def spatial_rescore(self, reading: SpatialReading, scores: np.ndarray, visual: torch.Tensor, props: Proposals,
                        prior: np.ndarray | float = 0.0) -> tuple[np.ndarray, dict]:
        """The appearance ``scores`` fused with the geometry of the spatial ``reading``, and the reading (with what
        was used) as a JSON-ready dict; the anchor's appearance gets the proposals' ``prior`` as the target's did."""
        anchor = None
        if reading.relation and reading.anchor and len(props):
            anchor = self.scores(visual, [reading.anchor])[0].cpu().numpy() + prior
        fused, info = spatial_scores(scores, reading, ProposalGeometry.from_masks(props.masks), anchor,
                                     margin=self.spatial_margin, weight=self.spatial_weight)
        return fused, {**reading.to_dict(), "parser": self.spatial.backend_used, **info}


__all__ = ["METHODS", "PROPOSERS", "ReferResult", "Referrer", "default_proposer", "proposal_short_side"]
