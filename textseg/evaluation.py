"""Benchmark evaluation: protocol presets, resumable runners, model adapters and the ``textseg eval`` command.

A *semantic predictor* is any callable ``(image HxWx3 uint8, class_names) -> HxW int labels`` in the dataset's
label space; a *RIS predictor* is any callable ``(image, sentence) -> RISOutput | bool mask | None``.

Runners store one JSON line per finished sample in ``<out_dir>/samples.jsonl`` (flushed each sample), so a rerun
after an interruption recomputes no finished sample; they then write ``results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np

from textseg.errors import ConfigError
from textseg.metrics import PREC_THRESHOLDS, RISMetric, SemsegMetric

log = logging.getLogger(__name__)

PROTOCOL_DIR = Path(__file__).resolve().parents[1] / "configs" / "protocols"
TEMPLATE_SETS = ("single", "imagenet80")
_PROTOCOL_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "short_side": (int,),
    "window": (int, type(None)),
    "stride": (int, type(None)),
    "templates": (str,),
    "background": (str, type(None)),
    "bg_threshold": (int, float),
    "background_classes": (list,),
    "bg_score": (int, float, type(None)),
}
_OPTIONAL_FIELDS = {"bg_score": None}  # fields a preset may leave out, with their defaults
SAMPLES_FILE = "samples.jsonl"


# ----------------------------------------------------------------------------------------------------------------
# Protocols


def _check_protocol_fields(fields: Mapping[str, Any], source: str, required: bool) -> None:
    for key, value in fields.items():
        if key not in _PROTOCOL_TYPES:
            raise ConfigError(f"{source}: unknown protocol field {key!r}; known: {', '.join(_PROTOCOL_TYPES)}")
        types = _PROTOCOL_TYPES[key]
        if isinstance(value, bool) or not isinstance(value, types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise ConfigError(f"{source}: field {key!r} must be {names}, got {value!r}")
    if required:
        missing = [k for k in _PROTOCOL_TYPES if k not in fields and k not in _OPTIONAL_FIELDS]
        if missing:
            raise ConfigError(f"{source}: missing protocol field(s): {', '.join(missing)}")
    if "templates" in fields and fields["templates"] not in TEMPLATE_SETS:
        raise ConfigError(f"{source}: field 'templates' must be one of {TEMPLATE_SETS}, got {fields['templates']!r}")
    if "background" in fields and fields["background"] not in ("threshold", None):
        raise ConfigError(f"{source}: field 'background' must be 'threshold' or null, got {fields['background']!r}")
    if "short_side" in fields and fields["short_side"] <= 0:
        raise ConfigError(f"{source}: field 'short_side' must be positive, got {fields['short_side']}")
    if "background_classes" in fields and not all(isinstance(c, str) for c in fields["background_classes"]):
        raise ConfigError(f"{source}: field 'background_classes' must be a list of strings")


def load_protocol(name_or_path: str | Path) -> dict[str, Any]:
    """Load and validate an evaluation protocol preset.

    Args:
        name_or_path: A preset name (``configs/protocols/<name>.yaml`` of the repository, e.g. ``groupvit``,
            ``sclip``) or a path to a YAML file.

    Returns:
        The protocol dict: name, short_side, window, stride, templates, background, bg_threshold,
        background_classes and per_benchmark (overrides by benchmark name, possibly empty).

    Raises:
        ConfigError: the file is missing, not YAML, or a field is missing or invalid.
    """
    import yaml

    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith((".yaml", ".yml")) or path.is_file()):
        path = PROTOCOL_DIR / f"{text}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROTOCOL_DIR.glob("*.yaml")) if PROTOCOL_DIR.is_dir() else []
        raise ConfigError(f"protocol not found: {path} (presets: {', '.join(known) or 'none'})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a protocol must be a YAML mapping")
    per_benchmark = data.pop("per_benchmark", None) or {}
    if not isinstance(per_benchmark, dict):
        raise ConfigError(f"{path}: field 'per_benchmark' must be a mapping of benchmark name to fields")
    _check_protocol_fields(data, str(path), required=True)
    if (data["window"] is None) != (data["stride"] is None):
        raise ConfigError(f"{path}: fields 'window' and 'stride' must both be set or both be null")
    for bench, overrides in per_benchmark.items():
        if not isinstance(overrides, dict):
            raise ConfigError(f"{path}: per_benchmark.{bench} must be a mapping")
        _check_protocol_fields(overrides, f"{path}: per_benchmark.{bench}", required=False)
    data["per_benchmark"] = per_benchmark
    data["bg_threshold"] = float(data["bg_threshold"])
    for key, default in _OPTIONAL_FIELDS.items():
        data.setdefault(key, default)
    return data


def protocol_for_benchmark(protocol: Mapping[str, Any], benchmark: str) -> dict[str, Any]:
    """Return the protocol with the benchmark's ``per_benchmark`` overrides applied (and that key removed)."""
    resolved = {k: v for k, v in protocol.items() if k != "per_benchmark"}
    resolved.update((protocol.get("per_benchmark") or {}).get(benchmark, {}))
    resolved["benchmark"] = benchmark
    return resolved


# ----------------------------------------------------------------------------------------------------------------
# Predictors and adapters


@dataclass
class RISOutput:
    """What a referring predictor returns: a boolean mask (None: no answer) and an optional response map."""

    mask: np.ndarray | None
    response: np.ndarray | None = None


SemsegPredictor = Callable[[np.ndarray, Sequence[str]], np.ndarray]
RISPredictor = Callable[[np.ndarray, str], Union[RISOutput, np.ndarray, None]]


class SegmenterSemsegPredictor:
    """Adapts :class:`textseg.segmenter.Segmenter` to a semantic predictor under an evaluation protocol.

    Args:
        segmenter: A ``Segmenter`` (anything with its ``predict`` signature).
        protocol: A protocol dict (see :func:`load_protocol`, :func:`protocol_for_benchmark`).
        has_background: Whether the dataset's label 0 is background. Then the predictor is given
            ``class_names[1:]`` with the protocol's background rule and returns the labels as they are (0 =
            background); otherwise it asks for no background and shifts labels down by one.
    """

    def __init__(self, segmenter: Any, protocol: Mapping[str, Any], has_background: bool) -> None:
        self.segmenter = segmenter
        self.protocol = dict(protocol)
        self.has_background = has_background

    def __call__(self, image: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
        p = self.protocol
        common = dict(
            templates=p.get("templates"),
            short_side=p.get("short_side", 448),
            window=p.get("window"),
            stride=p.get("stride"),
        )
        if self.has_background:
            res = self.segmenter.predict(
                image,
                list(class_names[1:]),
                background=p.get("background"),
                bg_threshold=p.get("bg_threshold", 0.5),
                background_classes=tuple(p.get("background_classes") or ()),
                bg_score=p.get("bg_score"),
                **common,
            )
            return np.asarray(res.labels)
        res = self.segmenter.predict(image, list(class_names), background=None, background_classes=(), **common)
        return np.asarray(res.labels).astype(np.int64) - 1


class SegmenterRISPredictor:
    """Adapts :class:`textseg.segmenter.Segmenter` to a referring predictor (``protocol['short_side']``)."""

    def __init__(self, segmenter: Any, protocol: Mapping[str, Any] | None = None) -> None:
        self.segmenter = segmenter
        self.protocol = dict(protocol or {})

    def __call__(self, image: np.ndarray, sentence: str) -> RISOutput:
        ref = self.segmenter.predict_referring(image, sentence, short_side=self.protocol.get("short_side", 448))
        return RISOutput(mask=ref.mask, response=getattr(ref, "response", None))


def _as_ris_output(out: Any) -> RISOutput:
    if out is None:
        return RISOutput(mask=None)
    if isinstance(out, RISOutput):
        return out
    if isinstance(out, np.ndarray):
        return RISOutput(mask=out)
    if hasattr(out, "mask"):
        return RISOutput(mask=out.mask, response=getattr(out, "response", None))
    raise TypeError(f"a RIS predictor must return RISOutput, a mask array or None, got {type(out).__name__}")


# ----------------------------------------------------------------------------------------------------------------
# Per-sample store (resume)


class _SampleStore:
    """Append-only JSON-lines file of finished samples, headed by a line describing the evaluation."""

    def __init__(self, out_dir: Path, header: dict[str, Any], resume: bool) -> None:
        self.path = out_dir / SAMPLES_FILE
        self.rows: dict[int, dict[str, Any]] = {}
        if resume and self.path.is_file():
            self._load(header)
        else:
            self.path.write_text(json.dumps({"header": header}) + "\n", encoding="utf-8")
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

    def append(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        self.rows[int(row["i"])] = row

    def close(self) -> None:
        self._file.close()


# ----------------------------------------------------------------------------------------------------------------
# Output helpers


def _palette() -> np.ndarray:
    """The VOC colour map with 255 (ignore) shown white."""
    from textseg.visualize import voc_palette

    pal = voc_palette()
    pal[255] = (255, 255, 255)
    return pal


def _blend(image: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    return (image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).astype(np.uint8)


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(text))[:80]


def _jsonable(value: Any) -> Any:
    """NaN/inf become null; numpy scalars, paths and other objects become JSON values."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if callable(value):
        return getattr(value, "__qualname__", repr(value))
    return str(value)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _meta(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    from textseg import __version__

    out: dict[str, Any] = {
        "argv": list(sys.argv),
        "textseg_version": __version__,
        "finished": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    out.update(meta or {})
    out.setdefault("config", {})
    return out


def _indices(n: int, limit: int | None) -> int:
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be non-negative, got {limit}")
    return n if limit is None else min(n, limit)


def _progress(total: int, initial: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------------------------
# Runners


def evaluate_semseg(
    predictor: SemsegPredictor,
    dataset: Any,
    out_dir: str | Path,
    *,
    resume: bool = True,
    overlays: int = 0,
    meta: Mapping[str, Any] | None = None,
    progress: bool = True,
    limit: int | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    standard_names = list(dataset.class_names)
    num_classes = len(standard_names)
    if class_names is None:
        class_names = _prompt_names(dataset)
    if len(class_names) != num_classes:
        raise ConfigError(f"{len(class_names)} class names given for {num_classes} classes")
    ignore_index = int(getattr(dataset, "ignore_index", 255))
    total = _indices(len(dataset), limit)
    header = {
        "task": "semseg",
        "dataset": getattr(dataset, "name", type(dataset).__name__),
        "split": getattr(dataset, "split", None),
        "n": len(dataset),
        "num_classes": num_classes,
        "ignore_index": ignore_index,
    }
    store = _SampleStore(out, header, resume)
    metric = SemsegMetric(num_classes, ignore_index)
    palette = _palette()
    done = sum(1 for i in store.rows if i < total)
    if done:
        log.info("resuming: %d of %d samples already evaluated in %s", done, total, store.path)
    bar = _progress(total, done, f"semseg {header['dataset']}", progress)
    try:
        for i in range(total):
            if i in store.rows:
                continue
            sample = dataset[i]
            pred = np.asarray(predictor(sample["image"], list(class_names)))
            gt = sample["label"]
            if pred.shape != gt.shape:
                raise ValueError(
                    f"sample {sample['id']}: prediction shape {pred.shape} differs from label shape {gt.shape}"
                )
            conf = metric.sample_confusion(pred, gt)
            g, p = np.nonzero(conf)
            # Sparse (gt, pred, count) triples: a dense 171x172 matrix per image would make the file huge.
            triples = [[int(a), int(b), int(conf[a, b])] for a, b in zip(g, p)]
            store.append({"i": i, "id": str(sample["id"]), "conf": triples})
            if i < overlays:
                pred_c = palette[np.clip(pred, 0, 255).astype(np.uint8)]
                pred_c[(pred < 0) | (pred > 255)] = 0
                panel = np.concatenate(
                    [sample["image"], _blend(sample["image"], pred_c), _blend(sample["image"], palette[gt])], axis=1
                )
                _save_png(panel, out / "overlays" / f"{i:05d}_{_safe_name(sample['id'])}.png")
            bar.update(1)
    finally:
        bar.close()
        store.close()

    for i, row in sorted(store.rows.items()):
        if i < total:
            conf = np.zeros_like(metric.confusion)
            for a, b, c in row["conf"]:
                conf[a, b] += c
            metric.add_confusion(conf)
    m = metric.compute()
    results = {
        "task": "semseg",
        "dataset": header["dataset"],
        "split": header["split"],
        "n_samples": total,
        "n_dataset": len(dataset),
        "metrics": {"mIoU": m["mIoU"], "aAcc": m["aAcc"], "mAcc": m["mAcc"]},
        "per_class": [
            {"class": name, "IoU": iou, "Acc": acc} for name, iou, acc in zip(standard_names, m["IoU"], m["Acc"])
        ],
        "meta": _meta(meta),
    }
    results = _jsonable(results)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "results.md").write_text(_semseg_markdown(results), encoding="utf-8")
    return results


def calibrate_bg_score(segmenter: Any, dataset: Any, protocol: Mapping[str, Any], *,
                       candidates: Sequence[float] = tuple(np.round(np.arange(-0.3, 1.01, 0.05), 2)),
                       limit: int | None = None, progress: bool = True) -> tuple[float, dict[float, float]]:
    """Choose the constant background score (``bg_score``) that maximises mIoU on a held-out set.

    Use a development split, never the split you report: on the OpenMoji workbench, scenes of another seed. Regions
    are grouped and scored once per image; every candidate is then scored from the same similarities.

    Returns:
        The best score and the mIoU of every candidate.
    """
    import torch
    from tqdm import tqdm

    if not getattr(dataset, "has_background", True):
        raise ConfigError("bg_score calibration needs a dataset whose label 0 is background")
    names = _prompt_names(dataset)[1:]
    bg = list(protocol.get("background_classes") or ())
    metrics = {c: SemsegMetric(len(dataset.class_names), dataset.ignore_index) for c in candidates}
    n = _indices(len(dataset), limit)
    for i in tqdm(range(n), desc="calibrate bg", disable=not progress):
        item = dataset[i]
        groups, sims = segmenter.region_similarities(item["image"], names + bg, templates=protocol.get("templates"),
                                                     short_side=protocol.get("short_side"))
        for c, metric in metrics.items():
            full = torch.cat([sims, torch.full_like(sims[:, :1], float(c))], 1).argmax(1).numpy()
            region_label = np.where(full < len(names), full + 1, 0)
            metric.update(region_label[groups], item["label"])
    scores = {c: float(m.compute()["mIoU"]) for c, m in metrics.items()}
    best = max(scores, key=scores.get)
    return float(best), scores


def _prompt_names(dataset: Any) -> list[str]:
    from textseg.data.names import BENCHMARKS, get_class_names

    name = getattr(dataset, "name", None)
    if name in BENCHMARKS and len(get_class_names(name)) == len(dataset.class_names):
        return get_class_names(name, prompt=True)
    return list(dataset.class_names)


def _command_line(results: Mapping[str, Any]) -> str:
    import shlex

    argv = results.get("meta", {}).get("argv") or []
    return " ".join(shlex.quote(str(a)) for a in argv)


def _semseg_markdown(r: Mapping[str, Any]) -> str:
    m = r["metrics"]
    lines = [
        f"# Semantic segmentation: {r['dataset']} ({r['split']}, {r['n_samples']} of {r['n_dataset']} images)",
        "",
        "| mIoU | aAcc | mAcc |",
        "|---:|---:|---:|",
        f"| {_fmt(m['mIoU'])} | {_fmt(m['aAcc'])} | {_fmt(m['mAcc'])} |",
        "",
        "Per class (percent; – = class absent from prediction and ground truth, left out of the mean):",
        "",
        "| class | IoU | Acc |",
        "|---|---:|---:|",
    ]
    lines += [f"| {c['class']} | {_fmt(c['IoU'])} | {_fmt(c['Acc'])} |" for c in r["per_class"]]
    lines += ["", f"Command: `{_command_line(r)}`", ""]
    return "\n".join(lines)


def evaluate_ris(
    predictor: RISPredictor,
    dataset: Any,
    out_dir: str | Path,
    *,
    resume: bool = True,
    overlays: int = 0,
    meta: Mapping[str, Any] | None = None,
    progress: bool = True,
    limit: int | None = None,
) -> dict[str, Any]:
    """Evaluate a referring predictor; write samples.jsonl, results.json, results.md, overlays.

    Samples for which the predictor returns no mask count as IoU 0 (never skipped); their number is reported.

    Args:
        predictor: ``(image, sentence) -> RISOutput | bool mask | None``.
        dataset: A :class:`textseg.data.refer.RefDataset` (items with image, mask, sentence, ref_id, sent_id).
        out_dir: Output folder (created).
        resume: Reuse finished samples stored in ``out_dir`` by an earlier, interrupted run.
        overlays: Write overlays (prediction red, ground truth green) of the first N samples.
        meta: Extra metadata for results.json; ``argv`` is always recorded.
        progress: Show a tqdm progress bar.
        limit: Evaluate only the first N samples.

    Returns:
        The results dict written to results.json.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = _indices(len(dataset), limit)
    header = {
        "task": "ris",
        "dataset": getattr(dataset, "dataset", type(dataset).__name__),
        "split_by": getattr(dataset, "split_by", None),
        "split": getattr(dataset, "split", None),
        "n": len(dataset),
    }
    store = _SampleStore(out, header, resume)
    done = sum(1 for i in store.rows if i < total)
    if done:
        log.info("resuming: %d of %d samples already evaluated in %s", done, total, store.path)
    bar = _progress(total, done, f"ris {header['dataset']} {header['split']}", progress)
    metric = RISMetric()
    try:
        for i in range(total):
            if i in store.rows:
                continue
            sample = dataset[i]
            res = _as_ris_output(predictor(sample["image"], sample["sentence"]))
            inter, union, hit = metric.update(res.mask, sample["mask"], res.response)
            store.append(
                {
                    "i": i,
                    "ref_id": sample.get("ref_id"),
                    "sent_id": sample.get("sent_id"),
                    "I": inter,
                    "U": union,
                    "hit": hit,
                    "no_mask": res.mask is None,
                }
            )
            if i < overlays:
                _save_png(
                    _ris_overlay(sample["image"], res.mask, sample["mask"]),
                    out / "overlays" / f"{i:05d}_ref{sample.get('ref_id')}_sent{sample.get('sent_id')}.png",
                )
            bar.update(1)
    finally:
        bar.close()
        store.close()

    metric = RISMetric()
    rows = [row for i, row in sorted(store.rows.items()) if i < total]
    for row in rows:
        metric.add(row["I"], row["U"], row["hit"])
    results = {
        "task": "ris",
        "dataset": header["dataset"],
        "split_by": header["split_by"],
        "split": header["split"],
        "n_samples": total,
        "n_dataset": len(dataset),
        "n_no_mask": sum(1 for row in rows if row["no_mask"]),
        "metrics": metric.compute(),
        "meta": _meta(meta),
    }
    results = _jsonable(results)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "results.md").write_text(_ris_markdown(results), encoding="utf-8")
    return results


def _ris_overlay(image: np.ndarray, pred: np.ndarray | None, gt: np.ndarray) -> np.ndarray:
    def tint(mask: np.ndarray | None, colour: tuple[int, int, int]) -> np.ndarray:
        panel = image.copy()
        if mask is not None:
            m = np.asarray(mask).astype(bool)
            panel[m] = _blend(image[m], np.array(colour, dtype=np.uint8)[None].repeat(int(m.sum()), 0))
        return panel

    return np.concatenate([image, tint(pred, (255, 0, 0)), tint(gt, (0, 255, 0))], axis=1)


def _ris_markdown(r: Mapping[str, Any]) -> str:
    m = r["metrics"]
    keys = ["oIoU", "mIoU"] + [f"Prec@{t:.1f}" for t in PREC_THRESHOLDS] + ["PointM"]
    lines = [
        f"# Referring segmentation: {r['dataset']} ({r['split_by']}) {r['split']}, "
        f"{r['n_samples']} of {r['n_dataset']} sentences",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---:|" * len(keys),
        "| " + " | ".join(_fmt(m.get(k)) for k in keys) + " |",
        "",
        f"Samples without a predicted mask (counted as IoU 0): {r['n_no_mask']}.",
        "",
        f"Command: `{_command_line(r)}`",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# CLI


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``eval semseg`` and ``eval ris`` to the ``textseg`` command line."""
    from textseg import factory
    from textseg.data.semseg import SEMSEG_DATASETS

    parser = subparsers.add_parser("eval", help="evaluate a model on a benchmark", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="eval_task", metavar="TASK")
    sub.required = True

    sem = sub.add_parser("semseg", help="semantic segmentation benchmark (mIoU)")
    sem.add_argument("--dataset", required=True, choices=SEMSEG_DATASETS)
    sem.add_argument("--root", required=True, help="dataset folder in its original on-disk layout")
    sem.add_argument("--split", default="val")
    sem.add_argument("--protocol", default="groupvit", help="preset name (groupvit, sclip, workbench) or YAML path")
    sem.add_argument("--bg-score", type=float, help="constant background similarity (overrides the protocol's)")
    _add_common(sem)
    factory.add_model_args(sem)
    sem.set_defaults(func=_run_semseg)

    ris = sub.add_parser("ris", help="referring segmentation benchmark (oIoU, mIoU, Prec@X)")
    ris.add_argument("--root", required=True, help="folder holding <dataset>/refs(<split-by>).p and instances.json")
    ris.add_argument("--dataset", default="refcoco", help="refcoco, refcoco+, refcocog, ...")
    ris.add_argument("--split-by", default="unc", help="unc (RefCOCO/+), umd or google (RefCOCOg)")
    ris.add_argument("--split", default="val")
    ris.add_argument("--image-root", default=None, help="image folder (default: <root>/images)")
    ris.add_argument("--short-side", type=int, default=448, help="resize images to this short side (default 448)")
    _add_common(ris)
    factory.add_model_args(ris)
    ris.set_defaults(func=_run_ris)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (results.json, results.md, samples.jsonl)")
    p.add_argument("--overlays", type=int, default=0, metavar="N", help="write overlays of the first N samples")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate only the first N samples")
    p.add_argument("--no-resume", action="store_true", help="start over instead of reusing finished samples")
    p.add_argument("--text-cache-dir", default=None, help="cache folder for class-name text embeddings")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _args_config(args: argparse.Namespace) -> dict[str, Any]:
    return {k: _jsonable(v) for k, v in vars(args).items() if k != "func"}


def _build_segmenter(args: argparse.Namespace, templates: str) -> Any:
    from textseg import factory
    from textseg.segmenter import Segmenter

    model = factory.create_model_from_args(args)
    return Segmenter(model, templates=templates, text_cache_dir=args.text_cache_dir)


def _run_semseg(args: argparse.Namespace) -> int:
    from textseg.data.semseg import build_semseg_dataset

    dataset = build_semseg_dataset(args.dataset, args.root, args.split)
    protocol = protocol_for_benchmark(load_protocol(args.protocol), args.dataset)
    if args.bg_score is not None:
        protocol["bg_score"] = args.bg_score
    segmenter = _build_segmenter(args, protocol["templates"])
    predictor = SegmenterSemsegPredictor(segmenter, protocol, dataset.has_background)
    results = evaluate_semseg(
        predictor,
        dataset,
        args.out,
        resume=not args.no_resume,
        overlays=args.overlays,
        meta={"config": {"args": _args_config(args), "protocol": protocol}},
        progress=not args.no_progress,
        limit=args.limit,
    )
    m = results["metrics"]
    print(
        f"{args.dataset} {args.split} ({results['n_samples']} images): mIoU {_fmt(m['mIoU'])}  "
        f"aAcc {_fmt(m['aAcc'])}  mAcc {_fmt(m['mAcc'])}  -> {Path(args.out) / 'results.json'}"
    )
    return 0


def _run_ris(args: argparse.Namespace) -> int:
    from textseg.data.refer import RefDataset

    dataset = RefDataset(args.root, args.dataset, args.split_by, args.split, image_root=args.image_root)
    protocol = {"short_side": args.short_side}
    segmenter = _build_segmenter(args, "single")
    results = evaluate_ris(
        SegmenterRISPredictor(segmenter, protocol),
        dataset,
        args.out,
        resume=not args.no_resume,
        overlays=args.overlays,
        meta={"config": {"args": _args_config(args), "protocol": protocol}},
        progress=not args.no_progress,
        limit=args.limit,
    )
    m = results["metrics"]
    print(
        f"{args.dataset} ({args.split_by}) {args.split} ({results['n_samples']} sentences): oIoU {_fmt(m['oIoU'])}  "
        f"mIoU {_fmt(m['mIoU'])}  Prec@0.5 {_fmt(m['Prec@0.5'])}  -> {Path(args.out) / 'results.json'}"
    )
    return 0


__all__ = [
    "RISOutput",
    "SegmenterRISPredictor",
    "SegmenterSemsegPredictor",
    "evaluate_ris",
    "evaluate_semseg",
    "load_protocol",
    "protocol_for_benchmark",
    "register_cli",
]
