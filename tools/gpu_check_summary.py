#!/usr/bin/env python3
"""The summary of a GPU check folder (``bash tools/gpu_check.sh --out DIR``) as one Markdown file, DIR/summary.md.

Reads what the check wrote: ``steps.tsv`` (step, exit status, seconds per line), ``device.txt`` (``nvidia-smi -L``),
``commit.txt``, ``bench_segment_*/bench_segment.json``, ``bench_train_*/bench_train.json``, ``peers.jsonl`` (one
JSON line per peer from peerbench's ``run.py``) and ``logs/STEP.log``. A missing input shows as "not run"; a file
that cannot be read or parsed is named as unreadable. Needs only the standard library.

    python3 tools/gpu_check_summary.py DIR
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

#: textseg's model for each peer (peerbench's ``peer`` name): compared in the ratio table.
PEER_OF = {"sclip-b16": "sclip", "naclip-b16": "naclip", "proxyclip-b16": "proxyclip"}
#: Each peer's input on VOC-21 as (mode, short side, window, stride) (peerbench's README): a textseg row with the
#: same four segments the same crops.
PEER_INPUT = {"sclip": ("window", 336, 224, 112), "naclip": ("whole", 336, None, None),
              "proxyclip": ("window", 336, 336, 112)}
#: Lines of a failing step's log shown in the summary.
LOG_TAIL_LINES = 25
NOT_RUN = "not run"


def _num(x: Any, digits: int = 1) -> str:
    """A number with ``digits`` decimals and thousands separators; "–" for anything not a number."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return "–"
    return f"{x:,.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    """Markdown table lines; ``align`` has one letter per column, ``l`` (left) or ``r`` (right)."""
    rule = ["---:" if a == "r" else "---" for a in align]
    return ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|",
            *["| " + " | ".join(str(c) for c in row) + " |" for row in rows]]


def _read_json(path: Path, problems: list[str]) -> Any:
    """The parsed JSON of ``path``; None (and a line in ``problems``) when it cannot be read or parsed."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        problems.append(f"`{path}` is unreadable: {type(err).__name__}: {err}")
        return None


def _shape_problem(path: Path, err: Exception, kind: str) -> str:
    """The line naming a JSON file that parses but is not shaped like a ``kind`` report."""
    if isinstance(err, KeyError):
        return f"`{path}` is unreadable: no field {err} where a {kind} report has one"
    return f"`{path}` is unreadable: not a {kind} report ({type(err).__name__}: {err})"


def _read_text(path: Path, problems: list[str]) -> str | None:
    """A UTF-8 file's text; None when it is missing, or unreadable (then named in ``problems``)."""
    if not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        problems.append(f"`{path}` is unreadable: {type(err).__name__}: {err}")
        return None


def read_steps(path: Path, problems: list[str]) -> list[dict[str, Any]] | None:
    """The steps of ``steps.tsv``: ``{"step", "rc", "seconds"}`` each (rc and seconds None when not numbers).

    None when the file is missing; a line without three tab-separated fields goes to ``problems``.
    """
    text = _read_text(path, problems)
    if text is None:
        return None
    steps = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) != 3:
            problems.append(f"`{path}` line {number} is unreadable: {line!r}")
            continue
        name, rc, seconds = fields
        steps.append({"step": name, "rc": int(rc) if rc.strip().lstrip("-").isdigit() else None,
                      "seconds": _float(seconds)})
    return steps


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _report_folders(folder: Path, prefix: str, expected: Sequence[str]) -> list[tuple[str, Path]]:
    """(model, folder) of each ``prefix*`` folder under ``folder`` and of each ``expected`` model's
    ``prefix_MODEL``, existing or not, sorted by name."""
    found = {sub.name[len(prefix):].lstrip("_") or "?": sub for sub in folder.glob(prefix + "*") if sub.is_dir()}
    for model in expected:
        found.setdefault(model, folder / f"{prefix}_{model}")
    return sorted(found.items())


def _report_rows(folder: Path, prefix: str, what: str, problems: list[str], expected: Sequence[str],
                 extract: Callable[[dict[str, Any], str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows of each ``<prefix>*/<prefix>.json`` under ``folder`` (``extract(report, model)``); a folder without its
    JSON, or an ``expected`` model without a folder, gives one row with ``status`` "not run", an unreadable or
    malformed report one with "unreadable" (named in ``problems``). The model is the report's own name, else the
    folder's suffix."""
    rows = []
    for name, sub in _report_folders(folder, prefix, expected):
        path = sub / f"{prefix}.json"
        if not path.is_file():
            rows.append({"model": name, "status": NOT_RUN})
            continue
        report = _read_json(path, problems)
        if report is None:
            rows.append({"model": name, "status": "unreadable"})
            continue
        try:
            rows += extract(report, str(report.get("model") or name))
        except (AttributeError, KeyError, TypeError) as err:
            problems.append(_shape_problem(path, err, what))
            rows.append({"model": name, "status": "unreadable"})
    return rows


def segment_rows(folder: Path, problems: list[str], expected: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One row per run of each ``bench_segment_*/bench_segment.json`` under ``folder`` (see :func:`_report_rows`).

    A row: ``model``, ``batch``, ``mode``, ``ms_per_image``, ``images_per_s``, ``peak_device_mb``,
    ``peak_host_mb``, ``crops_per_image``, ``short_side``, ``window``, ``stride``.
    """
    def extract(report: dict[str, Any], model: str) -> list[dict[str, Any]]:
        return [{"model": model, "batch": run["batch_size"], "mode": run["mode"],
                 "ms_per_image": run.get("ms_per_image"), "images_per_s": run.get("images_per_s"),
                 "peak_device_mb": run.get("peak_device_mb"), "peak_host_mb": run.get("peak_host_mb"),
                 "crops_per_image": run.get("crops_per_image"), "short_side": report.get("short_side"),
                 "window": run.get("window"), "stride": run.get("stride"), "status": "ok"}
                for run in report["runs"]]

    return _report_rows(folder, "bench_segment", "segment", problems, expected, extract)


def train_rows(folder: Path, problems: list[str], expected: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One row per step variant of each ``bench_train*/bench_train.json`` under ``folder`` (see
    :func:`_report_rows`).

    A row: ``model``, ``variant`` (``open_clip`` or ``textseg``), ``batch``, ``image_size``, ``samples_per_s``,
    ``ms_per_step``, ``peak_device_mb``, ``overhead`` (the textseg step over the open_clip one, minus 1).
    """
    def extract(report: dict[str, Any], model: str) -> list[dict[str, Any]]:
        return [{"model": model, "variant": variant, "batch": report.get("batch_size"),
                 "image_size": report.get("image_size"), "samples_per_s": v.get("samples_per_s"),
                 "ms_per_step": v.get("ms_per_step"), "peak_device_mb": v.get("peak_device_mb"),
                 "overhead": report.get("overhead") if variant == "textseg" else None, "status": "ok"}
                for variant, v in report["variants"].items()]

    return _report_rows(folder, "bench_train", "training", problems, expected, extract)


def read_peers(path: Path, problems: list[str]) -> list[dict[str, Any]] | None:
    """The JSON objects of ``peers.jsonl``, one per line; None when the file is missing.

    A line that is not a JSON object is named in ``problems`` and skipped.
    """
    text = _read_text(path, problems)
    if text is None:
        return None
    peers = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"`{path}` line {number} is unreadable: {err}")
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("peer"), str):
            problems.append(f"`{path}` line {number} is unreadable: not a peer's JSON object")
            continue
        peers.append(obj)
    return peers


def ratio_rows(segment: Sequence[dict[str, Any]], peers: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """textseg against its peer (:data:`PEER_OF`), batch 1, one row per textseg mode where both have a time.

    A row: ``model``, ``mode``, ``ms_per_image``, ``peer``, ``peer_ms``, ``peer_model_ms`` (``per_image_s`` and
    ``model_s`` in ms), ``ratio`` = textseg ms / peer ms and ``model_ratio`` = textseg ms / peer model ms (below 1:
    textseg is faster), ``textseg_input`` and ``peer_input`` (what each one segmented) and ``same_input`` (the
    row's mode, short side, window and stride are the peer's, :data:`PEER_INPUT`).
    """
    by_peer = {p["peer"]: p for p in peers if isinstance(p.get("per_image_s"), (int, float)) and p["per_image_s"] > 0}
    rows = []
    for r in segment:
        peer = by_peer.get(PEER_OF.get(r["model"], ""))
        ms = r.get("ms_per_image")
        if r.get("status") != "ok" or r.get("batch") != 1 or peer is None or not isinstance(ms, (int, float)):
            continue
        peer_ms = 1000 * peer["per_image_s"]
        model_s = peer.get("model_s")
        peer_model_ms = 1000 * model_s if isinstance(model_s, (int, float)) and model_s > 0 else None
        textseg_input = f"short side {r.get('short_side') or 'as is'}" + (
            f", windows {r['window']}/{r['stride']}" if r.get("window") else ", whole image")
        hw = peer.get("input_hw")
        rows.append({"model": r["model"], "mode": r["mode"], "ms_per_image": ms, "peer": peer["peer"],
                     "peer_ms": peer_ms, "peer_model_ms": peer_model_ms, "ratio": ms / peer_ms,
                     "model_ratio": ms / peer_model_ms if peer_model_ms else None, "textseg_input": textseg_input,
                     "peer_input": "×".join(map(str, hw)) if isinstance(hw, list) else "–",
                     "same_input": (r["mode"], r.get("short_side"), r.get("window"), r.get("stride"))
                     == PEER_INPUT.get(peer["peer"])})
    return rows


def _log_tail(folder: Path, step: str, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of ``logs/STEP.log`` (empty when there is none)."""
    try:
        text = (folder / "logs" / f"{step}.log").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return text.rstrip("\n").splitlines()[-lines:]


def _lines(path: Path, default: str) -> list[str]:
    """The non-empty lines of a small text file; ``[default]`` when it is missing or empty."""
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return [default]
    return lines or [default]


def _pytest_line(folder: Path, steps: Sequence[str]) -> list[str]:
    """pytest's closing line (how many passed, skipped, ...) when the check ran the tests."""
    tail = _log_tail(folder, "pytest_cuda", 1) if "pytest_cuda" in steps else []
    return ["", f"pytest: {tail[0].strip('= ')}"] if tail else []


def steps_section(steps: Sequence[dict[str, Any]] | None) -> list[str]:
    """Markdown lines of the steps table (step, PASS/FAIL, rc, seconds) and the count that passed."""
    if steps is None:
        return [f"{NOT_RUN} (no steps.tsv)"]
    if not steps:
        return [f"{NOT_RUN} (steps.tsv is empty)"]
    rows = [[s["step"], "PASS" if s["rc"] == 0 else "FAIL", "–" if s["rc"] is None else str(s["rc"]),
             _num(s["seconds"])] for s in steps]
    passed = sum(s["rc"] == 0 for s in steps)
    return [*_table(["step", "result", "rc", "seconds"], rows, "llrr"), "",
            f"{passed} of {len(steps)} steps passed."]


def segment_section(segment: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown lines of the segmentation table (see :func:`segment_rows`)."""
    if not segment:
        return [NOT_RUN]
    rows = []
    for r in segment:
        if r["status"] != "ok":
            rows.append([r["model"], "–", r["status"], "–", "–", "–", "–", "–"])
            continue
        rows.append([r["model"], str(r["batch"]), r["mode"], _num(r["crops_per_image"], 0),
                     _num(r["ms_per_image"], 2), _num(r["images_per_s"], 1), _num(r["peak_device_mb"], 0),
                     _num(r["peak_host_mb"], 0)])
    return [*_table(["model", "batch", "mode", "crops/image", "ms/image", "images/s", "peak device MB",
                     "peak host MB"], rows, "lrlrrrrr"), "",
            "ms/image: median end-to-end `predict_batch` time over the batch; peak device MB: "
            "`torch.cuda.max_memory_allocated`."]


def train_section(train: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown lines of the training table (see :func:`train_rows`)."""
    if not train:
        return [NOT_RUN]
    rows = []
    for r in train:
        if r["status"] != "ok":
            rows.append([r["model"], r["status"], "–", "–", "–", "–", "–", "–"])
            continue
        overhead = f"{100 * r['overhead']:+.0f}%" if isinstance(r["overhead"], (int, float)) else "–"
        rows.append([r["model"], r["variant"], _num(r["batch"], 0), _num(r["image_size"], 0),
                     _num(r["samples_per_s"], 1), _num(r["ms_per_step"], 1), _num(r["peak_device_mb"], 0), overhead])
    return _table(["model", "step", "batch", "image size", "samples/s", "ms/step", "peak device MB", "vs open_clip"],
                  rows, "llrrrrrr")


def _ms(seconds: Any) -> str:
    return _num(1000 * seconds, 1) if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else "–"


def peers_section(peers: Sequence[dict[str, Any]] | None) -> list[str]:
    """Markdown lines of the peers table: one row per peer, its error when it failed."""
    if peers is None:
        return [f"{NOT_RUN} (no peers.jsonl)"]
    if not peers:
        return [f"{NOT_RUN} (peers.jsonl has no result)"]
    rows = []
    for p in peers:
        if "error" in p:
            rows.append([str(p["peer"]), f"error: {p['error']}", "–", "–", "–", "–", "–"])
            continue
        hw = p.get("input_hw")
        rows.append([str(p["peer"]), _ms(p.get("per_image_s")), _ms(p.get("model_s")), _num(p.get("text_embed_s"), 2),
                     _num(p.get("cuda_peak_alloc_mb"), 0), "×".join(map(str, hw)) if isinstance(hw, list) else "–",
                     str(p.get("device_name", "–"))])
    return [*_table(["peer", "ms/image", "model ms/image", "text embed s", "CUDA peak MB", "input", "device"], rows,
                    "lrrrrll"), "",
            "ms/image: their `per_image_s` (read, resize, pack, `test_step`); model: `test_step` only."]


def ratio_section(ratios: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown lines of the textseg-against-peer table (see :func:`ratio_rows`)."""
    if not ratios:
        return [f"{NOT_RUN} (needs a textseg model and its peer at batch 1: "
                + ", ".join(f"{m} / {p}" for m, p in PEER_OF.items()) + ")"]
    rows = [[r["model"], r["mode"], _num(r["ms_per_image"], 2), r["peer"], _num(r["peer_ms"], 1),
             _num(r["peer_model_ms"], 1), f"{r['ratio']:.2f}",
             f"{r['model_ratio']:.2f}" if r["model_ratio"] is not None else "–", r["textseg_input"], r["peer_input"],
             "yes" if r["same_input"] else "no"] for r in ratios]
    return [*_table(["textseg", "mode", "ms/image", "peer", "peer ms/image", "peer model ms", "textseg / peer",
                     "textseg / peer model", "textseg input", "peer input (H×W)", "same crops"], rows,
                    "llrlrrrrlll"), "",
            "Below 1: textseg takes less time per image. Same crops: the row's short side, mode, window and stride "
            "are the peer's VOC-21 setting; compare those rows."]


def render_summary(folder: Path, now: dt.datetime | None = None) -> str:
    """The Markdown summary of a GPU check folder (see the module's docstring for what it reads)."""
    folder = Path(folder)
    now = now or dt.datetime.now(dt.timezone.utc)
    problems: list[str] = []
    steps = read_steps(folder / "steps.tsv", problems)
    names = [s["step"] for s in steps or []]
    segment = segment_rows(folder, problems, [n[len("segment_"):] for n in names if n.startswith("segment_")])
    train = train_rows(folder, problems, [n[len("train_"):] for n in names if n.startswith("train_")])
    peers = read_peers(folder / "peers.jsonl", problems)
    out = ["# textseg GPU check", "", f"- date: {now.strftime('%Y-%m-%d %H:%M %Z').strip()}",
           f"- device: {'; '.join(_lines(folder / 'device.txt', 'unknown (no device.txt)'))}",
           f"- commit: {_lines(folder / 'commit.txt', 'unknown')[0]}", f"- folder: `{folder}`", "",
           "## Steps", "", *steps_section(steps), *_pytest_line(folder, names), "",
           "## Segmentation (`textseg bench segment`)", "", *segment_section(segment), "",
           "## Training (`textseg bench train`)", "", *train_section(train), "",
           "## Peers (their public code, `peerbench/run.py`)", "", *peers_section(peers), "",
           "## textseg against its peer (batch 1)", "", *ratio_section(ratio_rows(segment, peers or [])), ""]
    if problems:
        out += ["## Unreadable files", "", *[f"- {p}" for p in problems], ""]
    failing = [s["step"] for s in steps or [] if s["rc"] != 0]
    if failing:
        out += ["## Failing steps: end of each log", ""]
        for step in failing:
            tail = _log_tail(folder, step)
            fence = "````" if any("```" in line for line in tail) else "```"  # a log may hold a fence itself
            out += [f"### {step} (`logs/{step}.log`)", "", *([fence, *tail, fence] if tail else ["(no log)"]), ""]
    return "\n".join(out).rstrip("\n") + "\n"


def write_summary(folder: Path, now: dt.datetime | None = None) -> Path:
    """Write :func:`render_summary` to ``folder/summary.md`` (atomically); returns its path."""
    path = Path(folder) / "summary.md"
    text = render_summary(folder, now)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".summary-", suffix=".md")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``gpu_check_summary.py DIR``: write DIR/summary.md; 0 when written, 2 when DIR is not a folder."""
    parser = argparse.ArgumentParser(description="Write DIR/summary.md from a tools/gpu_check.sh results folder.")
    parser.add_argument("dir", type=Path, help="the folder given to gpu_check.sh --out")
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        print(f"gpu_check_summary.py: {args.dir} is not a folder", file=sys.stderr)
        return 2
    print(f"wrote {write_summary(args.dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
