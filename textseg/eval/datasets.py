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


def _resume_key(key: Mapping[str, Any] | None, protocol: Protocol | None) -> dict[str, Any]:
    """``key`` with the protocol: samples scored under another protocol are not resumed."""
    return {**(key or {}), "protocol": None if protocol is None else to_dict(protocol)}


def run_semseg_benchmark(segmenter: Any, dataset_name: str, root: str | Path, split: str, protocol: Protocol,
                         out: str | Path, *, overlays: int = 0, limit: int | None = None, resume: bool = True,
                         progress: bool = True, meta: Mapping[str, Any] | None = None,
                         dataset: Any = None, key: Mapping[str, Any] | None = None,
                         diagnose: bool = False) -> dict[str, Any]:
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
        dataset: The reader of ``dataset_name`` at ``root``/``split`` if already built (the CLI builds it before
            the model, so that a bad dataset fails fast); None builds it here.
        key: What identifies the model and its weights (see :func:`textseg.eval.runner.run_evaluation`); the
            resolved protocol is added to it, so a resume under another model or protocol is refused.
        diagnose: Add the error decomposition (:mod:`textseg.eval.diagnose`; (c) needs instance maps).

    Returns:
        The results dict written to ``out/results.json``.
    """
    from textseg.data.semseg import build_semseg_dataset
    from textseg.eval.diagnose import SegmenterDiagnoser

    if dataset is None:
        dataset = build_semseg_dataset(dataset_name, root, split)
    protocol = protocol.for_benchmark(dataset_name)
    predictor = SegmenterSemsegPredictor(segmenter, protocol, dataset.has_background)
    diagnoser = SegmenterDiagnoser(predictor, dataset.ignore_index) if diagnose else None
    return evaluate_semseg(predictor, dataset, out, resume=resume, overlays=overlays, limit=limit, progress=progress,
                           meta=_with_protocol(meta, protocol), key=_resume_key(key, protocol), diagnoser=diagnoser)


def run_ris_benchmark(segmenter: Any, root: str | Path, dataset_name: str, split_by: str, split: str,
                      protocol: Protocol | None, out: str | Path, *, image_root: str | Path | None = None,
                      overlays: int = 0, limit: int | None = None, resume: bool = True, progress: bool = True,
                      meta: Mapping[str, Any] | None = None, dataset: Any = None,
                      key: Mapping[str, Any] | None = None, method: str = "best-group",
                      refer_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate ``segmenter`` on a referring segmentation benchmark (RefCOCO format).

    Args:
        segmenter: A :class:`textseg.segmenter.Segmenter`.
        root: Folder holding ``<dataset_name>/refs(<split_by>).p`` and ``instances.json``.
        dataset_name, split_by, split: e.g. ``refcoco``, ``unc``, ``val``.
        protocol: the protocol of the ``"best-group"`` method (e.g. its ``short_side``); None: the segmenter's defaults.
        out: Output folder.
        image_root: Image folder (default: ``<root>/images``).
        overlays, limit, resume, progress: As in :func:`textseg.eval.evaluate_ris`.
        meta: Extra metadata for results.json; the protocol is added as ``meta["config"]["protocol"]``.
        dataset: The :class:`~textseg.data.refcoco.RefDataset` these arguments describe if already built; None builds
            it here.
        key: As in :func:`run_semseg_benchmark`.
        method, refer_options: As in :class:`~textseg.eval.predictors.SegmenterRISPredictor`; both are part of
            the resume key (options that are objects, such as a promptable segmenter, are named in ``key`` by the
            caller instead).

    Returns:
        The results dict written to ``out/results.json``.
    """
    from textseg.data.refcoco import RefDataset

    if dataset is None:
        dataset = RefDataset(root, dataset_name, split_by, split, image_root=image_root)
    options = dict(refer_options or {})
    key = {**_resume_key(key, protocol), "image_root": str(Path(dataset.image_root).resolve()), "method": method,
           "refer_options": {k: repr(v) for k, v in sorted(options.items()) if _plain(v)}}
    predictor = SegmenterRISPredictor(segmenter, protocol, method, options)
    return evaluate_ris(predictor, dataset, out, resume=resume, overlays=overlays,
                        limit=limit, progress=progress, meta=_with_protocol(meta, protocol), key=key)


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))
