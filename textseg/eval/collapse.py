"""Do one image's region embeddings collapse onto one image-level embedding? Measures of a trained model's regions.

Over a VOC-format set (the workbench's development scenes), with the model's own groups as the regions:

- ``pairwise``: the mean cosine between two regions of the same image (1: every region the same embedding);
- ``to_image``: the mean cosine of a region to its image's CLS embedding;
- ``self_attention``: (region tokens only) the attention a region token puts on itself rather than its region's
  patches (:meth:`~textseg.region.RegionTokenViT.self_attention_mass`);
- ``accuracy_by_size``: the share of regions whose majority ground-truth label is an object class that are named
  that class (argmax over the dataset's object classes), per bin of region area (share of the image).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from textseg.eval.diagnose import majority_labels

SIZE_BINS: tuple[float, ...] = (0.02, 0.05, 0.15)


def size_bin_names(edges: Sequence[float] = SIZE_BINS) -> list[str]:
    """Names of the area bins cut at ``edges`` (shares of the image), e.g. ``"< 2 %"``, ``"2-5 %"``, ``">= 15 %"``."""
    pct = [f"{100 * e:g}" for e in edges]
    return [f"< {pct[0]} %"] + [f"{a}-{b} %" for a, b in zip(pct, pct[1:])] + [f">= {pct[-1]} %"]


@torch.no_grad()
def collapse_measures(segmenter: Any, dataset: Any, *, limit: int | None = None, edges: Sequence[float] = SIZE_BINS,
                      progress: bool = False) -> dict[str, Any]:
    """The module's measures of a :class:`~textseg.segmenter.Segmenter`'s model over a labelled dataset.

    Args:
        segmenter: its model's grouping gives the regions, its protocol the input size, its text encoder the
            class embeddings (``"single"`` template).
        dataset: a :class:`~textseg.data.semseg.SemsegDataset` with background 0 (object classes 1..C-1).
        limit: only the first ``limit`` images.
        edges: area bins' edges (shares of the image).

    Returns:
        JSON-ready: ``pairwise``, ``to_image``, ``self_attention`` (None for pooling), ``accuracy_by_size`` (bin
        name → {``accuracy``, ``regions``}), ``accuracy`` (all object regions), ``images``, ``regions``.
    """
    from tqdm import tqdm

    pipe = segmenter.pipeline
    model = pipe.model
    tokens = model.region.mode == "tokens"
    names = list(dataset.class_names)
    text = segmenter.text.encode_classes(names[1:], "single").to(pipe.device)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    pairwise, to_image, attention = [], [], []
    correct = np.zeros(len(edges) + 1)
    counted = np.zeros(len(edges) + 1)
    regions_seen = 0
    for i in tqdm(range(n), desc="collapse measures", disable=not progress):
        sample = dataset[i]
        image, truth = sample["image"], sample["label"]
        x = pipe.prepare(image)
        groups = model.group(x, pixel_size=image.shape[:2])
        out = model(x, groups.region_masks)
        valid = out.valid[0]
        embedded = F.normalize(out.regions[0].float(), dim=-1)
        regions = embedded[valid]
        img = F.normalize(out.image[0].float(), dim=-1)
        k = len(regions)
        regions_seen += k
        to_image.append(float((regions @ img).mean()))
        if k > 1:
            sims = regions @ regions.T
            pairwise.append(float((sims.sum() - sims.diagonal().sum()) / (k * (k - 1))))
        if tokens:
            attention.append(float(model.region.self_attention_mass(x, groups.region_masks)[0][valid].mean()))
        pixels = groups.pixels[0]
        labels = majority_labels(pixels[None], torch.from_numpy(truth).to(pixels.device)[None], len(names),
                                 dataset.ignore_index)[0]
        labels = F.pad(labels, (0, len(valid) - len(labels)))  # trailing regions without pixels: background
        areas = torch.bincount(pixels.flatten(), minlength=len(valid)).float() / pixels.numel()
        predicted = (embedded @ text.T).argmax(-1) + 1
        for j in torch.nonzero(valid & (labels > 0)).flatten().tolist():
            b = int(np.searchsorted(edges, float(areas[j]), side="right"))
            counted[b] += 1
            correct[b] += int(predicted[j] == labels[j])
    bins = {name: {"accuracy": 100 * c / m if m else None, "regions": int(m)}
            for name, c, m in zip(size_bin_names(edges), correct, counted)}
    return {"images": n, "regions": regions_seen, "pairwise": float(np.mean(pairwise)) if pairwise else None,
            "to_image": float(np.mean(to_image)) if to_image else None,
            "self_attention": float(np.mean(attention)) if attention else None,
            "accuracy": 100 * correct.sum() / counted.sum() if counted.sum() else None, "accuracy_by_size": bins}


def collapse_markdown(rows: dict[str, dict[str, Any]]) -> str:
    """A table of :func:`collapse_measures` results, one row per named model."""
    bins = list(next(iter(rows.values()))["accuracy_by_size"]) if rows else []
    head = ["model", "pairwise cos", "cos to image", "self-attention", "accuracy"] + [f"acc {b}" for b in bins]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]

    def fmt(v: float | None, digits: int = 3) -> str:
        return "–" if v is None else f"{v:.{digits}f}"

    for name, r in rows.items():
        cells = [name, fmt(r["pairwise"]), fmt(r["to_image"]), fmt(r["self_attention"]), fmt(r["accuracy"], 1)]
        cells += [f"{fmt(r['accuracy_by_size'][b]['accuracy'], 1)} ({r['accuracy_by_size'][b]['regions']})"
                  for b in bins]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["SIZE_BINS", "collapse_markdown", "collapse_measures", "size_bin_names"]
