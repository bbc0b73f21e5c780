"""One resumable runner for semantic and referring segmentation benchmarks.

The runner stores one JSON line per finished sample in ``<out_dir>/samples.jsonl`` (flushed each sample), so a
rerun after an interruption recomputes no finished sample; it then writes ``results.json`` and ``results.md``
(atomically) and, for the first N samples, overlay pictures. What differs between the two tasks (what a sample row
holds, how rows become metrics, which panel is drawn, the markdown) is a small :class:`EvalTask`.
"""

from __future__ import annotations

import abc
import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from textseg.errors import ConfigError
from textseg.eval.predictors import RISPredictor, SemsegPredictor, as_ris_output
from textseg.eval.report import jsonable, metadata, ris_markdown, semseg_markdown
from textseg.io import atomic_write_text, save_png
from textseg.metrics import RISMetric, SemsegMetric, ris_sample_stats
from textseg.visualize import ris_panel, semseg_panel

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"
Row = dict[str, Any]


class SampleStore:
    """Append-only JSON-lines file of finished samples (``rows`` by sample index), headed by a line describing
    the evaluation.

    Args:
        path: The file.
        header: What identifies the evaluation; resuming from a file with another header is an error.
        resume: Load the rows of an existing file; otherwise start a new one.

    Raises:
        ConfigError: resuming from a file written by a different evaluation.
    """

    def __init__(self, path: Path, header: Mapping[str, Any], resume: bool) -> None:
        self.path = Path(path)
        self.rows: dict[int, Row] = {}
        if resume and self.path.is_file():
            self._load(dict(header))
        else:
            self.path.write_text(json.dumps({"header": dict(header)}) + "\n", encoding="utf-8")
        self._file = self.path.open("a", encoding="utf-8")

    def _load(self, header: dict[str, Any]) -> None:
        text = self.path.read_text(encoding="utf-8")
        lines = text.splitlines()
        try:
            found = json.loads(lines[0])["header"] if lines else None
        except (json.JSONDecodeError, KeyError, TypeError):
            found = None
        if found != header:
            raise ConfigError(
                f"{self.path} belongs to a different evaluation ({found}); use another output folder or no resume"
            )
        for line in lines[1:]:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by an interruption; that sample is recomputed
            self.rows[int(row["i"])] = row
        if text and not text.endswith("\n"):
            with self.path.open("a", encoding="utf-8") as f:
                f.write("\n")

    def append(self, row: Row) -> None:
        """Write a finished sample's row (it holds its index ``i``) and flush it."""
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        self.rows[int(row["i"])] = row

    def close(self) -> None:
        self._file.close()


def sample_count(n: int, limit: int | None) -> int:
    """How many of ``n`` samples to evaluate under ``limit`` (None: all)."""
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be non-negative, got {limit}")
    return n if limit is None else min(n, limit)


def progress_bar(total: int, initial: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar counting images (hidden when not ``enabled``)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True)


def prompt_names(dataset: Any) -> list[str]:
    """The benchmark's prompt-friendly class names (``diningtable`` -> ``dining table``), else the dataset's."""
    from textseg.data.names import BENCHMARKS, get_class_names

    name = getattr(dataset, "name", None)
    if name in BENCHMARKS and len(get_class_names(name)) == len(dataset.class_names):
        return get_class_names(name, prompt=True)
    return list(dataset.class_names)


def _safe_name(text: Any) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(text))[:80]


class EvalTask(abc.ABC):
    """What one kind of evaluation adds to :func:`run_evaluation`.

    Attributes:
        identity: First keys of the samples header and of results.json (task, dataset, split, ...).
        header_extra: Further header keys that must match for a resume.
        desc: Progress bar label.
    """

    identity: dict[str, Any]
    header_extra: dict[str, Any] = {}
    desc: str = "eval"

    @abc.abstractmethod
    def score(self, sample: Mapping[str, Any]) -> tuple[Row, Callable[[], np.ndarray]]:
        """Run the predictor on one sample: its stored row (without ``i``) and a function drawing its panel."""

    @abc.abstractmethod
    def overlay_name(self, sample: Mapping[str, Any]) -> str:
        """The overlay file name after the sample index."""

    @abc.abstractmethod
    def summarize(self, rows: Sequence[Row]) -> dict[str, Any]:
        """The results entries computed from the rows of the evaluated samples (metrics, ...)."""

    @abc.abstractmethod
    def markdown(self, results: Mapping[str, Any]) -> str:
        """The results as a Markdown report."""


def run_evaluation(task: EvalTask, dataset: Any, out_dir: str | Path, *, resume: bool = True, overlays: int = 0,
                   meta: Mapping[str, Any] | None = None, progress: bool = True,
                   limit: int | None = None) -> dict[str, Any]:
    """Score the first ``limit`` samples of ``dataset`` with ``task``, resuming from ``out_dir/samples.jsonl``.

    Returns:
        The results dict written to ``out_dir/results.json`` (``results.md`` beside it).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = sample_count(len(dataset), limit)
    store = SampleStore(out / SAMPLES_FILE, {**task.identity, "n": len(dataset), **task.header_extra}, resume)
    done = sum(1 for i in store.rows if i < total)
    if done:
        log.info("resuming: %d of %d samples already evaluated in %s", done, total, store.path)
    bar = progress_bar(total, done, task.desc, progress)
    try:
        for i in range(total):
            if i in store.rows:
                continue
            sample = dataset[i]
            row, panel = task.score(sample)
            store.append({"i": i, **row})
            if i < overlays:
                (out / "overlays").mkdir(exist_ok=True)
                save_png(panel(), out / "overlays" / f"{i:05d}_{task.overlay_name(sample)}.png")
            bar.update(1)
    finally:
        bar.close()
        store.close()

    rows = [row for i, row in sorted(store.rows.items()) if i < total]
    results = jsonable({**task.identity, "n_samples": total, "n_dataset": len(dataset), **task.summarize(rows),
                        "meta": metadata(meta)})
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "results.md", task.markdown(results))
    return results


class _SemsegTask(EvalTask):
    """A row is the sample's confusion matrix as sparse (gt, pred, count) triples: a dense 171x172 matrix per
    image would make the file huge."""

    markdown = staticmethod(semseg_markdown)

    def __init__(self, predictor: SemsegPredictor, dataset: Any, class_names: Sequence[str]) -> None:
        self.predictor = predictor
        self.standard_names = list(dataset.class_names)
        self.class_names = list(class_names)
        self.ignore_index = int(getattr(dataset, "ignore_index", 255))
        self.metric = SemsegMetric(len(self.standard_names), self.ignore_index)
        name = getattr(dataset, "name", type(dataset).__name__)
        self.identity = {"task": "semseg", "dataset": name, "split": getattr(dataset, "split", None)}
        self.header_extra = {"num_classes": len(self.standard_names), "ignore_index": self.ignore_index}
        self.desc = f"semseg {name}"

    def score(self, sample: Mapping[str, Any]) -> tuple[Row, Callable[[], np.ndarray]]:
        pred = np.asarray(self.predictor(sample["image"], list(self.class_names)))
        gt = sample["label"]
        if pred.shape != gt.shape:
            raise ValueError(
                f"sample {sample['id']}: prediction shape {pred.shape} differs from label shape {gt.shape}")
        conf = self.metric.sample_confusion(pred, gt)
        triples = [[int(g), int(p), int(conf[g, p])] for g, p in zip(*np.nonzero(conf))]
        return {"id": str(sample["id"]), "conf": triples}, lambda: semseg_panel(
            sample["image"], pred, gt, ignore_index=self.ignore_index)

    def overlay_name(self, sample: Mapping[str, Any]) -> str:
        return _safe_name(sample["id"])

    def summarize(self, rows: Sequence[Row]) -> dict[str, Any]:
        metric = SemsegMetric(len(self.standard_names), self.ignore_index)
        for row in rows:
            conf = np.zeros_like(metric.confusion)
            t = np.asarray(row["conf"], dtype=np.int64).reshape(-1, 3)
            np.add.at(conf, (t[:, 0], t[:, 1]), t[:, 2])
            metric.add_confusion(conf)
        m = metric.compute()
        return {
            "metrics": {"mIoU": m["mIoU"], "aAcc": m["aAcc"], "mAcc": m["mAcc"]},
            "per_class": [{"class": c, "IoU": iou, "Acc": acc}
                          for c, iou, acc in zip(self.standard_names, m["IoU"], m["Acc"])],
        }


class _RISTask(EvalTask):
    """A row is the sample's (I, U, hit) and whether the predictor gave no mask."""

    markdown = staticmethod(ris_markdown)

    def __init__(self, predictor: RISPredictor, dataset: Any) -> None:
        self.predictor = predictor
        self.identity = {"task": "ris", "dataset": getattr(dataset, "dataset", type(dataset).__name__),
                         "split_by": getattr(dataset, "split_by", None), "split": getattr(dataset, "split", None)}
        self.desc = f"ris {self.identity['dataset']} {self.identity['split']}"

    def score(self, sample: Mapping[str, Any]) -> tuple[Row, Callable[[], np.ndarray]]:
        res = as_ris_output(self.predictor(sample["image"], sample["sentence"]))
        inter, union, hit = ris_sample_stats(res.mask, sample["mask"], res.response)
        row = {"ref_id": sample.get("ref_id"), "sent_id": sample.get("sent_id"), "I": inter, "U": union, "hit": hit,
               "no_mask": res.mask is None}
        return row, lambda: ris_panel(sample["image"], res.mask, sample["mask"])

    def overlay_name(self, sample: Mapping[str, Any]) -> str:
        return f"ref{sample.get('ref_id')}_sent{sample.get('sent_id')}"

    def summarize(self, rows: Sequence[Row]) -> dict[str, Any]:
        metric = RISMetric()
        for row in rows:
            metric.add(row["I"], row["U"], row["hit"])
        return {"n_no_mask": sum(1 for row in rows if row["no_mask"]), "metrics": metric.compute()}


def evaluate_semseg(predictor: SemsegPredictor, dataset: Any, out_dir: str | Path, *, resume: bool = True,
                    overlays: int = 0, meta: Mapping[str, Any] | None = None, progress: bool = True,
                    limit: int | None = None, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Evaluate a semantic predictor on a dataset; write samples.jsonl, results.json, results.md, overlays.

    Args:
        predictor: ``(image, class_names) -> HxW int labels`` in the dataset's label space.
        dataset: A semantic reader (items with image, label, id; attributes class_names, ignore_index).
        out_dir: Output folder (created).
        resume: Reuse finished samples stored in ``out_dir`` by an earlier, interrupted run.
        overlays: Write side-by-side overlays (image | prediction | ground truth) of the first N samples; samples
            finished by an earlier run keep the overlays that run wrote.
        meta: Extra metadata for results.json (e.g. ``{"config": {...}}``); ``argv`` is always recorded.
        progress: Show a tqdm progress bar.
        limit: Evaluate only the first N samples.
        class_names: Names given to the predictor; defaults to the benchmark's prompt-friendly names.

    Returns:
        The results dict written to results.json.
    """
    names = prompt_names(dataset) if class_names is None else list(class_names)
    if len(names) != len(dataset.class_names):
        raise ConfigError(f"{len(names)} class names given for {len(dataset.class_names)} classes")
    return run_evaluation(_SemsegTask(predictor, dataset, names), dataset, out_dir, resume=resume,
                          overlays=overlays, meta=meta, progress=progress, limit=limit)


def evaluate_ris(predictor: RISPredictor, dataset: Any, out_dir: str | Path, *, resume: bool = True,
                 overlays: int = 0, meta: Mapping[str, Any] | None = None, progress: bool = True,
                 limit: int | None = None) -> dict[str, Any]:
    """Evaluate a referring predictor; write samples.jsonl, results.json, results.md, overlays.

    Samples for which the predictor returns no mask count as IoU 0 (never skipped); their number is reported.

    Args:
        predictor: ``(image, sentence) -> RISOutput | bool mask | None``.
        dataset: A :class:`textseg.data.refer.RefDataset` (items with image, mask, sentence, ref_id, sent_id).
        out_dir: Output folder (created).
        overlays: Write overlays (image | prediction red | ground truth green) of the first N samples.
        resume, meta, progress, limit: As in :func:`evaluate_semseg`.

    Returns:
        The results dict written to results.json.
    """
    return run_evaluation(_RISTask(predictor, dataset), dataset, out_dir, resume=resume, overlays=overlays,
                          meta=meta, progress=progress, limit=limit)
