"""The one layer between a :class:`~textseg.model.TextSegModel` and its users: an image to the model's input (resized
per a protocol, sides multiples of the patch size), grouping, region embeddings (on shifted patch grids) and
region-text similarities. :class:`~textseg.segmenter.Segmenter`, :mod:`textseg.ris` and the benchmarks use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from textseg.config import Protocol
from textseg.errors import UserError
from textseg.grouping import Groups, groups_to_pixels, masks_to_region_masks
from textseg.model import TextSegModel
from textseg.text import TextEncoder

# Images with more pixels than this are shrunk on the host (uint8) rather than as a float tensor on the device.
HOST_SHRINK_PIXELS = 16_000_000
# The most crops per CLIP call when the shifted patch grids of a batch (Protocol.grid_shifts) are embedded together.
SHIFT_BATCH = 64


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


class RegionPipeline:
    """A model's inference steps below the task: input sizing, grouping, region embedding, text similarities.

    Args:
        model: a model from :func:`textseg.create_model` (put in eval mode).
        protocol: the default inference settings (:class:`~textseg.config.Protocol`).
        text_cache_dir: disk cache of class embeddings; ``None`` for the default folder, ``False`` for none.

    Attributes:
        model, protocol: as given; ``device``: the model's device; ``text``: its
            :class:`~textseg.text.TextEncoder`.
    """

    def __init__(self, model: TextSegModel, protocol: Protocol | None = None, *,
                 text_cache_dir: str | Path | None | bool = None) -> None:
        self.model = model.eval()
        self.protocol = protocol or Protocol()
        self.text = TextEncoder(model.clip, model.tokenizer, cache_dir=text_cache_dir)
        self.device = next(model.parameters()).device

    def to_device(self, arr: np.ndarray, p: Protocol) -> torch.Tensor:
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
    def regions_batch(self, crops: torch.Tensor, pixel_size: tuple[int, int] | None = None,
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
            sized, groups = self.group_batch(crops, pixel_size, counts)
            pixels, masks = [g.pixels for g in groups], [g.region_masks for g in groups]
        else:
            sized = self.patch_sized(crops)
            pixels, masks = [given], [self.region_masks(given, sized.shape[-2:])]
        offsets = grid_offsets(self.model.region.patch_size, shifts)
        if len(offsets) > 1:
            if given is None:  # the groups at the sized scale, where the shifted grids are laid
                fine = [g.pixels if g.pixels.shape[-2:] == sized.shape[-2:] else
                        groups_to_pixels(g.patch, sized.shape[-2:]) for g in groups]
            else:
                fine = [given if given.shape[-2:] == sized.shape[-2:] else F.interpolate(
                    given[:, None].float(), size=sized.shape[-2:], mode="nearest-exact")[:, 0].long()]
        sizes = [m.shape[1] for m in masks]
        embedded = [self.embed(sized, masks, sizes)]  # per grid offset, per count: (B, K, E); the plain grid first
        shifted = offsets[1:]
        per_call = max(1, SHIFT_BATCH // len(sized))  # shifted grids are all one patch larger: several per CLIP call
        for first in range(0, len(shifted), per_call):
            chunk = shifted[first: first + per_call]
            patch = self.model.region.patch_size
            moved = torch.cat([shift_patch_grid(sized, patch, dy, dx) for dy, dx in chunk])
            grid_masks = [torch.cat([shifted_region_masks(f, k, patch, dy, dx) for dy, dx in chunk])
                          for f, k in zip(fine, sizes)]
            regions = self.embed(moved, grid_masks, sizes)
            embedded.extend([r.split(len(sized))[j] for r in regions] for j in range(len(chunk)))
        return [(pixels[i], regions[i]) for i in range(len(pixels)) for regions in embedded]

    def embed(self, crops: torch.Tensor, masks: list[torch.Tensor], sizes: list[int]) -> list[torch.Tensor]:
        """Normalised region embeddings of (N, 3, h, w) crops for several groupings' (N, K_i, gh, gw) masks, in one
        CLIP pass: one (N, K_i, E) tensor per grouping."""
        out = self.model(crops, torch.cat(masks, 1) if len(masks) > 1 else masks[0])
        return list(F.normalize(out.regions.float(), dim=-1).split(sizes, 1))

    def group_batch(self, crops: torch.Tensor, pixel_size: tuple[int, int] | None = None,
                    counts: Sequence[int | None] = (None,)) -> tuple[torch.Tensor, list[Groups]]:
        """The (B, 3, h, w) crops resized to the model's patch multiple, and their grouping into each of ``counts``
        groups (None: the model's k; the grouping backbone runs once) with (B, H, W) group maps at ``pixel_size``
        (default (h, w))."""
        sized = self.patch_sized(crops)
        size = pixel_size or tuple(crops.shape[-2:])
        features = self.model.group_features(sized) if len(counts) > 1 else None
        return sized, [self.model.group(sized, pixel_size=size, num_groups=k, features=features) for k in counts]

    def region_masks(self, pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, K, gh, gw) CLIP-grid masks of (B, h, w) region maps for crops resized to ``size`` (as the model's
        groups get theirs, :func:`~textseg.grouping.masks_to_region_masks`); one crop at a time, so that only one
        (K, h, w) pixel mask is held."""
        k = int(pixels.max()) + 1
        ids = torch.arange(k, device=pixels.device).view(k, 1, 1)
        grid = (size[0] // self.model.region.patch_size, size[1] // self.model.region.patch_size)
        return torch.cat([masks_to_region_masks((m == ids)[None], grid) for m in pixels])

    def patch_sized(self, x: torch.Tensor) -> torch.Tensor:
        """A (B, 3, h, w) batch resized so that both sides are multiples of the model's patch size."""
        h, w = x.shape[-2:]
        p = self.model.patch_size
        if not (h % p or w % p):
            return x
        return F.interpolate(x, size=(max(p, round(h / p) * p), max(p, round(w / p) * p)), mode="bilinear",
                             align_corners=False)

    def map_to_device(self, values: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        """An (H, W) integer map as an int64 tensor on the model's device at ``size`` (nearest)."""
        t = torch.from_numpy(values).to(self.device)
        if tuple(t.shape) != tuple(size):
            t = F.interpolate(t[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
        return t

    def prepare(self, image: np.ndarray, protocol: Protocol | None = None) -> torch.Tensor:
        """An (H, W, 3) uint8 image as the model's (1, 3, h, w) input: resized per the protocol (default: this
        pipeline's), sides multiples of the patch size."""
        return self.patch_sized(self.to_device(image, protocol or self.protocol))

    @torch.no_grad()
    def group_map(self, image: np.ndarray, protocol: Protocol | None = None) -> np.ndarray:
        """Group the whole (H, W, 3) image once (no sliding window), resized per the protocol: its (H, W) int64
        group map at the input size."""
        x = self.prepare(image, protocol)
        return self.model.group(x, pixel_size=image.shape[:2]).pixels[0].cpu().numpy()

    @torch.no_grad()
    def similarities(self, image: np.ndarray, names: Sequence[str], templates: str | Sequence[str],
                     protocol: Protocol | None = None, counts: Sequence[int | None] = (None,)
                     ) -> list[tuple[np.ndarray, torch.Tensor]]:
        """(group map, (K, len(names)) cosine similarities) of the whole (H, W, 3) image per group count and grid
        offset (count-major; :meth:`regions_batch`), on the CPU."""
        p = protocol or self.protocol
        text = self.text.encode_classes(list(names), templates).to(self.device)
        x = self.to_device(image, p)
        return [(groups[0].cpu().numpy(), (regions[0] @ text.T).cpu())
                for groups, regions in self.regions_batch(x, image.shape[:2], counts=counts, shifts=p.grid_shifts)]

    @staticmethod
    def grid_mean(parts: list[tuple[np.ndarray, torch.Tensor]]) -> tuple[np.ndarray, torch.Tensor]:
        """The group map and the similarities averaged over the grid offsets of :meth:`similarities` (one count)."""
        return parts[0][0], torch.stack([sims for _, sims in parts]).mean(0)


def as_pipeline(user: Any) -> RegionPipeline:
    """The :class:`RegionPipeline` of ``user``: itself, or its ``pipeline`` attribute (a
    :class:`~textseg.segmenter.Segmenter`'s)."""
    pipeline = user if isinstance(user, RegionPipeline) else getattr(user, "pipeline", None)
    if not isinstance(pipeline, RegionPipeline):
        raise TypeError(f"expected a Segmenter or a RegionPipeline, got {type(user).__name__}")
    return pipeline


__all__ = ["HOST_SHRINK_PIXELS", "SHIFT_BATCH", "RegionPipeline", "as_pipeline", "grid_offsets", "resized_size",
           "shift_patch_grid", "shifted_region_masks"]
