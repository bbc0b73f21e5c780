"""Global-Local CLIP (Yu et al., CVPR 2023): zero-shot scoring of instance mask proposals against sentences.

Each proposal gets two CLIP ViT image embeddings:

* global: the whole image goes through CLIP; before each of the last ``masked_blocks`` blocks the patch tokens are
  multiplied by the proposal's mask resized to the patch grid (soft values, the CLS token is never masked), and
  the CLS output is projected (``ln_post(CLS) @ proj``). The unmasked blocks run once per image; the masked ones
  run on all proposals as one batch (in chunks of ``chunk_size``).
* local: the image with everything outside the mask filled, cropped to the mask's box and resized to the CLIP
  input size; its CLS embedding. All crops go through CLIP as one batch (in chunks).

Fusion, on un-normalised embeddings: visual = α·global + (1 − α)·local, text = β·sentence + (1 − β)·noun phrase
(both through the CLIP text tower, no prompt templates); score = ``logit_scale.exp()`` × cosine(visual, text).

Two preprocessing modes:

* ``"clean"`` (default): CLIP's mean/std; the global input keeps the image's aspect (short side = the CLIP input
  size, long side a multiple of the patch size, at most 4× the short side; positional embeddings interpolated
  bicubically, as :mod:`textseg.region` does); tight boxes (first to last mask pixel), grown to a square around
  the box so that the crop keeps its aspect (outside the mask everything is fill anyway); the fill is written in
  pixel space before normalisation (``fill="clip"``: CLIP's mean colour, 0 after normalisation;
  ``"image"``: this image's mean colour; or an RGB triple in [0, 1]); every downscaling resize is antialiased.
* ``"reference"``: the behaviour of the public code (Seonghoon-Yu/Zero-shot-RIS with FreeSOLO, torchvision 0.11)
  for parity with its published numbers: ImageNet mean/std; the image resized with PIL (bilinear) to 800 on the
  short side (long side ``int(800 · long / short)``), normalised, and from there every resize is a
  non-antialiased bilinear ``F.interpolate``: the CLIP input is that image resized to the CLIP size ignoring
  aspect, the crop source is it resized back to the original size; the fill (0.485, 0.456, 0.406) is written into
  the already-normalised crop source; the box is FreeSOLO's (:func:`freesolo_boxes`) truncated to int; the token
  mask is a bilinear non-antialiased resize of the float mask to the patch grid. One deviation: a one-pixel-wide
  (or -high) mask in column (row) 0 gets a truncated box of width 0, on which the public code crashes; here the
  crop is widened to one pixel.

Empty proposals (no pixel set) have no box: their features are zero and their scores ``-inf`` (never chosen);
``GlobalLocalScores.valid`` marks them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from textseg.backbones import IMAGENET_MEAN, IMAGENET_STD
from textseg.errors import ConfigError, UserError
from textseg.io import ImageLike, load_image
from textseg.region import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, embed_patches
from textseg.ris.boxes import freesolo_boxes, reference_crop_boxes, square_boxes, tight_boxes
from textseg.text import encode_text_trimmed

Mode = Literal["clean", "reference"]
Fill = Literal["clip", "image"] | tuple[float, float, float]

REFERENCE_SHORT_SIDE = 800
REFERENCE_FILL = (0.485, 0.456, 0.406)  # written into the ImageNet-normalised image, as the public code does
MAX_ASPECT = 4  # clean mode: the global input's long side is at most this many times its short side


@dataclass
class GlobalLocalScores:
    """Output of :meth:`GlobalLocalCLIP.score` (tensors on the CLIP's device, float32).

    Attributes:
        scores: (S, N) ``logit_scale.exp()`` × cosine(visual, text); ``-inf`` for empty proposals.
        global_features: (N, D) un-normalised global-branch embeddings (zero for empty proposals).
        local_features: (N, D) un-normalised crop-branch embeddings (zero for empty proposals).
        sentence_features: (S, D) un-normalised sentence embeddings.
        noun_phrase_features: (S, D) un-normalised noun-phrase embeddings.
        noun_phrases: the S noun phrases used (given or extracted).
        boxes: (N, 4) int64 crop boxes ``(x0, y0, x1, y1)`` in image pixels, end-exclusive (clean mode: the
            square around the tight box, possibly reaching outside the image); zeros for empty proposals.
        valid: (N,) bool, the proposal has at least one pixel.
        alpha, beta: the fusion weights used.
    """

    scores: torch.Tensor
    global_features: torch.Tensor
    local_features: torch.Tensor
    sentence_features: torch.Tensor
    noun_phrase_features: torch.Tensor
    noun_phrases: list[str]
    boxes: torch.Tensor
    valid: torch.Tensor
    alpha: float
    beta: float

    @property
    def visual_features(self) -> torch.Tensor:
        """(N, D) α·global + (1 − α)·local."""
        return self.alpha * self.global_features + (1 - self.alpha) * self.local_features

    @property
    def text_features(self) -> torch.Tensor:
        """(S, D) β·sentence + (1 − β)·noun phrase."""
        return self.beta * self.sentence_features + (1 - self.beta) * self.noun_phrase_features

    @property
    def best(self) -> torch.Tensor:
        """(S,) int64 index of the best-scoring proposal per sentence; -1 when no proposal is valid."""
        if self.scores.shape[1] == 0 or not bool(self.valid.any()):
            return torch.full((self.scores.shape[0],), -1, dtype=torch.long, device=self.scores.device)
        return self.scores.argmax(1)


def _resize(x: torch.Tensor, size: tuple[int, int], antialias: bool) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of (B, C, H, W); antialiased only when asked and shrinking."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias and shrink)


class GlobalLocalCLIP:
    """Scores instance mask proposals against referring sentences with Global-Local CLIP (module docstring).

    Args:
        clip: an open_clip CLIP with a ViT image tower pooled on the CLS token (e.g. ``ViT-B-32``).
        tokenizer: its open_clip tokenizer.
        alpha: weight of the global branch in the visual feature (0.95 RefCOCO/+, 0.85 RefCOCOg in the paper).
        beta: weight of the sentence in the text feature.
        masked_blocks: how many of the last ViT blocks see masked patch tokens (0: none, every proposal's global
            feature is the image embedding).
        mode: ``"clean"`` or ``"reference"`` (see the module docstring).
        chunk_size: proposals per batched forward (global masked blocks, crops, mask resizes).
        fill: clean mode's fill colour outside the mask: ``"clip"``, ``"image"`` or an RGB triple in [0, 1].
        noun_phrase_fn: sentence → noun phrase; default :func:`textseg.nouns.head_noun_phrase`.

    Raises:
        ConfigError: the CLIP has no CLS-pooled ViT tower, or a setting is out of range.
    """

    def __init__(self, clip: nn.Module, tokenizer: Callable, *, alpha: float = 0.95, beta: float = 0.5,
                 masked_blocks: int = 3, mode: Mode = "clean", chunk_size: int = 32, fill: Fill = "clip",
                 noun_phrase_fn: Callable[[str], str] | None = None):
        visual = getattr(clip, "visual", None)
        if visual is None or not hasattr(visual, "transformer") or not hasattr(visual, "class_embedding"):
            raise ConfigError("Global-Local CLIP needs an open_clip ViT image tower (not a ResNet/timm tower)")
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
            raise ConfigError("Global-Local CLIP needs a ViT pooled on its CLS token (pool_type 'tok', no attn_pool)")
        depth = len(visual.transformer.resblocks)
        if not 0 <= masked_blocks <= depth:
            raise ConfigError(f"masked_blocks must be in 0..{depth} for this CLIP, got {masked_blocks}")
        for name, v in (("alpha", alpha), ("beta", beta)):
            if not 0.0 <= float(v) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {v}")
        if mode not in ("clean", "reference"):
            raise ConfigError(f"mode must be 'clean' or 'reference', got {mode!r}")
        if int(chunk_size) < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
        named = isinstance(fill, str) and fill in ("clip", "image")
        if not (named or (isinstance(fill, (tuple, list)) and len(fill) == 3
                          and all(0.0 <= float(c) <= 1.0 for c in fill))):
            raise ConfigError(f"fill must be 'clip', 'image' or an RGB triple in [0, 1], got {fill!r}")
        self.clip = clip
        self.visual = visual
        self.tokenizer = tokenizer
        self.alpha, self.beta = float(alpha), float(beta)
        self.masked_blocks = int(masked_blocks)
        self.mode: Mode = mode
        self.chunk_size = int(chunk_size)
        self.fill = fill
        self.noun_phrase_fn = noun_phrase_fn
        self.patch_size = int(visual.conv1.kernel_size[0])
        size = visual.image_size
        self.input_size: tuple[int, int] = (int(size), int(size)) if isinstance(size, int) else tuple(map(int, size))
        cfg = getattr(visual, "preprocess_cfg", None) or {}
        clip_mean, clip_std = cfg.get("mean", OPENAI_CLIP_MEAN), cfg.get("std", OPENAI_CLIP_STD)
        self.mean, self.std = (IMAGENET_MEAN, IMAGENET_STD) if mode == "reference" else (clip_mean, clip_std)

    @classmethod
    def from_model(cls, model: nn.Module, **kwargs) -> "GlobalLocalCLIP":
        """A scorer over a :class:`~textseg.model.TextSegModel`'s CLIP (keyword arguments as the constructor)."""
        return cls(model.clip, model.tokenizer, **kwargs)

    # -- devices and inputs ---------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.visual.conv1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        return mean, std

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats()
        return (x - mean) / std

    def check_masks(self, masks: np.ndarray | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Validate proposals and move them to the CLIP's device as (N, H, W) bool.

        Args:
            masks: (N, H, W) (or one (H, W)) bool, or integer / float holding only 0 and 1.
            size: the image's (H, W).

        Raises:
            UserError: wrong shape, size other than the image's, or values other than 0 and 1.
        """
        m = masks if isinstance(masks, torch.Tensor) else torch.from_numpy(np.asarray(masks))
        if m.ndim == 2:
            m = m[None]
        if m.ndim != 3:
            raise UserError(f"masks must be (N, H, W), got shape {tuple(m.shape)}")
        if tuple(m.shape[1:]) != tuple(size):
            raise UserError(f"masks are {tuple(m.shape[1:])} (H, W) but the image is {tuple(size)}: proposals "
                            "must be at the image's size")
        if m.dtype != torch.bool:
            if m.is_complex() or not bool(((m == 0) | (m == 1)).all()):
                raise UserError(f"masks must be bool or hold only 0 and 1 (got dtype {m.dtype} with other values; "
                                "threshold them first, e.g. masks > 0)")
            m = m != 0
        return m.to(self.device)

    def prepare(self, image: ImageLike) -> dict[str, torch.Tensor]:
        """The image as this mode feeds it to the two branches.

        Returns:
            ``global``: (1, 3, h, w) normalised CLIP input of the global branch; ``source``: (3, H, W) crop source
            at the image's size (pixel values in [0, 1] in clean mode, normalised in reference mode);
            ``fill``: (3, 1, 1) fill value in the source's space.
        """
        arr = load_image(image)
        h, w = arr.shape[:2]
        if self.mode == "reference":
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(REFERENCE_SHORT_SIDE * long / short)
            nw, nh = (REFERENCE_SHORT_SIDE, new_long) if w <= h else (new_long, REFERENCE_SHORT_SIDE)
            im = Image.fromarray(arr)
            if (nw, nh) != (w, h):
                im = im.resize((nw, nh), Image.BILINEAR)
            x = torch.from_numpy(np.asarray(im).copy()).to(self.device).permute(2, 0, 1)[None]
            x = self._normalize(x.float().div(255))
            return {"global": _resize(x, self.input_size, antialias=False),
                    "source": _resize(x, (h, w), antialias=False)[0],
                    "fill": torch.tensor(REFERENCE_FILL, dtype=torch.float32, device=self.device).view(3, 1, 1)}
        x = torch.from_numpy(arr).to(self.device).permute(2, 0, 1).float().div(255)
        if isinstance(self.fill, str) and self.fill == "clip":
            fill = torch.tensor(self.mean, dtype=torch.float32, device=self.device)
        elif isinstance(self.fill, str):  # "image"
            fill = x.mean((1, 2))
        else:
            fill = torch.tensor(self.fill, dtype=torch.float32, device=self.device)
        g = _resize(x[None], self.clean_input_size((h, w)), antialias=True)
        return {"global": self._normalize(g), "source": x, "fill": fill.view(3, 1, 1)}

    def clean_input_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """Clean mode's global input (h, w) for an image of ``size``: aspect kept, sides multiples of the patch."""
        p, side = self.patch_size, min(self.input_size)
        h, w = size
        s = side / min(h, w)
        short = max(p, round(side / p) * p)
        long = min(max(p, round(max(h, w) * s / p) * p), MAX_ASPECT * short)
        return (short, long) if h <= w else (long, short)

    # -- image tower ----------------------------------------------------------------------------------------

    def _project(self, cls_tokens: torch.Tensor) -> torch.Tensor:
        x = self.visual.ln_post(cls_tokens)
        x = x @ self.visual.proj if self.visual.proj is not None else x
        return x.float()

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Plain CLIP image embeddings (B, D), un-normalised, of normalised (B, 3, H, W) images at any size."""
        x, _ = embed_patches(self.visual, images)
        for blk in self.visual.transformer.resblocks:
            x = blk(x)
        return self._project(x[:, 0])

    def token_masks(self, masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(N, gh·gw) soft token masks: bilinear resize of the float masks to the patch grid (antialiased when
        shrinking in clean mode, never in reference mode)."""
        m = masks[:, None].float()
        return _resize(m, grid, antialias=self.mode == "clean")[:, 0].flatten(1)

    @torch.no_grad()
    def global_features(self, image: ImageLike | dict[str, torch.Tensor],
                        masks: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, D) un-normalised global-branch embeddings (``image`` may be the output of :meth:`prepare`)."""
        prep = image if isinstance(image, dict) else self.prepare(image)
        m = self.check_masks(masks, tuple(prep["source"].shape[1:]))
        x, grid = embed_patches(self.visual, prep["global"])
        blocks = self.visual.transformer.resblocks
        first = len(blocks) - self.masked_blocks
        for blk in blocks[:first]:
            x = blk(x)
        n = m.shape[0]
        if self.masked_blocks == 0:
            return self._project(x[:, 0]).expand(n, -1).clone()
        out = []
        for i in range(0, n, self.chunk_size):
            tm = self.token_masks(m[i: i + self.chunk_size], grid).to(x.dtype)[:, :, None]
            y = x.expand(tm.shape[0], -1, -1)
            for blk in blocks[first:]:
                y = blk(torch.cat([y[:, :1], y[:, 1:] * tm], 1))  # the CLS token is never masked
            out.append(self._project(y[:, 0]))
        return torch.cat(out) if out else x.new_zeros(0, self.embed_dim, dtype=torch.float32)

    @property
    def embed_dim(self) -> int:
        proj = self.visual.proj
        return int(proj.shape[1]) if proj is not None else int(self.visual.class_embedding.shape[-1])

    def crop_boxes(self, masks: torch.Tensor) -> torch.Tensor:
        """(N, 4) int64 crop boxes ``(x0, y0, x1, y1)`` of this mode (end-exclusive), on the masks' device."""
        if self.mode == "reference":
            return reference_crop_boxes(masks)
        boxes = square_boxes(tight_boxes(masks))
        empty = ~masks.flatten(1).any(1)
        return boxes.masked_fill(empty[:, None], 0) + empty[:, None] * torch.tensor([0, 0, 1, 1], device=boxes.device)

    @torch.no_grad()
    def local_crops(self, image: ImageLike | dict[str, torch.Tensor], masks: np.ndarray | torch.Tensor,
                    boxes: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 3, h, w) normalised CLIP inputs of the local branch: masked, cropped, resized (empty masks give
        fill-only crops)."""
        prep = image if isinstance(image, dict) else self.prepare(image)
        src, fill = prep["source"], prep["fill"]
        m = self.check_masks(masks, tuple(src.shape[1:]))
        if boxes is None:
            boxes = self.crop_boxes(m)
        h, w = src.shape[1:]
        crops = []
        for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):  # one device-to-host copy for all boxes
            canvas = fill.expand(3, y1 - y0, x1 - x0).clone()
            iy0, iy1, ix0, ix1 = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
            if iy1 > iy0 and ix1 > ix0:
                mi = m[i, iy0:iy1, ix0:ix1].to(src.dtype)
                canvas[:, iy0 - y0: iy1 - y0, ix0 - x0: ix1 - x0] = src[:, iy0:iy1, ix0:ix1] * mi + (1 - mi) * fill
            crops.append(_resize(canvas[None], self.input_size, antialias=self.mode == "clean")[0])
        if not crops:
            return src.new_zeros(0, 3, *self.input_size)
        x = torch.stack(crops)
        return x if self.mode == "reference" else self._normalize(x)

    @torch.no_grad()
    def local_features(self, image: ImageLike | dict[str, torch.Tensor], masks: np.ndarray | torch.Tensor,
                       boxes: torch.Tensor | None = None) -> torch.Tensor:
        """(N, D) un-normalised local-branch embeddings, crops batched ``chunk_size`` at a time."""
        prep = image if isinstance(image, dict) else self.prepare(image)
        m = self.check_masks(masks, tuple(prep["source"].shape[1:]))
        if boxes is None:
            boxes = self.crop_boxes(m)
        out = [self.encode_image(self.local_crops(prep, m[i: i + self.chunk_size], boxes[i: i + self.chunk_size]))
               for i in range(0, m.shape[0], self.chunk_size)]
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim, device=self.device)

    # -- text tower -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """(T, D) un-normalised CLIP text embeddings of raw texts (no templates)."""
        if not texts:
            return torch.zeros(0, self.embed_dim, device=self.device)
        tokens = self.tokenizer(list(texts)).to(self.device)
        return encode_text_trimmed(self.clip, tokens).float()

    def noun_phrases(self, sentences: Sequence[str]) -> list[str]:
        """The head noun phrase of each sentence (``noun_phrase_fn``)."""
        fn = self.noun_phrase_fn
        if fn is None:
            from textseg.nouns import head_noun_phrase as fn
        return [fn(s) for s in sentences]

    # -- scoring --------------------------------------------------------------------------------------------

    @torch.no_grad()
    def score(self, image: ImageLike, masks: np.ndarray | torch.Tensor, sentences: str | Sequence[str],
              noun_phrases: Sequence[str] | None = None) -> GlobalLocalScores:
        """Score every proposal of one image against every sentence.

        Args:
            image: (H, W, 3) uint8 array, a path or a PIL image.
            masks: (N, H, W) bool (or 0/1) proposals at the image's size; N may be 0.
            sentences: S referring sentences (a single string is one sentence).
            noun_phrases: S noun phrases, or None to extract them (:meth:`noun_phrases`).

        Raises:
            UserError: unreadable image, masks of another size or not binary, noun phrases not one per sentence.
        """
        sentences = [sentences] if isinstance(sentences, str) else list(sentences)
        if noun_phrases is None:
            noun_phrases = self.noun_phrases(sentences)
        else:
            noun_phrases = [noun_phrases] if isinstance(noun_phrases, str) else list(noun_phrases)
            if len(noun_phrases) != len(sentences):
                raise UserError(f"got {len(noun_phrases)} noun phrases for {len(sentences)} sentences")
        prep = self.prepare(image)
        m = self.check_masks(masks, tuple(prep["source"].shape[1:]))
        valid = m.flatten(1).any(1)
        n, d = m.shape[0], self.embed_dim
        g = torch.zeros(n, d, device=self.device)
        loc = torch.zeros(n, d, device=self.device)
        boxes = torch.zeros(n, 4, dtype=torch.long, device=self.device)
        keep = valid.nonzero()[:, 0]  # empty proposals have no box: skipped, zero features, score -inf
        if len(keep):
            mk = m[keep]
            boxes[keep] = self.crop_boxes(mk)
            g[keep] = self.global_features(prep, mk)
            loc[keep] = self.local_features(prep, mk, boxes[keep])
        text = self.encode_text(list(sentences) + list(noun_phrases))
        sent, nps = text[: len(sentences)], text[len(sentences):]
        visual = self.alpha * g + (1 - self.alpha) * loc
        txt = self.beta * sent + (1 - self.beta) * nps
        scale = self.clip.logit_scale.exp().float()
        scores = scale * F.normalize(txt, dim=-1) @ F.normalize(visual, dim=-1).T
        scores = scores.masked_fill(~valid[None], float("-inf"))
        return GlobalLocalScores(scores=scores, global_features=g, local_features=loc, sentence_features=sent,
                                 noun_phrase_features=nps, noun_phrases=list(noun_phrases), boxes=boxes,
                                 valid=valid, alpha=self.alpha, beta=self.beta)


def random_box_masks(size: tuple[int, int], n: int, seed: int = 0) -> np.ndarray:
    """(n, H, W) bool random rectangles covering 5–60 % of each side (timing and smoke tests)."""
    rng = np.random.default_rng(seed)
    h, w = size
    out = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        bh = int(rng.integers(max(1, h // 20), max(2, h * 3 // 5)))
        bw = int(rng.integers(max(1, w // 20), max(2, w * 3 // 5)))
        y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        out[i, y: y + bh, x: x + bw] = True
    return out


def time_scoring(scorer: GlobalLocalCLIP, image: ImageLike, counts: Sequence[int] = (10, 50, 100),
                 sentence: str = "the man in the red shirt on the left", repeats: int = 1,
                 seed: int = 0) -> dict[int, float]:
    """Seconds per image of :meth:`GlobalLocalCLIP.score` for each proposal count (random rectangles).

    One warm-up call runs first; each count is the best of ``repeats`` runs. The noun phrase is given, so the
    time is the scorer's alone.
    """
    arr = load_image(image)
    sync = torch.cuda.synchronize if scorer.device.type == "cuda" else (lambda: None)
    scorer.score(arr, random_box_masks(arr.shape[:2], 2, seed), [sentence], ["man"])
    times: dict[int, float] = {}
    for n in counts:
        masks = random_box_masks(arr.shape[:2], n, seed)
        best = float("inf")
        for _ in range(max(1, repeats)):
            sync()
            t0 = time.perf_counter()
            scorer.score(arr, masks, [sentence], ["man"])
            sync()
            best = min(best, time.perf_counter() - t0)
        times[n] = best
    return times


__all__ = ["GlobalLocalCLIP", "GlobalLocalScores", "freesolo_boxes", "random_box_masks", "reference_crop_boxes",
           "square_boxes", "tight_boxes", "time_scoring"]
