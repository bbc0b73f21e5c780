"""The benchmark reports as Markdown tables (under the machine and versions) and on disk as JSON + Markdown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from textseg.bench.segment import STAGE_HELP, STAGES


def _fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def _sig(x: float | None, scale: float = 1.0) -> str:
    """Three significant digits (thousands separated), "–" for None."""
    if x is None:
        return "–"
    v = x * scale
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def header_markdown(report: dict[str, Any]) -> list[str]:
    """Markdown lines of a report's header: the command, the machine, the versions, the device and dtype."""
    m, v = report["machine"], report["versions"]
    gpu = f", GPU {m['gpu']} ({m.get('gpu_memory_gb')} GB)" if m.get("gpu") else ", no GPU"
    lines = [f"`{report['command']}`", "",
             f"- machine: {m['cpu']}, {m['cpu_count']} cores ({m['torch_threads']} torch threads)"
             f"{', ' + str(m['memory_gb']) + ' GB' if m.get('memory_gb') else ''}{gpu}"
             f"{'; load average ' + ' '.join(map(str, m['load_average'])) if m.get('load_average') else ''}",
             "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val is not None)
             + "".join(f", {k} not installed" for k, val in v.items() if val is None),
             f"- device {report['device']}, {report['dtype']}" + (f" ({report['amp_note']})" if report.get("amp_note")
                                                                  else "")]
    return lines


def segment_markdown(report: dict[str, Any]) -> str:
    """The segmentation report as Markdown: header, end-to-end table, stage table, text and process tables."""
    r = report
    t = r["text"]
    lines = [f"## textseg bench segment: {r['model']} ({'pretrained' if r['pretrained'] else 'random'} weights)", "",
             *header_markdown(r),
             f"- image {r['image']} {r['image_size'][0]}×{r['image_size'][1]}, short side {r['short_side']}, "
             f"{r['classes']} classes × {r['templates']} templates, {r['repeats']} timed calls after {r['warmup']} "
             "untimed per row; batch = images per call = crops per model call",
             f"- text ({t['prompts']} prompts): cold {t['cold_s']:.2f} s, warm disk cache {t['warm_disk_s']:.3f} s, "
             f"warm memory cache {t['warm_memory_s']:.4f} s", "",
             "| mode | batch | crops/image | ms/image | images/s | GFLOP/image | GFLOP/s | end-to-end / forwards "
             "| CPU time / wall | peak host MB | peak device MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in r["runs"]:
        lines.append(f"| {run['mode']} | {run['batch_size']} | {run['crops_per_image']} | {run['ms_per_image']:,.1f} "
                     f"| {run['images_per_s']:.2f} | {_sig(run.get('flops_per_image'), 1e-9)} "
                     f"| {_sig(run.get('gflop_per_s'))} | {_fmt(run['end_to_end_over_forwards'], 2)} "
                     f"| {run['cpu_over_wall']:.2f} | {run['peak_host_mb']:,} | {_fmt(run['peak_device_mb'], 0)} |")
    lines += ["", "Stages, ms per image (share of the instrumented call); sum = named stages, checked against "
              "end to end:", "",
              "| mode | batch | " + " | ".join(STAGES) + " | sum | end to end |",
              "|---|---:|" + "---:|" * (len(STAGES) + 2)]
    for run in r["runs"]:
        cells = [f"{run['stages_ms_per_image'][s]:,.1f} ({run['stage_share'][s]:.0%})" for s in STAGES]
        c = run["check"]
        lines.append(f"| {run['mode']} | {run['batch_size']} | " + " | ".join(cells)
                     + f" | {c['stage_sum_ms_per_image']:,.1f} ({c['stage_sum_over_end_to_end']:.0%}) "
                     f"| {run['ms_per_image']:,.1f} |")
    lines += ["", "Stages: " + "; ".join(f"**{s}** {h}" for s, h in STAGE_HELP.items()) + ". End-to-end / forwards "
              "= end-to-end time over features + region (the two image towers). GFLOP: torch's FLOP counter over "
              "one batch-1 call. CPU time / wall: process CPU seconds (all threads) per wall second of the timed "
              "calls, low when other processes share the cores. Peak host MB: the process's peak resident memory "
              "so far (VmHWM); peak device MB: torch.cuda.max_memory_allocated over the row's calls."]
    if r.get("processes"):
        lines += ["", "Fresh processes (spawned), one image, `Segmenter.predict`:", "",
                  "| text cache | build s | text s (prompts) | s/image | peak host MB |", "|---|---:|---:|---:|---:|"]
        for p in r["processes"]:
            lines.append(f"| {p['cache']} | {p['build_s']} | {p['text_s']} ({p['prompts_encoded']}) "
                         f"| {p['predict_s_median']} | {p['peak_rss_mb']:,} |")
    if r.get("warnings"):
        lines += ["", *[f"- warning: {w}" for w in r["warnings"]]]
    return "\n".join(lines) + "\n"


def train_markdown(report: dict[str, Any]) -> str:
    """The training report as Markdown: header and one row per step variant."""
    r = report
    lines = [f"## textseg bench train: {r['model']} (random weights, region mode {r['region_mode']})", "",
             *header_markdown(r),
             f"- batch {r['batch_size']} synthetic images {r['image_size']}×{r['image_size']} + captions, "
             f"{r['steps']} timed steps after {r['warmup']} untimed, trained: {r['trainable']} image tower + text",
             "",
             "| step | samples/s | ms/step | tokens ms | grouping ms | forward + loss ms | backward ms "
             "| optimizer ms | peak device MB |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, v in r["variants"].items():
        s = v["sections_ms"]
        label = "open_clip image-text" if name == "open_clip" else "textseg: grouping + region tokens + nouns"
        lines.append(f"| {label} | {v['samples_per_s']:,.1f} | {v['ms_per_step']:,.1f} | {_fmt(s.get('tokens'))} "
                     f"| {_fmt(s.get('grouping'))} "
                     f"| {_fmt(s.get('forward'))} | {_fmt(s.get('backward'))} | {_fmt(s.get('optimizer'))} "
                     f"| {_fmt(v['peak_device_mb'], 0)} |")
    lines += ["", f"Grouping + region tokens add {r['overhead']:.0%} to the open_clip step "
              f"({r['overhead_without_grouping']:.0%} without the grouping, as when the data workers group)."]
    return "\n".join(lines) + "\n"


def memory_markdown(report: dict[str, Any]) -> str:
    """The Markdown table of a :func:`~textseg.bench.memory.bench_segment_memory` report, under the machine and
    versions."""
    lines = header_markdown(report) + [""]
    lines += ["| image | megapixels | classes | decoded image (MB) | peak RSS (MB) | wall (s) |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in report["runs"]:
        lines.append(f"| {r['width']}x{r['height']} | {r['megapixels']} | {r['classes']} | {r['image_mb']:,.0f} | "
                     f"{r['peak_rss_mb']:,.0f} | {r['wall_s']} |")
    return "\n".join(lines) + "\n"


def refer_markdown(report: dict[str, Any]) -> str:
    """The Markdown table of a :func:`~textseg.bench.refer.bench_refer` report, under the machine and versions."""
    methods = list(dict.fromkeys(r["method"] for r in report["runs"]))
    counts = list(dict.fromkeys(r["proposals"] for r in report["runs"]))
    cell = {(r["method"], r["proposals"]): r["seconds"] for r in report["runs"]}
    lines = header_markdown(report) + [""]
    lines += ["| proposals | " + " | ".join(f"{m} (s)" for m in methods) + " |",
              "|---:|" + "---:|" * len(methods)]
    lines += [f"| {n} | " + " | ".join(f"{cell[m, n]:.2f}" for m in methods) + " |" for n in counts]
    spatial = [r for r in report["runs"] if "spatial_overhead" in r]
    if spatial:
        lines += ["", f"Spatial reading, a whole refer call (\"{spatial[0]['sentence']}\", spaCy's import not timed):",
                  "", "| method | proposals | without (s) | with (s) | overhead |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['method']} | {r['proposals']} | {r['refer_seconds']:.3f} | {r['refer_spatial_seconds']:.3f} | "
                  f"{100 * r['spatial_overhead']:+.1f} % |" for r in spatial]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: str | Path, name: str, markdown: str) -> tuple[Path, Path]:
    """Write ``out_dir/name.json`` and ``out_dir/name.md`` (atomically); returns both paths."""
    from textseg.io import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / f"{name}.json", out / f"{name}.md"
    atomic_write_text(paths[0], json.dumps(report, indent=2) + "\n")
    atomic_write_text(paths[1], markdown)
    return paths


__all__ = ["header_markdown", "memory_markdown", "refer_markdown", "segment_markdown", "train_markdown",
           "write_report"]
