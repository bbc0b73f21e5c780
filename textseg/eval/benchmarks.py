"""A benchmark run by name: build the dataset, adapt the segmenter, run the resumable evaluation.

These are what ``textseg eval semseg|ris`` calls once it has built the segmenter and the protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from textseg.config import Protocol, to_dict
from textseg.eval.predictors import SegmenterRISPredictor, SegmenterSemsegPredictor
from textseg.eval.runner import evaluate_ris, evaluate_semseg


def _with_protocol(meta: Mapping[str, Any] | None, protocol: Protocol | None) -> dict[str, Any]:
    meta = dict(meta or {})
    meta["config"] = {**meta.get("config", {}), "protocol": None if protocol is None else to_dict(protocol)}
    return meta


def run_semseg_benchmark(segmenter: Any, dataset_name: str, root: str | Path, split: str, protocol: Protocol,
                         out: str | Path, *, overlays: int = 0, limit: int | None = None, resume: bool = True,
                         progress: bool = True, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate ``segmenter`` on a semantic segmentation benchmark under ``protocol``.

    Args:
        segmenter: A :class:`textseg.segmenter.Segmenter`.
        dataset_name: One of :data:`textseg.data.names.BENCHMARKS`.
        root: The dataset folder in its original on-disk layout.
        split: Split name.
        protocol: The protocol; its ``per_benchmark`` entry for ``dataset_name`` is applied here.
        out: Output folder (results.json, results.md, samples.jsonl, overlays/).
        overlays, limit, resume, progress: As in :func:`textseg.eval.evaluate_semseg`.
        meta: Extra metadata for results.json; the resolved protocol is added as ``meta["config"]["protocol"]``.

    Returns:
        The results dict written to ``out/results.json``.
    """
    from textseg.data.semseg import build_semseg_dataset

    dataset = build_semseg_dataset(dataset_name, root, split)
    protocol = protocol.for_benchmark(dataset_name)
    predictor = SegmenterSemsegPredictor(segmenter, protocol, dataset.has_background)
    return evaluate_semseg(predictor, dataset, out, resume=resume, overlays=overlays, limit=limit, progress=progress,
                           meta=_with_protocol(meta, protocol))


def run_ris_benchmark(segmenter: Any, root: str | Path, dataset_name: str, split_by: str, split: str,
                      protocol: Protocol | None, out: str | Path, *, image_root: str | Path | None = None,
                      overlays: int = 0, limit: int | None = None, resume: bool = True, progress: bool = True,
                      meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate ``segmenter.predict_referring`` on a referring segmentation benchmark (RefCOCO format).

    Args:
        segmenter: A :class:`textseg.segmenter.Segmenter`.
        root: Folder holding ``<dataset_name>/refs(<split_by>).p`` and ``instances.json``.
        dataset_name, split_by, split: e.g. ``refcoco``, ``unc``, ``val``.
        protocol: What ``predict_referring`` receives (e.g. its ``short_side``); None: the segmenter's defaults.
        out: Output folder.
        image_root: Image folder (default: ``<root>/images``).
        overlays, limit, resume, progress: As in :func:`textseg.eval.evaluate_ris`.
        meta: Extra metadata for results.json; the protocol is added as ``meta["config"]["protocol"]``.

    Returns:
        The results dict written to ``out/results.json``.
    """
    from textseg.data.refer import RefDataset

    dataset = RefDataset(root, dataset_name, split_by, split, image_root=image_root)
    return evaluate_ris(SegmenterRISPredictor(segmenter, protocol), dataset, out, resume=resume, overlays=overlays,
                        limit=limit, progress=progress, meta=_with_protocol(meta, protocol))
