"""Point prompting for referring segmentation (PPT style): a sentence → positive and negative points → a mask.

A :class:`PointGenerator` reads frozen dense CLIP features (textseg's model: the projected output patch tokens,
:meth:`~textseg.region.RegionTokenViT.dense`) and the sentence embedding, and scores every patch twice: a
*positive* map (where the referent is) and a *negative* map (where a point would keep the mask off something that
is not the referent). :func:`select_points` takes the top-k of each map (non-maximum suppressed on the patch
grid) as point prompts in image pixels; a promptable segmenter (SAM, or the workbench stand-in, see
:mod:`textseg.ris.promptable`) turns them into the mask.

The untrained generator's positive map is exactly the scaled text-patch cosine similarity (its learned part
starts at zero), so ``PointGenerator`` with no training, one positive point and no negative is the plain
CLIP → SAM baseline; :class:`PointReferrer` with ``generator=None`` runs that baseline without any generator.

Training from image-text pairs alone is in :mod:`textseg.train.points`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from textseg.errors import MissingWeightsError, UserError
from textseg.io import ImageCache, ImageLike, image_key, load_image
from textseg.pipeline import as_pipeline
from textseg.ris.hierarchy import proposal_prior
from textseg.ris.point_spatial import spatial_positive_map, standardise
from textseg.ris.referrer import default_proposer
from textseg.ris.result import ReferResult
from textseg.ris.spatial import SpatialParser

if TYPE_CHECKING:
    from textseg.model import TextSegModel
    from textseg.ris.promptable import PromptableSegmenter


def sincos_2d(gh: int, gw: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """(gh * gw, dim) fixed 2-D sine-cosine position code of a patch grid (rows first), for any grid size:
    the first half encodes x, the second y, each at dim / 4 frequencies, coordinates in [0, 1]."""
    if dim % 4:
        raise ValueError(f"position code width must be a multiple of 4, got {dim}")
    ys = (torch.arange(gh, device=device, dtype=torch.float32) + 0.5) / gh
    xs = (torch.arange(gw, device=device, dtype=torch.float32) + 0.5) / gw
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    freqs = math.pi * 2.0 ** torch.arange(dim // 4, device=device, dtype=torch.float32)
    parts = []
    for coord in (xx.reshape(-1, 1), yy.reshape(-1, 1)):
        angles = coord * freqs
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, 1)


class PointGenerator(nn.Module):
    """Positive and negative patch scores from frozen dense CLIP features and a sentence embedding.

    Each patch token is ``W_f f + W_t t + W_ft (f ⊙ t) + W_s s + pos`` (``f`` the normalised patch feature, ``t``
    the normalised sentence feature, ``s = f · t``), ``depth`` pre-norm transformer layers mix the patches (so a
    patch can be scored against the others: "the left one"), and a linear head gives two logits per patch. The
    positive logit adds ``sim_scale · s``; the head starts at zero, so before training the positive map is the
    scaled CLIP similarity and the negative map is flat.

    Args:
        embed_dim: width of the CLIP's joint embedding space.
        width: token width; depth, heads: transformer layers and heads.
        sim_scale: initial scale of the similarity term (learned).
    """

    def __init__(self, embed_dim: int, width: int = 128, depth: int = 2, heads: int = 4, sim_scale: float = 10.0):
        super().__init__()
        self.config = {"embed_dim": embed_dim, "width": width, "depth": depth, "heads": heads,
                       "sim_scale": sim_scale}
        self.f_in = nn.Linear(embed_dim, width)
        self.t_in = nn.Linear(embed_dim, width)
        self.ft_in = nn.Linear(embed_dim, width)
        self.s_in = nn.Linear(1, width)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 2)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.sim_scale = nn.Parameter(torch.tensor(float(sim_scale)))

    def forward(self, patches: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Score the patches of B (image, sentence) pairs.

        Args:
            patches: (B, gh, gw, E) dense CLIP features.
            text: (B, E) sentence embeddings.

        Returns:
            ``(positive, negative)`` logits, each (B, gh, gw).
        """
        b, gh, gw, e = patches.shape
        if text.shape != (b, e):
            raise ValueError(f"text features are {tuple(text.shape)}, expected {(b, e)}")
        f = F.normalize(patches.reshape(b, gh * gw, e).float(), dim=-1)
        t = F.normalize(text.float(), dim=-1)[:, None]
        s = (f * t).sum(-1, keepdim=True)
        x = self.f_in(f) + self.t_in(t) + self.ft_in(f * t) + self.s_in(s)
        x = x + sincos_2d(gh, gw, x.shape[-1], x.device)
        logits = self.head(self.norm(self.blocks(x)))
        pos = logits[..., 0] + self.sim_scale * s[..., 0]
        return pos.reshape(b, gh, gw), logits[..., 1].reshape(b, gh, gw)


def select_points(logits: torch.Tensor, k: int, *, radius: int = 1, exclude: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-``k`` patches of each score map, greedy non-maximum suppressed.

    After each pick, the patches within Chebyshev distance ``radius`` of it are suppressed, so two points never
    land on neighbouring patches of one blob.

    Args:
        logits: (B, gh, gw) score maps.
        k: points per map (0 gives empty outputs).
        radius: suppression radius in patches (0: only the patch itself).
        exclude: (B, gh, gw) bool patches never picked (e.g. around the positive points, for the negatives).

    Returns:
        ``(index, score, valid)``: (B, k) flat patch indices (row-major), their scores and whether a patch was
        left to pick (False when fewer than ``k`` patches remain; index 0 and score -inf then).
    """
    b, gh, gw = logits.shape
    flat = logits.reshape(b, gh * gw).float().clone()
    if exclude is not None:
        flat[exclude.reshape(b, -1)] = float("-inf")
    rows = torch.arange(gh, device=logits.device).repeat_interleave(gw)
    cols = torch.arange(gw, device=logits.device).repeat(gh)
    index = torch.zeros(b, k, dtype=torch.long, device=logits.device)
    score = torch.full((b, k), float("-inf"), device=logits.device)
    for j in range(k):
        best, idx = flat.max(1)
        index[:, j], score[:, j] = idx, best
        near = ((rows[None] - rows[idx][:, None]).abs() <= radius) & ((cols[None] - cols[idx][:, None]).abs() <= radius)
        flat[near] = float("-inf")
    valid = torch.isfinite(score)
    index[~valid] = 0
    return index, score, valid


def near_patches(index: torch.Tensor, grid: tuple[int, int], radius: int) -> torch.Tensor:
    """(B, gh * gw) bool: the patches within Chebyshev distance ``radius`` of each of B flat patch ``index``."""
    gh, gw = grid
    rows = torch.arange(gh, device=index.device).repeat_interleave(gw)
    cols = torch.arange(gw, device=index.device).repeat(gh)
    r = torch.div(index, gw, rounding_mode="floor")
    return ((rows[None] - r[:, None]).abs() <= radius) & ((cols[None] - (index % gw)[:, None]).abs() <= radius)


def patch_centres(index: torch.Tensor, grid: tuple[int, int], image_size: tuple[int, int]) -> torch.Tensor:
    """(..., 2) xy pixel coordinates of the centres of flat patch ``index`` on a ``grid`` = (gh, gw) laid over an
    image of ``image_size`` = (H, W) (pixel centres at integer coordinates, as SAM takes them)."""
    gh, gw = grid
    h, w = image_size
    x = (index % gw).float().add(0.5).mul(w / gw)
    y = torch.div(index, gw, rounding_mode="floor").float().add(0.5).mul(h / gh)
    return torch.stack([x, y], -1)


@dataclass
class PointPrompts:
    """Point prompts of B (image, sentence) pairs, in image pixels.

    Attributes:
        coords: (B, K, 2) xy, the positives first.
        labels: (B, K) 1 positive, 0 negative, -1 padding (no patch was left to pick).
        scores: (B, K) each point's logit on its map.
        positive_map, negative_map: (B, gh, gw) logits.
    """

    coords: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    positive_map: torch.Tensor
    negative_map: torch.Tensor


def make_prompts(positive: torch.Tensor, negative: torch.Tensor | None, image_size: tuple[int, int], *,
                 n_positive: int = 1, n_negative: int = 0, radius: int = 1) -> PointPrompts:
    """Top-k positive and top-k negative points of score maps (:func:`select_points`); negatives are never
    picked within ``radius`` patches of a positive point."""
    b, gh, gw = positive.shape
    if n_positive < 1:
        raise UserError(f"at least one positive point is needed, got {n_positive}")
    if n_negative < 0:
        raise UserError(f"the number of negative points cannot be negative, got {n_negative}")
    if negative is None:
        negative = torch.zeros_like(positive)
        n_negative = 0
    p_idx, p_score, p_ok = select_points(positive, n_positive, radius=radius)
    near = torch.zeros(b, gh * gw, dtype=torch.bool, device=positive.device)
    for j in range(n_positive):
        near |= near_patches(p_idx[:, j], (gh, gw), radius) & p_ok[:, j:j + 1]
    n_idx, n_score, n_ok = select_points(negative, n_negative, radius=radius, exclude=near.reshape(b, gh, gw))
    index = torch.cat([p_idx, n_idx], 1)
    labels = torch.cat([p_ok.long(), torch.zeros_like(n_idx)], 1)
    labels[torch.cat([~p_ok, ~n_ok], 1)] = -1
    return PointPrompts(patch_centres(index, (gh, gw), image_size), labels, torch.cat([p_score, n_score], 1),
                        positive, negative)


# -- checkpoints ---------------------------------------------------------------------------------------------------

def save_point_generator(generator: PointGenerator, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write the generator's weights, its config and ``meta`` (training settings, model name) atomically."""
    from textseg.artifacts import write_artifact

    return write_artifact(path, {"kind": "textseg-point-generator", "config": generator.config,
                                 "state_dict": generator.state_dict(), "meta": meta or {}})


def load_point_generator(path: str | Path, device: str | torch.device | None = None
                         ) -> tuple[PointGenerator, dict[str, Any]]:
    """A generator written by :func:`save_point_generator` (weights only, never unpickled code), and its meta."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"point generator {path} not found: train one with `textseg train-points`")
    from textseg.artifacts import load_state_strict, read_artifact

    ckpt = read_artifact(path, "point generator")
    if ckpt.get("kind") != "textseg-point-generator":
        raise UserError(f"{path} is not a textseg point generator checkpoint")
    try:
        gen = PointGenerator(**ckpt["config"])
    except (TypeError, KeyError) as err:
        raise UserError(f"point generator {path} does not match its config: {str(err).splitlines()[0]}") from None
    load_state_strict(gen, ckpt.get("state_dict"), f"point generator {path} does not match its config")
    return gen.to(device or "cpu").eval(), dict(ckpt.get("meta") or {})


# -- inference -------------------------------------------------------------------------------------------------


#: Deprecated alias (one release): the point method returns a :class:`~textseg.ris.result.ReferResult`.
PointReferResult = ReferResult


class PointReferrer:
    """Referring segmentation by point prompts: dense CLIP features + sentence → points → promptable segmenter.

    Args:
        segmenter: a :class:`~textseg.segmenter.Segmenter` or its :class:`~textseg.pipeline.RegionPipeline` (its
            model's CLIP gives the dense and text features; its protocol's short side the CLIP input size).
        promptable: the :class:`~textseg.ris.promptable.PromptableSegmenter` (SAM or the workbench stand-in).
        generator: a trained :class:`PointGenerator`, or None for the baseline: one positive point at the peak of
            the text-patch similarity.
        n_positive, n_negative: points taken from each map (the baseline takes no negatives).
        radius: non-maximum suppression radius in patches.
        spatial: read the sentence's spatial language and move the positive map onto the instance proposal it
            places (:func:`~textseg.ris.point_spatial.spatial_positive_map`; proposals from ``proposer``).
        spatial_margin, spatial_weight: the candidates' margin and geometric weight, in standard deviations of the
            positive map (defaults chosen on the workbench's testA + testB).
        proposer: image → instance proposals for ``spatial`` (None: multi-scale grouping proposals,
            :class:`~textseg.ris.hierarchy.MultiScaleProposer`, at :func:`~textseg.ris.referrer.proposal_short_side`).
        support_weight, area_weight: the proposals' prior (:func:`~textseg.ris.hierarchy.proposal_prior`), in
            standard deviations of the positive map.
        generator_weight: with a generator, the positive map is ``generator_weight`` × its standardised positive
            map + (1 − ``generator_weight``) × the standardised text–patch cosine (1: the generator's map alone).
        spatial_backend: the reading's parser (``"auto"``, ``"spacy"``, ``"rules"``).
    """

    def __init__(self, segmenter: Any, promptable: "PromptableSegmenter", *,
                 generator: PointGenerator | None = None, n_positive: int = 1, n_negative: int = 1,
                 radius: int = 1, cache_size: int = 4, spatial: bool = False, spatial_margin: float = 1.0,
                 spatial_weight: float = 8.0, proposer: Any = None, support_weight: float = 0.5,
                 area_weight: float = 0.0, spatial_backend: str = "auto", generator_weight: float = 1.0) -> None:
        if n_positive < 1:
            raise UserError(f"at least one positive point is needed, got {n_positive}")
        if n_negative < 0:
            raise UserError(f"the number of negative points cannot be negative, got {n_negative}")
        self.pipeline = as_pipeline(segmenter)
        self.promptable = promptable
        self.generator = generator.to(self.pipeline.device).eval() if generator is not None else None
        self.n_positive = n_positive
        self.n_negative = n_negative if generator is not None else 0
        self.radius = radius
        self._cache = ImageCache(cache_size)
        self._image_key: bytes | None = None
        self.spatial = None
        if spatial:
            self.spatial = SpatialParser(spatial_backend)
            self.proposer = proposer or default_proposer(self.pipeline)
            self._proposals = ImageCache(cache_size)
        self.spatial_margin, self.spatial_weight = spatial_margin, spatial_weight
        self.support_weight, self.area_weight = support_weight, area_weight
        if not 0.0 <= generator_weight <= 1.0:
            raise UserError(f"generator_weight must be in [0, 1], got {generator_weight}")
        self.generator_weight = generator_weight

    @torch.no_grad()
    def dense_features(self, image: np.ndarray) -> torch.Tensor:
        """(1, gh, gw, E) dense CLIP features of an image at the segmenter's resize, cached per image."""
        return self._cache.get(image, lambda: self.pipeline.model.region.dense(self.pipeline.prepare(image)).float())

    @torch.no_grad()
    def text_features(self, sentences: list[str]) -> torch.Tensor:
        model = self.pipeline.model
        tokens = model.tokenizer(sentences).to(self.pipeline.device)
        return model.clip.encode_text(tokens).float()

    def maps(self, feats: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(S, gh, gw) positive and negative maps (None without a generator) of S sentence features."""
        feats = feats.expand(len(text), *feats.shape[1:])
        cosine = (F.normalize(feats, dim=-1) * F.normalize(text, dim=-1)[:, None, None]).sum(-1)
        if self.generator is None:
            return cosine, None
        pos, neg = self.generator(feats, text)
        if self.generator_weight < 1.0:
            pos = torch.stack([self.generator_weight * standardise(g) + (1.0 - self.generator_weight) * standardise(c)
                               for g, c in zip(pos, cosine)])
        return pos, neg

    @torch.no_grad()
    def prompts(self, image: np.ndarray, sentence: str) -> PointPrompts:
        """The point prompts of one sentence on one (H, W, 3) image."""
        return self.prompts_and_reading(image, sentence)[0]

    @torch.no_grad()
    def prompts_and_reading(self, image: np.ndarray, sentence: str) -> tuple[PointPrompts, dict | None]:
        """The point prompts, and with ``spatial`` the reading and what it chose (JSON-ready)."""
        feats = self.dense_features(image)
        reading = self.spatial.read(sentence) if self.spatial is not None else None
        texts = [sentence] + ([reading.anchor] if reading is not None and reading.relation and reading.anchor else [])
        pos, neg = self.maps(feats, self.text_features(texts))
        neg = None if neg is None else neg[:1]
        info = None
        if reading is not None:
            props = self._proposals.get(image, lambda: self.proposer(image))
            prior = proposal_prior(props, self.support_weight, self.area_weight)
            moved, used = spatial_positive_map(pos[0], reading, props.masks, anchor_map=pos[1] if len(pos) > 1
                                               else None, prior=prior, margin=self.spatial_margin,
                                               weight=self.spatial_weight)
            pos = moved[None]
            info = {**reading.to_dict(), "parser": self.spatial.backend_used, **used}
        prompts = make_prompts(pos[:1], neg, image.shape[:2], n_positive=self.n_positive,
                               n_negative=self.n_negative, radius=self.radius)
        return prompts, info

    @torch.no_grad()
    def __call__(self, image: ImageLike, sentence: str) -> ReferResult:
        """The mask ``sentence`` refers to, with the points that prompted it."""
        if not sentence or not sentence.strip():
            raise UserError("the referring sentence is empty")
        arr = load_image(image)
        prompts, reading = self.prompts_and_reading(arr, sentence)
        keep = prompts.labels[0] >= 0
        points = prompts.coords[0][keep].cpu().numpy()
        labels = prompts.labels[0][keep].cpu().numpy()
        key = image_key(arr)
        if key != self._image_key:
            self.promptable.set_image(arr)
            self._image_key = key
        out = self.promptable.predict(points, labels)
        return ReferResult(np.asarray(out.mask, dtype=bool), float(out.score), 0, prompts.scores[0][keep].cpu().numpy(),
                           "points", points=points, labels=labels, positive_map=prompts.positive_map[0].cpu().numpy(),
                           negative_map=prompts.negative_map[0].cpu().numpy(), reading=reading)


class CentrePointOracle:
    """The masks-given upper bound of point prompting: the promptable segmenter prompted with ONE positive point at
    the centre of the ground-truth mask (its pixel farthest from the mask's border). It reads the ground truth:
    an evaluation reference, not a method. A RIS predictor ``(image, sentence) -> mask``.

    Args:
        promptable: the :class:`~textseg.ris.promptable.PromptableSegmenter`.
        dataset: the refer-format dataset evaluated (samples with ``image``, ``sentence`` and ``mask``).
    """

    def __init__(self, promptable: "PromptableSegmenter", dataset: Any) -> None:
        self.promptable = promptable
        self.dataset = dataset
        self._index: dict[tuple[bytes, str], int] = {}
        for i in range(len(dataset)):
            sample = dataset[i]
            self._index.setdefault((image_key(sample["image"]), sample["sentence"]), i)
        self._image_key: bytes | None = None

    def __call__(self, image: np.ndarray, sentence: str) -> np.ndarray | None:
        from textseg.ris.promptable import mask_centre_point

        key = image_key(image)
        i = self._index.get((key, sentence))
        if i is None:
            raise UserError(f"the centre-point oracle has no ground truth for {sentence!r} on this image")
        mask = self.dataset[i]["mask"]
        if not mask.any():
            return None
        if key != self._image_key:
            self.promptable.set_image(image)
            self._image_key = key
        x, y = mask_centre_point(mask)
        return np.asarray(self.promptable.predict(np.array([[x, y]], float), np.array([1])).mask, dtype=bool)


def dense_and_text(model: "TextSegModel", images: torch.Tensor, sentences: list[str]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features for training: (B, gh, gw, E) dense features of (B, 3, H, W) images in [0, 1] (sides
    multiples of the patch size) and (B, E) sentence features."""
    with torch.no_grad():
        dense = model.region.dense(images).float()
        text = model.clip.encode_text(model.tokenizer(sentences).to(images.device)).float()
    return dense, text


__all__ = ["CentrePointOracle", "PointGenerator", "PointPrompts", "PointReferResult", "PointReferrer",
           "dense_and_text", "load_point_generator", "make_prompts", "near_patches", "patch_centres",
           "save_point_generator", "select_points", "sincos_2d"]
