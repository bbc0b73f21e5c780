"""torch.distributed for training: process group set-up from torchrun's environment, the few collectives the
loop needs, and :func:`gather_features`, which gives the contrastive losses the global batch of every rank.
One process without torchrun is a world of one and calls no collective."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from textseg.losses import same_noun_positives

from textseg.artifacts import rng_state


@dataclass(frozen=True)
class DistInfo:
    """This process's place: ``rank`` of ``world`` processes, and the device it trains on."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup() -> DistInfo:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1; nccl on CUDA, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return DistInfo(rank, world, torch.device("cuda", local))
    return DistInfo(rank, world, torch.device("cpu"))


def teardown() -> None:
    """Wait for every rank, then leave the process group (no-op on one process)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's :func:`~textseg.artifacts.rng_state`, in rank order, on every rank."""
    if not dist.is_initialized():
        return [rng_state()]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, rng_state())
    return states


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order, on every rank (``[obj]`` on one process)."""
    if not dist.is_initialized():
        return [obj]
    objs: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(objs, obj)
    return objs


def sum_counts(counts: Mapping[str, int]) -> dict[str, int]:
    """Counts (e.g. skipped samples by reason) summed over all ranks, on every rank; keys sorted."""
    total: Counter[str] = Counter()
    for part in gather_objects(dict(counts)):
        total.update(part)
    return {k: int(total[k]) for k in sorted(total) if total[k]}


# ------------------------------------------------------------------------------------------- global-batch features
def noun_keys(words: Sequence[str], device: torch.device | str = "cpu") -> Tensor:
    """(M,) int64 keys of strings, equal on every rank for equal strings (a 63-bit BLAKE2 hash, not Python's
    per-process salted ``hash``), so that gathered nouns can be compared across ranks."""
    keys = [int.from_bytes(hashlib.blake2b(w.encode("utf-8"), digest_size=8).digest(), "little") >> 1
            for w in words]
    return torch.tensor(keys, dtype=torch.long, device=device)


@dataclass
class ContrastiveFeatures:
    """What the contrastive losses of a batch read; a field left None is neither used nor gathered.

    Attributes:
        image, text: (B, D) embeddings; pair i is (image i, caption i).
        regions: (B, K, D) region embeddings; valid: (B, K) bool, False for padding regions.
        nouns: (M, D) one row per (noun, image) pair; noun_image: (M,) long, the pair's image in ``[0, B)``;
            noun_keys: (M,) int64 identity of the pair's noun (:func:`noun_keys`).
    """

    image: Tensor | None = None
    text: Tensor | None = None
    regions: Tensor | None = None
    valid: Tensor | None = None
    nouns: Tensor | None = None
    noun_image: Tensor | None = None
    noun_keys: Tensor | None = None

    @property
    def num_images(self) -> int:
        for t in (self.image, self.text, self.regions, self.valid):
            if t is not None:
                return t.shape[0]
        raise ValueError("no image-level field is set")

    def positives(self) -> Tensor:
        """(M, B) same-noun positives of the noun-to-region loss (see :func:`~textseg.losses.same_noun_positives`)."""
        if self.noun_keys is None or self.noun_image is None:
            raise ValueError("positives need noun_keys and noun_image")
        return same_noun_positives(self.noun_keys, self.noun_image, self.num_images)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the backward multiplies the incoming gradient by ``factor``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.factor, None


def _pad(t: Tensor, dim: int, size: int) -> Tensor:
    """``t`` padded with zeros (False) along ``dim`` to ``size``."""
    if t.shape[dim] == size:
        return t
    shape = list(t.shape)
    shape[dim] = size - t.shape[dim]
    return torch.cat([t, t.new_zeros(shape)], dim=dim)


def _gather_rows(t: Tensor, rows: list[int], rank: int) -> Tensor:
    """Every rank's ``t`` (``rows[r]`` rows on rank r, the other dims equal), concatenated in rank order.

    Ranks pad to the most rows before ``all_gather`` and the padding is cut off again. The gathered copies carry
    no gradient; this rank's own rows are its own tensor, their gradient multiplied by the world size (see
    :func:`gather_features`).
    """
    world = len(rows)
    if max(rows) == 0:  # nothing on any rank
        return t
    padded = _pad(t, 0, max(rows))
    send = padded.detach().to(torch.uint8) if t.dtype == torch.bool else padded.detach()  # gloo has no bool
    parts = [torch.empty_like(send) for _ in range(world)]
    dist.all_gather(parts, send.contiguous())
    if t.dtype == torch.bool:
        parts = [p.bool() for p in parts]
    parts[rank] = _ScaleGrad.apply(padded, float(world)) if padded.requires_grad else padded
    return torch.cat([p[:n] for p, n in zip(parts, rows)])


def gather_features(local: ContrastiveFeatures) -> ContrastiveFeatures:
    """The features of the global batch, identical on every rank: rank 0's images, then rank 1's, ...

    Every rank must call it, with the same fields set. Ranks may hold different numbers of images, regions per
    image (K) and (noun, image) pairs: regions are padded to the largest K (``valid`` False there), rows to the
    largest count before each ``all_gather`` and cut back after it; ``noun_image`` is offset by the images of the
    ranks before. A world of one returns ``local`` itself.

    Gradients. Like open_clip's ``gather_features`` with ``local_loss=False, gather_with_grad=False``, the
    gathered copies of the other ranks' features are constants and this rank's own slice is its own tensor, so
    every rank computes the same global loss L and back-propagates only into its own features. With
    ``torch.distributed.nn.all_gather`` instead, the backward would sum, onto each rank's features, the gradients
    of the W identical copies of L: W times the local gradient. The own slice gets that factor W here without
    the backward collective (no collective inside DDP's backward, and no hang when a rank's slice does not
    require grad, e.g. a rank with no noun). DDP then averages: mean over ranks of W * dL/d(own features) *
    d(own features)/dθ = dL/dθ, the gradient of one process on the concatenated batch; parameters used after
    the gather (the logit scale) get dL/dθ on every rank, and their mean is the same. So the loss and the
    averaged gradients equal those of one process on the global batch, and the learning rate and gradient
    clipping mean the same at any world size.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return local
    world, rank = dist.get_world_size(), dist.get_rank()
    present = [t for t in (getattr(local, f.name) for f in fields(local)) if t is not None]
    if not present:
        return local
    device = present[0].device
    b = local.num_images
    k = local.regions.shape[1] if local.regions is not None else 0
    m = local.nouns.shape[0] if local.nouns is not None else 0
    sizes = [torch.zeros(3, dtype=torch.long, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([b, k, m], dtype=torch.long, device=device))
    images, ks, pairs = torch.stack(sizes).T.tolist()
    out = replace(local)
    for name in ("image", "text"):
        if getattr(local, name) is not None:
            setattr(out, name, _gather_rows(getattr(local, name), images, rank))
    if local.regions is not None:
        if local.valid is None:
            raise ValueError("regions need their valid mask")
        out.regions = _gather_rows(_pad(local.regions, 1, max(ks)), images, rank)
        out.valid = _gather_rows(_pad(local.valid, 1, max(ks)), images, rank)
    if local.nouns is not None:
        if local.noun_image is None or local.noun_keys is None:
            raise ValueError("nouns need noun_image and noun_keys")
        out.nouns = _gather_rows(local.nouns, pairs, rank)
        out.noun_image = _gather_rows(local.noun_image + sum(images[:rank]), pairs, rank)
        out.noun_keys = _gather_rows(local.noun_keys, pairs, rank)
    return out
