"""Open-vocabulary semantic segmentation and region-level referring with a :class:`TextSegModel` (groups → labels)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from textseg.config import Protocol, load_protocol
from textseg.errors import UserError
from textseg.grouping import Groups, groups_to_pixels, masks_to_region_masks
from textseg.io import ImageLike, label_dtype, load_image
from textseg.model import TextSegModel
from textseg.text import TextEncoder

if TYPE_CHECKING:
    from textseg.ris.referrer import ReferResult

# Images with more pixels than this are shrunk on the host (uint8) rather than as a float tensor on the device.
HOST_SHRINK_PIXELS = 16_000_000
# The most crops per CLIP call when the shifted patch grids of a batch (Protocol.grid_shifts) are embedded together.
SHIFT_BATCH = 64


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of sliding windows that cover [0, length), the last one flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def resized_size(size: tuple[int, int], short_side: int | None, max_long_side: int | None = None) -> tuple[int, int]:
    """(h, w) after resizing an image of ``size`` so that its short side is ``short_side`` (None: unchanged), or
    less where that would make the long side longer than ``max_long_side`` (None: no cap)."""
    h, w = size
    s = short_side / min(h, w) if short_side else 1.0
    if max_long_side and max(h, w) * s > max_long_side:
        s = max_long_side / max(h, w)
    if s == 1.0:
        return h, w
    return max(1, round(h * s)), max(1, round(w * s))


def check_class_names(classes: Sequence[str]) -> list[str]:
    """The class names as strings, checked: none empty, none repeated (ignoring case and surrounding spaces), none
    called "background" (label 0's name).

    Raises:
        UserError: the first problem found, naming the class.
    """
    names = [str(c) for c in classes]
    if not names:
        raise UserError("the class list is empty")
    seen: dict[str, str] = {}
    for name in names:
        key = name.strip().casefold()
        if not key:
            raise UserError("the class list contains an empty name")
        if key == "background":
            raise UserError(f"class {name!r}: 'background' is the name of label 0 (pixels no class matches); "
                            "name what it should find instead (e.g. 'sky', 'wall'), or list such names as "
                            "background classes")
        if key in seen:
            raise UserError(f"class {name!r} is listed twice (as {seen[key]!r} too): each class needs its own name")
        seen[key] = name
    return names


def bilinear_taps(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices i0, i1 and weights of i1 for each of ``n_out`` outputs of 1-D bilinear resampling from
    ``n_in`` samples, as ``F.interpolate(mode="bilinear", align_corners=False)`` computes them (no antialias).
    Computed on the CPU in float64 (not every device has it); the weights are float32."""
    scale = n_in / n_out
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * scale - 0.5).clamp_(min=0)
    i0 = src.floor().long().clamp_(max=n_in - 1)
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    return i0, i1, (src - i0).float()


def grid_offsets(patch_size: int, n: int) -> list[tuple[int, int]]:
    """The n × n (dy, dx) offsets at which :attr:`Protocol.grid_shifts` lays the CLIP's patch grid:
    ``round(i * patch_size / n)`` for i < n on each axis, (0, 0) first."""
    if not 1 <= n <= patch_size:
        raise UserError(f"grid_shifts must be in 1..{patch_size} (the CLIP's patch size), got {n}")
    steps = [round(i * patch_size / n) for i in range(n)]
    return [(dy, dx) for dy in steps for dx in steps]


def shift_patch_grid(images: torch.Tensor, patch_size: int, dy: int, dx: int) -> torch.Tensor:
    """A (B, 3, H, W) batch padded so that its patch grid moves by (dy, dx) pixels: ``dy`` rows on top and
    ``patch_size - dy`` at the bottom (``dx`` / ``patch_size - dx`` columns left / right), edge pixels repeated.
    One patch more per side; a patch boundary now lies ``dy`` rows below each old one."""
    return F.pad(images, (dx, patch_size - dx, dy, patch_size - dy), mode="replicate")


def shifted_region_masks(pixels: torch.Tensor, num_regions: int, patch_size: int, dy: int, dx: int) -> torch.Tensor:
    """(B, num_regions, H / p + 1, W / p + 1) masks of the regions of a (B, H, W) group map (ids < ``num_regions``)
    on the patch grid of :func:`shift_patch_grid`, where the padding belongs to no region.

    The rule is :func:`~textseg.grouping.masks_to_region_masks`'s (a patch belongs to a region that covers at least
    half of it; a region that covers none that much keeps the patch where its share is largest), computed from
    pixel counts rather than a (K, H, W) one-hot.
    """
    b, h, w = pixels.shape
    gh, gw = (h + patch_size) // patch_size, (w + patch_size) // patch_size
    rows = (torch.arange(h, device=pixels.device) + dy) // patch_size
    cols = (torch.arange(w, device=pixels.device) + dx) // patch_size
    cell = (rows[:, None] * gw + cols[None, :]).expand(b, h, w)
    image = torch.arange(b, device=pixels.device).view(b, 1, 1)
    counts = torch.bincount(((image * num_regions + pixels) * (gh * gw) + cell).flatten(),
                            minlength=b * num_regions * gh * gw).view(b, num_regions, gh * gw)
    masks = counts * 2 >= patch_size * patch_size
    empty = (counts.sum(-1) > 0) & ~masks.any(-1)
    if bool(empty.any()):
        i, k = empty.nonzero(as_tuple=True)
        masks[i, k, counts[i, k].argmax(-1)] = True
    return masks.view(b, num_regions, gh, gw)


def majority_labels(groups: torch.Tensor, truth: torch.Tensor, num_labels: int, ignore_index: int = 255
                    ) -> torch.Tensor:
    """Each group's majority ground-truth label: (B, K) int64, K = ``groups.max() + 1``.

    Args:
        groups: (B, h, w) group ids >= 0.
        truth: (B, h, w) labels in 0..num_labels-1, or ``ignore_index`` (not counted).
        num_labels: the number of labels (background 0 included).
        ignore_index: the label of pixels that are not counted.

    Ties go to the lower label, and a group without a counted pixel gets 0 (background).
    """
    b, k = groups.shape[0], int(groups.max()) + 1 if groups.numel() else 1
    valid = truth != ignore_index
    image = torch.arange(b, device=groups.device).view(b, 1, 1).expand_as(groups)
    index = ((image * k + groups) * num_labels + truth.long().clamp(0, num_labels - 1))[valid]
    counts = torch.bincount(index, minlength=b * k * num_labels).view(b, k, num_labels)
    return counts.argmax(-1)  # the first of equal maxima


def with_bg_score(sims: torch.Tensor, bg_score: float | None) -> torch.Tensor:
    """(..., C) region-class similarities with the constant background score appended as a last column (C + 1);
    unchanged when ``bg_score`` is None."""
    if bg_score is None:
        return sims
    return torch.cat([sims, sims.new_full((*sims.shape[:-1], 1), float(bg_score))], -1)


def region_class_probs(sims: torch.Tensor, bg_score: float | None, logit_scale: torch.Tensor | float
                       ) -> torch.Tensor:
    """Class probabilities of regions from their (..., C) text similarities: the constant background score
    appended (:func:`with_bg_score`), scaled by the model's logit scale, softmax over the last dimension."""
    return (logit_scale * with_bg_score(sims, bg_score)).softmax(-1)


def _check_maps(maps: Sequence[np.ndarray], arrays: Sequence[np.ndarray], what: str) -> list[np.ndarray]:
    """One integer (H, W) map per image, at that image's size, as int64 arrays.

    Raises:
        UserError: a count, type or shape that does not match.
    """
    if len(maps) != len(arrays):
        raise UserError(f"{len(maps)} {what}s given for {len(arrays)} images")
    out = []
    for i, (m, a) in enumerate(zip(maps, arrays)):
        m = np.asarray(m)
        if m.dtype.kind not in "iub":
            raise UserError(f"{what} {i} holds {m.dtype} values, expected integers")
        if m.shape != a.shape[:2]:
            raise UserError(f"{what} {i} is {m.shape}, its image is {a.shape[:2]}")
        out.append(m.astype(np.int64))
    return out


@dataclass(eq=False)
class _CropPlan:
    """One image of a :meth:`Segmenter.predict_batch` call: where its crops are, and (while some are pending) its
    resized tensor on the device.

    The window probabilities are kept as they come out of the model, per window: its (h, w) group map and its
    (C, K) region probabilities. Probabilities at a pixel are gathered only for the rows being labelled
    (:meth:`band`), so no (C, H, W) map of the image is ever held whatever the number of classes.
    """

    index: int
    size: tuple[int, int]
    window: tuple[int, int]
    starts: list[tuple[int, int]]
    left: int = 0
    image: torch.Tensor | None = None
    parts: list[tuple[int, int, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    count: torch.Tensor | None = None
    given: torch.Tensor | None = None  # a region or ground-truth map at the resized scale, while crops are pending

    @classmethod
    def make(cls, index: int, size: tuple[int, int], p: Protocol, passes: int = 1) -> "_CropPlan":
        """The windows of image ``index``; each is recorded ``passes`` times (once per grouping)."""
        h, w = resized_size(size, p.short_side, p.max_long_side)
        win_h, win_w = (min(p.window, h), min(p.window, w)) if p.window else (h, w)
        starts = [(y0, x0) for y0 in window_starts(h, win_h, p.stride or h)
                  for x0 in window_starts(w, win_w, p.stride or w)]
        return cls(index, (h, w), (win_h, win_w), starts, left=len(starts) * passes)

    def open(self, image: torch.Tensor, given: torch.Tensor | None = None) -> None:
        self.image, self.given = image, given
        self.count = torch.zeros(self.size, device=image.device)

    def add(self, y0: int, x0: int, pixels: torch.Tensor, region_probs: torch.Tensor, weight: int = 1) -> None:
        """Record one window: its (h, w) group map and (C, K) region probabilities, the sum of ``weight`` passes
        over that map (the grid offsets of one grouping), so that the map is painted once."""
        h, w = pixels.shape
        self.parts.append((y0, x0, pixels, region_probs))
        self.count[y0: y0 + h, x0: x0 + w] += weight
        self.left -= 1
        if self.left == 0:
            self.image = self.given = None

    def band(self, r0: int, r1: int) -> torch.Tensor:
        """(C, r1 - r0, w) probabilities of rows r0..r1-1 at the resized scale, averaged over the windows."""
        channels = self.parts[0][3].shape[0]
        out = torch.zeros(channels, r1 - r0, self.size[1], device=self.count.device)
        for y0, x0, pixels, probs in self.parts:
            lo, hi = max(r0, y0), min(r1, y0 + pixels.shape[0])
            if lo < hi:
                out[:, lo - r0: hi - r0, x0: x0 + pixels.shape[1]] += probs[:, pixels[lo - y0: hi - y0]]
        return out.div_(self.count[r0:r1])

    def close(self) -> None:
        self.image = self.count = None
        self.parts = []


@dataclass
class SegmentationResult:
    """Result of :meth:`Segmenter.predict`.

    Attributes:
        labels: (H, W); 0 = background, i + 1 = ``classes[i]`` of the call; uint8 when the names fit (up to 255
            classes), else uint16 (see :func:`label_dtype`). Cast before arithmetic that may go negative.
        classes: ``["background", *classes]``, so ``classes[labels]`` names every pixel.
        probs: (C', H, W) float32 class probabilities (foreground classes, then background classes, then the
            constant background score if one was given), if asked for. They are the one part of a result whose
            size grows with the class count times the image size.
    """

    labels: np.ndarray
    classes: list[str]
    probs: np.ndarray | None = None

    def pixel_counts(self) -> np.ndarray:
        """(len(classes),) int64 number of pixels of each label, background (0) first."""
        counts = np.zeros(len(self.classes), dtype=np.int64)
        for rows in np.array_split(self.labels, max(1, self.labels.size // (1 << 22))):  # bincount copies to int64
            counts += np.bincount(rows.ravel(), minlength=len(self.classes))[: len(self.classes)]
        return counts

    def pixel_share(self) -> dict[str, float]:
        """Share of the image's pixels per class name (classes with no pixel left out)."""
        total = max(1, self.labels.size)
        return {self.classes[i]: float(c) / total for i, c in enumerate(self.pixel_counts()) if c > 0}


@dataclass
class ReferringResult:
    """Result of :meth:`Segmenter.predict_referring`: the best-matching region.

    Attributes:
        mask: (H, W) bool mask of the chosen region.
        response: (H, W) float32 region-text cosine similarity painted over each region.
        score: cosine similarity of the chosen region.
    """

    mask: np.ndarray
    response: np.ndarray
    score: float
    region_scores: list[float] = field(default_factory=list)


class Segmenter:
    """Segments images into any list of classes with region-level CLIP recognition.

    Args:
        model: a model from :func:`textseg.create_model`.
        protocol: the default inference settings: a :class:`~textseg.config.Protocol`, a preset name
            (``groupvit``, ``sclip``, ``workbench``) or None for the defaults (short side 448, 80 templates).
        text_cache_dir: disk cache of class embeddings; ``None`` for the default folder, ``False`` for none.
        **overrides: protocol fields to change, e.g. ``templates="single"``.
    """

    def __init__(self, model: TextSegModel, protocol: Protocol | str | None = None, *,
                 text_cache_dir: str | Path | None | bool = None, **overrides: Any):
        self.model = model.eval()
        protocol = load_protocol(protocol) if isinstance(protocol, str) else protocol or Protocol()
        self.protocol = protocol.replace(**overrides) if overrides else protocol
        self.text = TextEncoder(model.clip, model.tokenizer, cache_dir=text_cache_dir)
        self.device = next(model.parameters()).device
        self._referrers: dict[tuple, Any] = {}

    def _protocol(self, protocol: Protocol | None, overrides: dict[str, Any]) -> Protocol:
        p = protocol or self.protocol
        return p.replace(**overrides) if overrides else p

    def _prepare(self, image: ImageLike, p: Protocol) -> tuple[np.ndarray, torch.Tensor]:
        arr = load_image(image)
        return arr, self._to_device(arr, p)

    def _to_device(self, arr: np.ndarray, p: Protocol) -> torch.Tensor:
        """An (H, W, 3) uint8 array as a (1, 3, h, w) float tensor in [0, 1] on the model's device, at the size
        :func:`resized_size` gives for the protocol.

        An image over :data:`HOST_SHRINK_PIXELS` that is to be shrunk is shrunk on the host first, in uint8
        (antialiased bilinear, as PIL does it): a 12000x12000 photo never exists as a float tensor, and only the
        small image crosses the bus. Smaller images are resized on the device (antialiased when shrinking).
        """
        h, w = resized_size(arr.shape[:2], p.short_side, p.max_long_side)
        if h * w < arr.shape[0] * arr.shape[1] and arr.shape[0] * arr.shape[1] > HOST_SHRINK_PIXELS:
            arr = np.array(Image.fromarray(arr).resize((w, h), Image.BILINEAR))
        x = torch.from_numpy(arr).to(self.device).permute(2, 0, 1)[None].float().div(255)
        if (h, w) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False,
                              antialias=h * w < x.shape[-2] * x.shape[-1])
        return x

    @torch.no_grad()
    def _regions_batch(self, crops: torch.Tensor, pixel_size: tuple[int, int] | None = None,
                       given: torch.Tensor | None = None, counts: Sequence[int | None] = (None,), shifts: int = 1
                       ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Group a (B, 3, h, w) batch of crops once per group count (None: the model's k) and embed the regions of
        all the groupings in one pass of the CLIP per patch-grid offset: per count and offset (count-major), (B, H,
        W) group maps at ``pixel_size`` (default (h, w)) and (B, K, E) normalised region embeddings, K the most
        groups of any crop (a crop's padding regions are never named by its group map). One pass is exact: a region
        reads only its own patches, never another region (:func:`~textseg.region.region_attention_mask`, or
        pooling).

        With ``shifts`` = n > 1 the CLIP's patch grid is also laid at the n × n offsets of :func:`grid_offsets`
        (:func:`shift_patch_grid`): a region that shares its patches with a neighbour on one grid gets patches of its
        own on another.

        With ``given`` ((B, h, w) region ids), those regions are embedded instead of the model's groups (no
        grouping) and returned as the group maps (one entry per offset)."""
        if given is None:
            sized, groups = self._group_batch(crops, pixel_size, counts)
            pixels, masks = [g.pixels for g in groups], [g.region_masks for g in groups]
        else:
            sized = self._patch_sized(crops)
            pixels, masks = [given], [self._region_masks(given, sized.shape[-2:])]
        offsets = grid_offsets(self.model.region.patch_size, shifts)
        if len(offsets) > 1:
            if given is None:  # the groups at the sized scale, where the shifted grids are laid
                fine = [g.pixels if g.pixels.shape[-2:] == sized.shape[-2:] else
                        groups_to_pixels(g.patch, sized.shape[-2:]) for g in groups]
            else:
                fine = [given if given.shape[-2:] == sized.shape[-2:] else F.interpolate(
                    given[:, None].float(), size=sized.shape[-2:], mode="nearest-exact")[:, 0].long()]
        sizes = [m.shape[1] for m in masks]
        embedded = [self._embed(sized, masks, sizes)]  # per grid offset, per count: (B, K, E); the plain grid first
        shifted = offsets[1:]
        per_call = max(1, SHIFT_BATCH // len(sized))  # shifted grids are all one patch larger: several per CLIP call
        for first in range(0, len(shifted), per_call):
            chunk = shifted[first: first + per_call]
            patch = self.model.region.patch_size
            moved = torch.cat([shift_patch_grid(sized, patch, dy, dx) for dy, dx in chunk])
            grid_masks = [torch.cat([shifted_region_masks(f, k, patch, dy, dx) for dy, dx in chunk])
                          for f, k in zip(fine, sizes)]
            regions = self._embed(moved, grid_masks, sizes)
            embedded.extend([r.split(len(sized))[j] for r in regions] for j in range(len(chunk)))
        return [(pixels[i], regions[i]) for i in range(len(pixels)) for regions in embedded]

    def _embed(self, crops: torch.Tensor, masks: list[torch.Tensor], sizes: list[int]) -> list[torch.Tensor]:
        """Normalised region embeddings of (N, 3, h, w) crops for several groupings' (N, K_i, gh, gw) masks, in one
        CLIP pass: one (N, K_i, E) tensor per grouping."""
        out = self.model(crops, torch.cat(masks, 1) if len(masks) > 1 else masks[0])
        return list(F.normalize(out.regions.float(), dim=-1).split(sizes, 1))

    def _group_batch(self, crops: torch.Tensor, pixel_size: tuple[int, int] | None = None,
                     counts: Sequence[int | None] = (None,)) -> tuple[torch.Tensor, list[Groups]]:
        """The (B, 3, h, w) crops resized to the model's patch multiple, and their grouping into each of ``counts``
        groups (None: the model's k; the grouping backbone runs once) with (B, H, W) group maps at ``pixel_size``
        (default (h, w))."""
        sized = self._patch_sized(crops)
        size = pixel_size or tuple(crops.shape[-2:])
        features = self.model.group_features(sized) if len(counts) > 1 else None
        return sized, [self.model.group(sized, pixel_size=size, num_groups=k, features=features) for k in counts]

    def _region_masks(self, pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, K, gh, gw) CLIP-grid masks of (B, h, w) region maps for crops resized to ``size`` (as the model's
        groups get theirs, :func:`~textseg.grouping.masks_to_region_masks`); one crop at a time, so that only one
        (K, h, w) pixel mask is held."""
        k = int(pixels.max()) + 1
        ids = torch.arange(k, device=pixels.device).view(k, 1, 1)
        grid = (size[0] // self.model.region.patch_size, size[1] // self.model.region.patch_size)
        return torch.cat([masks_to_region_masks((m == ids)[None], grid) for m in pixels])

    def _patch_sized(self, x: torch.Tensor) -> torch.Tensor:
        """A (B, 3, h, w) batch resized so that both sides are multiples of the model's patch size."""
        h, w = x.shape[-2:]
        p = self.model.patch_size
        if not (h % p or w % p):
            return x
        return F.interpolate(x, size=(max(p, round(h / p) * p), max(p, round(w / p) * p)), mode="bilinear",
                             align_corners=False)

    @torch.no_grad()
    def group_map(self, image: ImageLike, protocol: Protocol | None = None, **overrides: Any) -> np.ndarray:
        """Group the whole image once (no sliding window), resized per the protocol: its (H, W) int64 group map at
        the input size."""
        p = self._protocol(protocol, overrides)
        arr, x = self._prepare(image, p)
        return self.model.group(self._patch_sized(x), pixel_size=arr.shape[:2]).pixels[0].cpu().numpy()

    @torch.no_grad()
    def predict(self, image: ImageLike, classes: Sequence[str], protocol: Protocol | None = None, *,
                return_probs: bool = False, **overrides: Any) -> SegmentationResult:
        """Label every pixel with one of ``classes`` or background.

        Args:
            image: path, PIL image or (H, W, 3) array.
            classes: class names (any vocabulary).
            protocol: inference settings (:class:`~textseg.config.Protocol`); defaults to the segmenter's.
                ``background``: ``"threshold"`` (a pixel whose best probability is below ``bg_threshold``, or whose
                best class is a background class, is background), ``"classes"`` (background classes only) or
                None (every pixel gets a class); ``bg_score``: a constant background cosine similarity scored like
                one more background class (TCL); ``window``/``stride``: sliding windows at the resized scale.
            return_probs: keep the (C', H, W) probability maps in the result.
            **overrides: protocol fields to change for this call, e.g. ``short_side=None``.

        Returns:
            A :class:`SegmentationResult` at the input image's size.
        """
        return self.predict_batch([image], classes, protocol, return_probs=return_probs, **overrides)[0]

    @torch.no_grad()
    def predict_batch(self, images: Sequence[ImageLike], classes: Sequence[str], protocol: Protocol | None = None, *,
                      batch_size: int = 32, return_probs: bool = False, **overrides: Any) -> list[SegmentationResult]:
        """:meth:`predict` for many images at once, with the same results as one call per image.

        Each image is resized per the protocol and cut into its sliding windows (or kept whole). Crops of the same
        size, from one image or several, go through the model together, ``batch_size`` at a time: one grouping
        and one region pass per chunk. The class text is encoded once per call; each window's group map and region
        probabilities stay on the model's device until the image's last crop is done and it is labelled (see
        :meth:`_finish`), so device memory is bounded by ``batch_size`` crops whatever the number of images.
        The decoded images and the results of the call stay on the host: feed a large collection in slices (as
        ``textseg segment`` does).

        Args:
            images: paths, PIL images or (H, W, 3) arrays; sizes may differ.
            classes, protocol, return_probs, overrides: as for :meth:`predict`.
            batch_size: the most crops per model call.

        Returns:
            One :class:`SegmentationResult` per image, in the order given.
        """
        return self._predict(images, classes, self._protocol(protocol, overrides), batch_size, return_probs)

    @torch.no_grad()
    def label_regions(self, images: Sequence[ImageLike], regions: Sequence[np.ndarray], classes: Sequence[str],
                      protocol: Protocol | None = None, *, batch_size: int = 32, return_probs: bool = False,
                      **overrides: Any) -> list[SegmentationResult]:
        """:meth:`predict_batch` with given regions in place of the model's groups (e.g. ground-truth instances).

        Each image's regions are an (H, W) map of region ids 0..K-1 at the input size (every pixel in one region;
        an id may be unused). The map is resized with the image per the protocol (nearest) and cut into the same
        windows; in each window its regions get CLIP-grid masks as the model's groups do, are embedded by the
        model, and are labelled by the very code that labels the model's groups: the same text embeddings,
        templates, logit scale, background rule, ``bg_score`` and threshold, window averaging and resizing. Given
        the model's own group map (under a protocol that neither resizes nor cuts windows, with groups that follow
        its patch grid) it returns what :meth:`predict_batch` returns.

        Args:
            images: as for :meth:`predict_batch`.
            regions: one (H, W) non-negative integer region map per image, at that image's size.
            classes, protocol, batch_size, return_probs, overrides: as for :meth:`predict_batch`.

        Returns:
            One :class:`SegmentationResult` per image, in the order given.
        """
        return self._predict(images, classes, self._protocol(protocol, overrides), batch_size, return_probs,
                             regions=regions)

    @torch.no_grad()
    def oracle_labels(self, images: Sequence[ImageLike], truth: Sequence[np.ndarray], classes: Sequence[str],
                      protocol: Protocol | None = None, *, batch_size: int = 32, ignore_index: int = 255,
                      **overrides: Any) -> list[SegmentationResult]:
        """The model's own groups, each labelled with the majority ground-truth label of its pixels: the best
        labelling the grouping allows (the grouping ceiling).

        It runs :meth:`predict_batch`'s grouping (same resizing, windows, batches), and in place of each window's
        region probabilities puts a one-hot of the group's majority label (:func:`majority_labels` of the ground
        truth resized with the image, nearest); the windows are then averaged, resized and labelled as
        :meth:`predict_batch` does, the background going by the best average (a probability threshold would judge
        the model's confidence, which the oracle does not have; with no background rule every pixel gets a class,
        as there). No text or region embedding is computed.

        Args:
            images: as for :meth:`predict_batch`.
            truth: one (H, W) ground-truth map per image in the call's label space: 0 background, i + 1 =
                ``classes[i]``, ``ignore_index`` not scored.
            classes, protocol, batch_size, overrides: as for :meth:`predict_batch`.
            ignore_index: the ground-truth value of pixels that are not scored.

        Returns:
            One :class:`SegmentationResult` per image, in the order given.
        """
        p = self._protocol(protocol, overrides)
        if p.background == "threshold":
            p = dataclasses.replace(p, background="classes")  # not Protocol.replace: no schema check per call
        return self._predict(images, classes, p, batch_size, False, truth=truth, ignore_index=ignore_index)

    def _predict(self, images: Sequence[ImageLike], classes: Sequence[str], p: Protocol, batch_size: int,
                 return_probs: bool, *, regions: Sequence[np.ndarray] | None = None,
                 truth: Sequence[np.ndarray] | None = None, ignore_index: int = 255) -> list[SegmentationResult]:
        """What :meth:`predict_batch`, :meth:`label_regions` (``regions``) and :meth:`oracle_labels` (``truth``)
        run: one loop over batches of same-size crops."""
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {batch_size}")
        classes = check_class_names(classes)
        # a background class that is also a class ties with it, and the class (listed first) wins the argmax
        names = classes + list(p.background_classes)
        label_dtype(len(classes) + 1)  # refuses more classes than a label map holds, before any work
        text = None if truth is not None else self.text.encode_classes(names, p.templates).to(self.device)
        arrays = [load_image(im) for im in images]
        given = None
        if regions is not None:
            given = _check_maps(regions, arrays, "region map")
            if any(m.size and m.min() < 0 for m in given):
                raise UserError("a region map holds a negative region id")
        elif truth is not None:
            given = _check_maps(truth, arrays, "ground-truth map")
            for m in given:
                bad = (m != ignore_index) & ((m < 0) | (m > len(classes)))
                if bad.any():
                    raise UserError(f"a ground-truth map holds the label {int(m[bad][0])}, outside 0..{len(classes)} "
                                    f"and not the ignore index {ignore_index}")
        # given regions are labelled as they are; the model's groups (oracle labels included) once per group count
        counts: list[int | None] = [None] if regions is not None or not p.group_counts else list(p.group_counts)
        shifts = 1 if truth is not None else p.grid_shifts  # the oracle labels embed nothing
        grids = len(grid_offsets(self.model.region.patch_size, shifts))
        plans = [_CropPlan.make(i, a.shape[:2], p, passes=len(counts)) for i, a in enumerate(arrays)]
        by_size: dict[tuple[int, int], list[_CropPlan]] = {}
        for plan in plans:
            by_size.setdefault(plan.window, []).append(plan)
        results: list[SegmentationResult | None] = [None] * len(arrays)
        for (win_h, win_w), same_size in by_size.items():
            crops = [(plan, y0, x0) for plan in same_size for y0, x0 in plan.starts]
            for chunk in (crops[i: i + batch_size] for i in range(0, len(crops), batch_size)):
                for plan, _, _ in chunk:
                    if plan.image is None:  # the first crop of this image: resize it and open its accumulators
                        plan.open(self._to_device(arrays[plan.index], p),
                                  None if given is None else self._map_to_device(given[plan.index], plan.size))
                batch = torch.cat([plan.image[..., y0: y0 + win_h, x0: x0 + win_w] for plan, y0, x0 in chunk])
                if given is not None:
                    given_batch = torch.stack([plan.given[y0: y0 + win_h, x0: x0 + win_w] for plan, y0, x0 in chunk])
                if truth is not None:  # the grouping ceiling: each group's majority label, one-hot
                    passes = [(g.pixels, None) for g in self._group_batch(batch, counts=counts)[1]]
                else:
                    passes = self._regions_batch(batch, given=None if given is None else given_batch, counts=counts,
                                                 shifts=shifts)
                for first in range(0, len(passes), grids):  # count-major: the grids of one grouping together
                    pixels, regions_emb = passes[first]
                    if regions_emb is None:
                        best = majority_labels(pixels, given_batch, len(classes) + 1, ignore_index)
                        region_probs = F.one_hot(torch.where(best > 0, best - 1, len(classes)),
                                                 len(classes) + 1).float()
                    else:  # (B, K, C'), summed over the grids
                        region_probs = sum(region_class_probs(emb @ text.T, p.bg_score, self.model.logit_scale.float())
                                           for _, emb in passes[first: first + grids])
                    for b, (plan, y0, x0) in enumerate(chunk):
                        plan.add(y0, x0, pixels[b], region_probs[b].T, weight=grids)
                        if plan.left == 0:
                            results[plan.index] = self._finish(plan, arrays[plan.index].shape[:2], len(classes),
                                                               ["background", *classes], p, return_probs)
        return results  # type: ignore[return-value]

    def _map_to_device(self, values: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        """An (H, W) integer map as an int64 tensor on the model's device at ``size`` (nearest)."""
        t = torch.from_numpy(values).to(self.device)
        if tuple(t.shape) != tuple(size):
            t = F.interpolate(t[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
        return t

    @staticmethod
    def _finish(plan: "_CropPlan", size: tuple[int, int], c: int, names: list[str], p: Protocol,
                return_probs: bool, tile_elements: int = 1 << 22) -> SegmentationResult:
        """Label an image's pixels at the input size from its window probabilities at the resized scale.

        The probabilities are brought to the input size bilinearly (as ``F.interpolate`` does) a band of rows at
        a time, at most ``tile_elements`` values per band, and only the labels of each band are kept: memory is
        bounded whatever the image size and class count, unless ``return_probs`` asks for the full maps.
        """
        (h, w), (H, W) = plan.size, size
        device = plan.count.device
        channels = plan.parts[0][3].shape[0]
        y0s, y1s, wy = bilinear_taps(h, H)  # on the CPU: the band limits below are read without a device sync
        x0s, x1s, wx = (t.to(device) for t in bilinear_taps(w, W))
        dtype = label_dtype(len(names))
        labels = torch.empty(H, W, dtype=torch.uint8 if dtype == np.uint8 else torch.int32, device=device)
        probs_out = torch.empty(channels, H, W) if return_probs else None
        # rows per band: its (C, T, W) output and its (C, ~T * h / H + 2, w) source band each within tile_elements
        rows = max(1, min(tile_elements // (channels * W), int((tile_elements // (channels * w) - 2) * H / h)))
        for t0 in range(0, H, rows):
            t1 = min(H, t0 + rows)
            r0, r1 = int(y0s[t0]), int(y1s[t1 - 1]) + 1  # the source rows this band of output rows reads
            band = plan.band(r0, r1)
            ly = wy[t0:t1, None].to(device)
            i0, i1 = (y0s[t0:t1] - r0).to(device), (y1s[t0:t1] - r0).to(device)
            mixed = band[:, i0] * (1 - ly) + band[:, i1] * ly  # (C, T, w)
            probs = mixed[..., x0s] * (1 - wx) + mixed[..., x1s] * wx  # (C, T, W)
            if p.background is None:
                tile = probs[:c].argmax(0) + 1
            else:
                best_p, best = probs.max(0)
                tile = best + 1
                tile[best >= c] = 0
                if p.background == "threshold":
                    tile[best_p < p.bg_threshold] = 0
            labels[t0:t1] = tile
            if probs_out is not None:
                probs_out[:, t0:t1] = probs.cpu()
        plan.close()
        return SegmentationResult(labels=labels.cpu().numpy().astype(dtype, copy=False), classes=names,
                                  probs=probs_out.numpy() if probs_out is not None else None)

    @torch.no_grad()
    def _similarities(self, image: ImageLike, names: Sequence[str], templates: str | Sequence[str],
                      p: Protocol, counts: Sequence[int | None] = (None,)) -> list[tuple[np.ndarray, torch.Tensor]]:
        """(group map, (K, len(names)) similarities) of the whole image per group count and grid offset
        (count-major; :meth:`_regions_batch`)."""
        text = self.text.encode_classes(list(names), templates).to(self.device)
        arr, x = self._prepare(image, p)
        return [(groups[0].cpu().numpy(), (regions[0] @ text.T).cpu())
                for groups, regions in self._regions_batch(x, arr.shape[:2], counts=counts, shifts=p.grid_shifts)]

    @torch.no_grad()
    def region_similarities(self, image: ImageLike, names: Sequence[str], protocol: Protocol | None = None,
                            **overrides: Any) -> tuple[np.ndarray, torch.Tensor]:
        """Group the whole image once (no sliding window) and score every region against every name.

        Returns:
            (H, W) group map at the input size and (K, len(names)) cosine similarities of region k to name c
            (averaged over the protocol's grid offsets, ``grid_shifts``).
        """
        p = self._protocol(protocol, overrides)
        return self._grid_mean(self._similarities(image, names, p.templates, p))

    @staticmethod
    def _grid_mean(parts: list[tuple[np.ndarray, torch.Tensor]]) -> tuple[np.ndarray, torch.Tensor]:
        """The group map and the similarities averaged over the grid offsets of :meth:`_similarities` (one count)."""
        return parts[0][0], torch.stack([sims for _, sims in parts]).mean(0)

    @torch.no_grad()
    def grouping_similarities(self, image: ImageLike, names: Sequence[str], protocol: Protocol | None = None,
                              **overrides: Any) -> list[tuple[np.ndarray, torch.Tensor]]:
        """:meth:`region_similarities` once per group count of the protocol's ``group_counts`` (the model's own k
        when it has none) and grid offset (``grid_shifts``), count-major, not averaged: :meth:`predict` averages
        the class probabilities of these parts."""
        p = self._protocol(protocol, overrides)
        return self._similarities(image, names, p.templates, p, p.group_counts or [None])

    @property
    def logit_scale(self) -> float:
        """The CLIP's logit scale: region-to-class cosine similarities times this are the logits of a prediction."""
        return float(self.model.logit_scale.detach())

    def refer(self, image: ImageLike, sentence: str, *, proposals: Any = None, method: str = "global-local",
              **options: Any) -> "ReferResult":
        """The mask proposal a referring sentence refers to (zero-shot Global-Local CLIP; see
        :class:`textseg.ris.Referrer`).

        Args:
            image: path, PIL image or (H, W, 3) array.
            sentence: the referring expression.
            proposals: this image's proposals (a :class:`~textseg.ris.Proposals`, an (N, H, W) bool array or a mask
                file); None: textseg's grouping made instance-like (or ``options["proposer"]``'s).
            method: ``"global-local"`` (masked crops), ``"region"`` (region tokens, one forward) or ``"points"``
                (point prompts for a promptable segmenter, :class:`~textseg.ris.points.PointReferrer`).
            **options: :class:`~textseg.ris.Referrer` options (``proposer``, ``no_target_threshold``, ``alpha``,
                ``beta``, ``masked_blocks``, ``mode``, ...), or for ``"points"`` the
                :class:`~textseg.ris.points.PointReferrer` options (``promptable`` (required), ``generator``,
                ``n_positive``, ``n_negative``). The referrer of each set of options is kept, with its per-image
                cache.

        Returns:
            A :class:`~textseg.ris.ReferResult`: the mask (empty for no target), its score, the chosen proposal's
            index and every proposal's score; for ``"points"`` a :class:`~textseg.ris.points.PointReferResult`
            (the mask, the segmenter's score, the points and the response map).
        """
        key = (method, tuple(sorted((k, repr(v)) for k, v in options.items())))
        if method == "points":
            from textseg.ris.points import PointReferrer

            if proposals is not None:
                raise UserError("method 'points' makes its mask from point prompts; it takes no proposals")
            if key not in self._referrers:
                self._referrers[key] = PointReferrer(self, **options)
            return self._referrers[key](image, sentence)
        from textseg.ris.referrer import Referrer

        if key not in self._referrers:
            self._referrers[key] = Referrer(self, method=method, **options)
        return self._referrers[key](image, sentence, proposals)

    @torch.no_grad()
    def predict_referring(self, image: ImageLike, sentence: str, protocol: Protocol | None = None,
                          **overrides: Any) -> ReferringResult:
        """Pick the region whose embedding best matches a referring sentence (a zero-shot region baseline)."""
        if not sentence or not sentence.strip():
            raise UserError("the referring sentence is empty")
        p = self._protocol(protocol, overrides)
        groups, sims = self._grid_mean(self._similarities(image, [sentence], ("{}",), p))
        scores = sims[:, 0]
        best = int(scores.argmax())
        return ReferringResult(mask=groups == best, response=scores.numpy()[groups].astype(np.float32),
                               score=float(scores[best]), region_scores=[float(v) for v in scores])
