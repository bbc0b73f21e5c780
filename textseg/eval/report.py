"""What an evaluation writes besides its samples: JSON-safe results, the metadata block and the markdown tables."""

from __future__ import annotations

import datetime as _dt
import math
import shlex
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from textseg.metrics import PREC_THRESHOLDS


def jsonable(value: Any) -> Any:
    """``value`` as JSON values: NaN/inf become null; numpy scalars, paths and other objects are converted."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if callable(value):
        return getattr(value, "__qualname__", repr(value))
    return str(value)


def fmt(value: Any, digits: int = 2) -> str:
    """A metric for a table: ``digits`` decimals for floats, ``–`` for a missing or undefined value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def metadata(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``meta`` block of results.json: argv, textseg version and finishing time, then ``meta`` (a ``config``
    entry is always present)."""
    from textseg import __version__

    out: dict[str, Any] = {
        "argv": list(sys.argv),
        "textseg_version": __version__,
        "finished": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    out.update(meta or {})
    out.setdefault("config", {})
    return out


def command_line(results: Mapping[str, Any]) -> str:
    """The recorded command line of a results dict, shell-quoted."""
    argv = results.get("meta", {}).get("argv") or []
    return " ".join(shlex.quote(str(a)) for a in argv)


#: The rows of :func:`diagnosis_markdown`: tag, measure, what it is (see :mod:`textseg.eval.diagnose`).
DIAGNOSIS_ROWS: tuple[tuple[str, str, str], ...] = (
    ("(a)", "model", "mIoU: the model's groups and labels"),
    ("(b)", "oracle_labels", "mIoU: oracle labels on the model's groups (grouping ceiling)"),
    ("(c)", "oracle_regions", "mIoU: the model's labels on ground-truth regions (recognition ceiling)"),
    ("(d)", "pred_fg_gt_bg", "predicted foreground that is ground-truth background (%)"),
    ("(d)", "gt_fg_pred_bg", "ground-truth foreground predicted background (%)"),
)


def diagnosis_markdown(d: Mapping[str, Any]) -> str:
    """The error decomposition (:mod:`textseg.eval.diagnose`) as one Markdown table (a heading, the table, a legend
    and the notes)."""
    fg_bg = d.get("fg_bg") or {}
    values = [d["mIoU"].get(key) if tag != "(d)" else fg_bg.get(key) for tag, key, _ in DIAGNOSIS_ROWS]
    lines = [f"## Error decomposition ({d.get('n_samples', '?')} images)", "", "| | measure | value |",
             "|---|---|---:|"]
    lines += [f"| {tag} | {what} | {fmt(v)} |" for (tag, _, what), v in zip(DIAGNOSIS_ROWS, values)]
    lines += ["", "100 - (b): lost to grouping (groups that mix classes); 100 - (c): lost to recognition and "
              "background handling on perfect regions; (b) - (a) and (c) - (a): what perfect labels or perfect "
              "regions would add to this model. – = absent."]
    notes = list(d.get("notes") or [])
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def semseg_markdown(r: Mapping[str, Any]) -> str:
    """results.md of a semantic segmentation evaluation: the headline metrics, the error decomposition (if the
    results have one), then IoU and Acc per class."""
    m = r["metrics"]
    lines = [
        f"# Semantic segmentation: {r['dataset']} ({r['split']}, {r['n_samples']} of {r['n_dataset']} images)",
        "",
        "| mIoU | aAcc | mAcc |",
        "|---:|---:|---:|",
        f"| {fmt(m['mIoU'])} | {fmt(m['aAcc'])} | {fmt(m['mAcc'])} |",
        "",
    ]
    if r.get("diagnosis"):
        lines += [diagnosis_markdown(r["diagnosis"])]
    lines += [
        "Per class (percent; – = class absent from prediction and ground truth, left out of the mean):",
        "",
        "| class | IoU | Acc |",
        "|---|---:|---:|",
    ]
    lines += [f"| {c['class']} | {fmt(c['IoU'])} | {fmt(c['Acc'])} |" for c in r["per_class"]]
    lines += ["", f"Command: `{command_line(r)}`", ""]
    return "\n".join(lines)


def ris_markdown(r: Mapping[str, Any]) -> str:
    """results.md of a referring segmentation evaluation: oIoU, mIoU, Prec@X and PointM in one table."""
    m = r["metrics"]
    keys = ["oIoU", "mIoU"] + [f"Prec@{t:.1f}" for t in PREC_THRESHOLDS] + ["PointM"]
    keys += ["N-acc"] if "N-acc" in m else []
    lines = [
        f"# Referring segmentation: {r['dataset']} ({r['split_by']}) {r['split']}, "
        f"{r['n_samples']} of {r['n_dataset']} sentences",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---:|" * len(keys),
        "| " + " | ".join(fmt(m.get(k)) for k in keys) + " |",
        "",
        f"Samples without a predicted mask (counted as IoU 0): {r['n_no_mask']}."
        + (f" No-target samples (scored by N-acc only: % answered with no mask): {m['n_no_target']}."
           if "n_no_target" in m else ""),
        "",
    ]
    if "proposal_oracle" in r:
        lines += [f"Proposal oracle (the best proposal's IoU, mean over sentences): {fmt(r['proposal_oracle'])}; "
                  f"proposals per sentence: {r['proposals_per_sentence']:.1f}.", ""]
    if "outcomes" in r:
        o = r["outcomes"]
        kinds = [k for k in o if k != "n"]
        lines += [f"Outcomes of the {o['n']} sentences with a target (percent): hit = IoU >= 0.5; poor_mask = the "
                  "target, IoU < 0.5; wrong_instance = another object of its category; wrong_kind = another "
                  "category or background.", "", "| " + " | ".join(kinds) + " |", "|" + "---:|" * len(kinds),
                  "| " + " | ".join(fmt(o[k]) for k in kinds) + " |", ""]
    lines += [f"Command: `{command_line(r)}`", ""]
    return "\n".join(lines)


def summary_line(r: Mapping[str, Any]) -> str:
    """One line for a terminal: dataset, split, sample count and the headline metrics of a results dict."""
    m = r["metrics"]
    if r["task"] == "semseg":
        return (f"{r['dataset']} {r['split']} ({r['n_samples']} images): mIoU {fmt(m['mIoU'])}  "
                f"aAcc {fmt(m['aAcc'])}  mAcc {fmt(m['mAcc'])}")
    if m.get("n", 0) == 0 and "N-acc" in m:  # a no-target evaluation
        return (f"{r['dataset']} ({r['split_by']}) {r['split']} ({r['n_samples']} no-target sentences): "
                f"N-acc {fmt(m['N-acc'])}")
    return (f"{r['dataset']} ({r['split_by']}) {r['split']} ({r['n_samples']} sentences): oIoU {fmt(m['oIoU'])}  "
            f"mIoU {fmt(m['mIoU'])}  Prec@0.5 {fmt(m['Prec@0.5'])}" + (f"  N-acc {fmt(m['N-acc'])}" if "N-acc" in m
                                                                        else ""))
