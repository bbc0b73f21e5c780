"""One resumable runner for semantic and referring segmentation benchmarks.

The runner stores one JSON line per finished sample in ``<out_dir>/samples.jsonl`` (flushed each sample), so a
rerun after an interruption (even kill -9) recomputes no finished sample: a line cut short mid-append is dropped
and its sample recomputed, and a header names the evaluation (and the model, weights and protocol, see ``key``) so
that two evaluations' samples are never mixed. A sample's overlay is written before its line. ``results.json``,
``results.md`` and overlays are written atomically (temporary file + rename); temporaries a killed run left are
removed. What differs between the two tasks (what a sample row holds, how rows become metrics, which panel is
drawn, the markdown) is a small :class:`EvalTask`.
"""

from __future__ import annotations

import abc
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from textseg.errors import ConfigError
from textseg.eval.diagnose import Diagnosis
from textseg.eval.predictors import RISPredictor, SemsegPredictor, as_ris_output
from textseg.eval.report import jsonable, metadata, ris_markdown, semseg_markdown
from textseg.eval.ris_errors import classify_outcome, proposal_oracle, summarize_outcomes
from textseg.io import atomic_write_text, check_writable_folder, save_png
from textseg.metrics import RISMetric, SemsegMetric, ris_sample_stats
from textseg.visualize import ris_panel, semseg_panel

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"
Row = dict[str, Any]
Diagnoser = Callable[[Mapping[str, Any], Sequence[str]], Mapping[str, Any]]


class SampleStore:
    """Append-only JSON-lines file of finished samples (``rows`` by sample index), headed by a line describing
    the evaluation.

    The header is written atomically; rows are appended one line each and flushed. On a resume, every line that
    is not a complete, valid row (a line cut short by a kill mid-append, a row ``check`` refuses, a second row
    for the same sample) is dropped, its sample recomputed, and the file is rewritten atomically without it.

    Args:
        path: The file.
        header: What identifies the evaluation; resuming from a file with another header is an error.
        resume: Load the rows of an existing file; otherwise start a new one.
        check: Whether a parsed row (a dict holding an int ``i``) is well formed; rows it refuses are dropped.

    Raises:
        ConfigError: resuming from a file written by a different evaluation, or from one that is not a samples file.
    """

    def __init__(self, path: Path, header: Mapping[str, Any], resume: bool,
                 check: Callable[[Row], bool] | None = None) -> None:
        self.path = Path(path)
        self.header = dict(header)
        self.rows: dict[int, Row] = {}
        self.dropped = 0
        self._check = check or (lambda row: True)
        if resume and self.path.is_file() and self.path.stat().st_size > 0:
            self._load()
        else:
            self._rewrite()
        self._file = self.path.open("a", encoding="utf-8")

    def _rewrite(self) -> None:
        lines = [json.dumps({"header": self.header})] + [json.dumps(row) for _, row in sorted(self.rows.items())]
        atomic_write_text(self.path, "\n".join(lines) + "\n")

    def _parse(self, line: str) -> Row | None:
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError, ValueError):
            return None  # a line cut short by an interruption
        if not isinstance(row, dict) or not isinstance(row.get("i"), int) or isinstance(row["i"], bool):
            return None
        if row["i"] < 0 or row["i"] >= int(self.header.get("n", 1 << 62)):
            return None
        try:
            return row if self._check(row) else None
        except (KeyError, TypeError, ValueError, IndexError):
            return None

    def _load(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{self.path} is not a samples file (not UTF-8); use another output folder or "
                              "--no-resume") from None
        lines = text.split("\n")
        try:
            found = json.loads(lines[0])["header"]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, RecursionError):
            raise ConfigError(f"{self.path} is not a samples file (its first line is no header); use another output "
                              "folder or --no-resume") from None
        if found != self.header:
            raise ConfigError(
                f"{self.path} belongs to a different evaluation ({_short(found)}); use another output folder or "
                "--no-resume"
            )
        body = lines[1:]
        if body and body[-1] == "":
            body.pop()  # the empty string after the final newline
        clean = text.endswith("\n")
        for line in body:
            row = self._parse(line)
            if row is None or row["i"] in self.rows:
                self.dropped += 1
                clean = False
                continue
            self.rows[row["i"]] = row
        if self.dropped:
            log.warning("%s: dropped %d incomplete or malformed line(s); those samples are recomputed",
                        self.path, self.dropped)
        if not clean:
            self._rewrite()

    def append(self, row: Row) -> None:
        """Write a finished sample's row (it holds its index ``i``) and flush it."""
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        self.rows[int(row["i"])] = row

    def close(self) -> None:
        self._file.close()


def _short(value: Any, limit: int = 200) -> str:
    text = " ".join(json.dumps(value, default=str).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def prepare_out_dir(out_dir: str | Path, option: str = "output folder") -> Path:
    """:func:`~textseg.io.check_writable_folder`, then create the folder (and its parents).

    Raises:
        ConfigError: as :func:`~textseg.io.check_writable_folder`, or the folder cannot be created.
    """
    out = check_writable_folder(out_dir, option)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{option} {out} cannot be created: {e.strerror or e}") from None
    return out


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")  # textseg.io's atomic write files


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files that atomic writes of a killed process left in ``folder`` (those of a process
    still running are kept); returns the deleted paths."""
    removed = []
    for path in folder.glob(".*.tmp") if folder.is_dir() else ():
        match = _TEMPORARY.match(path.name)
        if match is None or int(match["pid"]) == os.getpid() or _pid_alive(int(match["pid"])):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    if removed:
        log.info("removed %d temporary file(s) an interrupted run left in %s", len(removed), folder)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


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
    def check_row(self, row: Row) -> bool:
        """Whether a row read back from samples.jsonl is well formed (others are dropped and recomputed)."""

    @abc.abstractmethod
    def summarize(self, rows: Sequence[Row]) -> dict[str, Any]:
        """The results entries computed from the rows of the evaluated samples (metrics, ...)."""

    @abc.abstractmethod
    def markdown(self, results: Mapping[str, Any]) -> str:
        """The results as a Markdown report."""


def run_evaluation(task: EvalTask, dataset: Any, out_dir: str | Path, *, resume: bool = True, overlays: int = 0,
                   meta: Mapping[str, Any] | None = None, progress: bool = True,
                   limit: int | None = None, key: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Score the first ``limit`` samples of ``dataset`` with ``task``, resuming from ``out_dir/samples.jsonl``.

    Args:
        key: What else decides the scores (model, weights, protocol): stored in the samples header, so that a
            resume with another model or protocol is refused instead of mixing two evaluations' samples.

    Returns:
        The results dict written to ``out_dir/results.json`` (``results.md`` beside it).
    """
    out = prepare_out_dir(out_dir)
    total = sample_count(len(dataset), limit)
    if overlays < 0:
        raise ConfigError(f"overlays must be non-negative, got {overlays}")
    for folder in (out, out / "overlays"):
        remove_stale_temporaries(folder)
    header = {**task.identity, "n": len(dataset), **task.header_extra}
    if key is not None:
        header["key"] = jsonable(key)
    store = SampleStore(out / SAMPLES_FILE, header, resume, check=task.check_row)
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
            if i < overlays:  # before the row: a sample whose row is stored always has its overlay
                (out / "overlays").mkdir(exist_ok=True)
                save_png(panel(), out / "overlays" / f"{i:05d}_{task.overlay_name(sample)}.png")
            store.append({"i": i, **row})
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


def _triples(conf: np.ndarray) -> list[list[int]]:
    """A confusion matrix as sparse (gt, pred, count) triples."""
    return [[int(g), int(p), int(conf[g, p])] for g, p in zip(*np.nonzero(conf))]


def _from_triples(triples: Sequence[Sequence[int]], shape: tuple[int, int]) -> np.ndarray:
    conf = np.zeros(shape, dtype=np.int64)
    t = np.asarray(triples, dtype=np.int64).reshape(-1, 3)
    np.add.at(conf, (t[:, 0], t[:, 1]), t[:, 2])
    return conf


class _SemsegTask(EvalTask):
    """A row is the sample's confusion matrix as sparse (gt, pred, count) triples: a dense 171x172 matrix per
    image would make the file huge. With a diagnoser, a row also holds those of (b) and (c) (``diagnosis``; see
    :mod:`textseg.eval.diagnose`)."""

    markdown = staticmethod(semseg_markdown)

    def __init__(self, predictor: SemsegPredictor, dataset: Any, class_names: Sequence[str],
                 diagnoser: Diagnoser | None = None) -> None:
        self.predictor = predictor
        self.diagnoser = diagnoser
        self.has_background = bool(getattr(dataset, "has_background", True))
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
        row: Row = {"id": str(sample["id"]), "conf": _triples(self.metric.sample_confusion(pred, gt))}
        if self.diagnoser is not None:
            preds = self.diagnoser(sample, list(self.class_names))
            row["diagnosis"] = {v: None if preds.get(v) is None else _triples(self.metric.sample_confusion(
                np.asarray(preds[v]), gt)) for v in ("oracle_labels", "oracle_regions")}
        return row, lambda: semseg_panel(sample["image"], pred, gt, ignore_index=self.ignore_index)

    def overlay_name(self, sample: Mapping[str, Any]) -> str:
        return _safe_name(sample["id"])

    def check_row(self, row: Row) -> bool:
        n = len(self.standard_names)

        def triples(conf: Any) -> bool:
            return isinstance(conf, list) and all(
                isinstance(t, list) and len(t) == 3 and all(isinstance(v, int) and not isinstance(v, bool) for v in t)
                and 0 <= t[0] < n and 0 <= t[1] <= n and t[2] >= 0 for t in conf)

        ok = isinstance(row.get("id"), str) and triples(row.get("conf"))
        if ok and self.diagnoser is not None:  # a row of an evaluation without the diagnosis is recomputed
            d = row.get("diagnosis")
            ok = isinstance(d, dict) and triples(d.get("oracle_labels")) and (
                d.get("oracle_regions") is None or triples(d["oracle_regions"]))
        return ok

    def summarize(self, rows: Sequence[Row]) -> dict[str, Any]:
        metric = SemsegMetric(len(self.standard_names), self.ignore_index)
        diagnosis = Diagnosis(len(self.standard_names), self.ignore_index, self.has_background)
        for row in rows:
            conf = _from_triples(row["conf"], metric.confusion.shape)
            metric.add_confusion(conf)
            if self.diagnoser is not None:
                d = row["diagnosis"]
                diagnosis.add({"model": conf, **{v: None if d.get(v) is None else _from_triples(
                    d[v], metric.confusion.shape) for v in ("oracle_labels", "oracle_regions")}})
        m = metric.compute()
        out = {
            "metrics": {"mIoU": m["mIoU"], "aAcc": m["aAcc"], "mAcc": m["mAcc"]},
            "per_class": [{"class": c, "IoU": iou, "Acc": acc}
                          for c, iou, acc in zip(self.standard_names, m["IoU"], m["Acc"])],
        }
        if self.diagnoser is not None:
            out["diagnosis"] = diagnosis.compute()
        return out


class _RISTask(EvalTask):
    """A row is the sample's (I, U, hit) and whether the predictor gave no mask."""

    markdown = staticmethod(ris_markdown)

    def __init__(self, predictor: RISPredictor, dataset: Any) -> None:
        self.predictor = predictor
        self.identity = {"task": "ris", "dataset": getattr(dataset, "dataset", type(dataset).__name__),
                         "split_by": getattr(dataset, "split_by", None), "split": getattr(dataset, "split", None)}
        if getattr(dataset, "no_target", False):
            self.identity["no_target"] = True
        self.desc = f"ris {self.identity['dataset']} {self.identity['split']}"
        self.instances = getattr(dataset, "instances", None)

    def score(self, sample: Mapping[str, Any]) -> tuple[Row, Callable[[], np.ndarray]]:
        res = as_ris_output(self.predictor(sample["image"], sample["sentence"]))
        inter, union, hit = ris_sample_stats(res.mask, sample["mask"], res.response)
        row = {"ref_id": sample.get("ref_id"), "sent_id": sample.get("sent_id"), "I": inter, "U": union, "hit": hit,
               "no_mask": res.mask is None, "target": not sample.get("no_target", False)}
        if res.reading is not None:
            row["reading"] = res.reading
        if res.proposals is not None and row["target"]:
            row["oracle"] = round(proposal_oracle(res.proposals, sample["mask"]), 6)
            row["n_proposals"] = int(len(res.proposals))
        if row["target"] and self.instances is not None and sample.get("ann_id", -1) >= 0:
            row["outcome"] = classify_outcome(res.mask, sample["ann_id"], self.instances(sample["image_id"]))
        return row, lambda: ris_panel(sample["image"], res.mask, sample["mask"])

    def overlay_name(self, sample: Mapping[str, Any]) -> str:
        return f"ref{sample.get('ref_id')}_sent{sample.get('sent_id')}"

    def check_row(self, row: Row) -> bool:
        def count(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= 0

        return (count(row.get("I")) and count(row.get("U")) and row["I"] <= row["U"]
                and (row.get("hit") is None or isinstance(row.get("hit"), bool))
                and isinstance(row.get("no_mask"), bool) and isinstance(row.get("target", True), bool))

    def summarize(self, rows: Sequence[Row]) -> dict[str, Any]:
        metric = RISMetric()
        for row in rows:
            metric.add(row["I"], row["U"], row["hit"], row.get("target", True))
        return {"n_no_mask": sum(1 for row in rows if row["no_mask"]), "metrics": metric.compute(),
                **summarize_outcomes(rows)}


def evaluate_semseg(predictor: SemsegPredictor, dataset: Any, out_dir: str | Path, *, resume: bool = True,
                    overlays: int = 0, meta: Mapping[str, Any] | None = None, progress: bool = True,
                    limit: int | None = None, class_names: Sequence[str] | None = None,
                    key: Mapping[str, Any] | None = None, diagnoser: Diagnoser | None = None) -> dict[str, Any]:
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
        key: What else decides the scores (model, weights, protocol); a resume must find the same (see
            :func:`run_evaluation`).
        diagnoser: ``(sample, class_names) -> {"oracle_labels": labels, "oracle_regions": labels | None}`` (e.g. a
            :class:`~textseg.eval.diagnose.SegmenterDiagnoser`): adds the error decomposition (``diagnosis`` in
            results.json, its table in results.md; see :mod:`textseg.eval.diagnose`).

    Returns:
        The results dict written to results.json.
    """
    names = prompt_names(dataset) if class_names is None else list(class_names)
    if len(names) != len(dataset.class_names):
        raise ConfigError(f"{len(names)} class names given for {len(dataset.class_names)} classes")
    return run_evaluation(_SemsegTask(predictor, dataset, names, diagnoser), dataset, out_dir, resume=resume,
                          overlays=overlays, meta=meta, progress=progress, limit=limit, key=key)


def evaluate_ris(predictor: RISPredictor, dataset: Any, out_dir: str | Path, *, resume: bool = True,
                 overlays: int = 0, meta: Mapping[str, Any] | None = None, progress: bool = True,
                 limit: int | None = None, key: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate a referring predictor; write samples.jsonl, results.json, results.md, overlays.

    Samples for which the predictor returns no mask count as IoU 0 (never skipped); their number is reported.

    Args:
        predictor: ``(image, sentence) -> RISOutput | bool mask | None``.
        dataset: A :class:`textseg.data.refcoco.RefDataset` (items with image, mask, sentence, ref_id, sent_id).
        out_dir: Output folder (created).
        overlays: Write overlays (image | prediction red | ground truth green) of the first N samples.
        resume, meta, progress, limit, key: As in :func:`evaluate_semseg`.

    Returns:
        The results dict written to results.json.
    """
    return run_evaluation(_RISTask(predictor, dataset), dataset, out_dir, resume=resume, overlays=overlays,
                          meta=meta, progress=progress, limit=limit, key=key)
