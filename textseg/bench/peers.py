"""textseg's dense modes beside the public code of SCLIP, NACLIP and ProxyCLIP (run by a peerbench folder: their
code at pinned commits, mmcv stood in), on the same random real-size weights in the released formats: equal outputs
(the published numbers carry over) and per-image time, text time and peak memory in one window on one machine."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: peerbench's file names of the two weight files it loads in place of the downloads.
CLIP_FILE = "openai_ViT-B-16_random_fp16.pt"
DINO_FILE = "dino_vitbase8_random.pth"
#: textseg model of each peer.
PEER_MODELS = {"sclip": "sclip-b16", "naclip": "naclip-b16", "proxyclip": "proxyclip-b16"}


def write_random_releases(folder: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Random real-size weights in the released formats, made from ``seed`` by textseg's own code: an OpenAI
    ViT-B/16 CLIP state dict (fp16, OpenAI's key names) and a DINO ViT-B/8 state dict (DINO's names), under
    peerbench's file names. The same seed and torch version give the same files; the caller's RNG is untouched.

    Returns:
        (CLIP file, DINO file).
    """
    import open_clip
    import timm

    from textseg.weight_formats import write_dino_state_dict, write_openai_clip_state_dict

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True)
        clip_file = write_openai_clip_state_dict(clip, folder / CLIP_FILE, fp16=True)
        del clip
        torch.manual_seed(seed + 1)
        dino = timm.create_model("vit_base_patch8_224", pretrained=False, num_classes=0)
        dino_file = write_dino_state_dict(dino, folder / DINO_FILE)
    return clip_file, dino_file


def run_peerbench(peerbench: str | Path, peers: str = "all", *, image: str | Path | None = None,
                  classes: str | Path | None = None, weights_dir: str | Path | None = None,
                  dump: str | Path | None = None, device: str = "cpu", threads: int | None = None,
                  repeats: int = 3, warmup: int = 1, python: str | None = None) -> list[dict[str, Any]]:
    """Run a writable copy of peerbench (``run.py``) and return its JSON lines (one per peer).

    Raises:
        RuntimeError: peerbench failed (its last stderr lines in the message).
    """
    cmd = [python or sys.executable, str(Path(peerbench) / "run.py"), "--device", device, "--peer", peers,
           "--repeats", str(repeats), "--warmup", str(warmup)]
    for flag, value in (("--image", image), ("--classes", classes), ("--weights-dir", weights_dir),
                        ("--dump", dump), ("--threads", threads)):
        if value is not None:
            cmd += [flag, str(Path(value).resolve()) if flag != "--threads" else str(value)]
    proc = subprocess.run(cmd, cwd=peerbench, capture_output=True, text=True, env={**os.environ})
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"peerbench failed (rc {proc.returncode}): {tail}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def image_at_short_side(image: str | Path, short_side: int, out: str | Path) -> Path:
    """``image`` resized (PIL bilinear) so that its short side is ``short_side``, saved as PNG at ``out``: the
    methods' resize is then the identity, and no resize library separates two implementations."""
    from PIL import Image

    im = Image.open(image).convert("RGB")
    w, h = im.size
    s = short_side / min(w, h)
    im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR).save(out)
    return Path(out)


def time_textseg(peer: str, *, image: str | Path, classes: str | Path, clip_file: str | Path,
                 dino_file: str | Path, repeats: int = 3, warmup: int = 1, threads: int | None = None,
                 cache_dir: str | Path | None = None, scores_out: str | Path | None = None) -> dict[str, Any]:
    """textseg's model of ``peer`` on one image and a class file in the peers' format, timed as peerbench times
    the peer (run it in a fresh process for a fair peak RSS): ``text_cold_s`` (the vocabulary's 80-template
    embeddings with an empty cache), ``text_cached_s`` (the same from the disk cache, a fresh encoder),
    ``per_image_s`` (median of ``repeats`` after ``warmup``: read, resize, predict), ``peak_rss_mb``."""
    from textseg import Segmenter, create_model
    from textseg.bench.timing import peak_rss_mb
    from textseg.text import TextEncoder
    from textseg.vocab import Vocabulary, read_class_file

    if threads:
        torch.set_num_threads(threads)
    model = create_model(PEER_MODELS[peer], clip_pretrained=str(clip_file),
                         backbone_pretrained=str(dino_file) if peer == "proxyclip" else None)
    lines = read_class_file(classes)
    cache = Path(cache_dir or tempfile.mkdtemp(prefix="textseg-text-"))
    seg = Segmenter(model, text_cache_dir=cache, background_classes=lines[0])
    vocab = Vocabulary.make(lines[1:], lines[0])
    t0 = time.perf_counter()
    seg.text.encode_classes(vocab.queries, seg.protocol.templates)
    text_cold = time.perf_counter() - t0
    fresh = TextEncoder(model.clip, model.tokenizer, cache_dir=cache)
    t0 = time.perf_counter()
    fresh.encode_classes(vocab.queries, seg.protocol.templates)
    text_cached = time.perf_counter() - t0
    runs = []
    result = None
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        result = seg.predict(str(image), lines[1:], return_scores=scores_out is not None)
        if i >= warmup:
            runs.append(time.perf_counter() - t0)
    if scores_out is not None and result is not None:
        np.savez_compressed(scores_out, scores=result.scores, labels=result.labels)
    return {"peer": peer, "model": PEER_MODELS[peer], "threads": torch.get_num_threads(),
            "n_queries": len(vocab.queries), "n_prompts": len(vocab.queries) * 80,
            "text_cold_s": round(text_cold, 3), "text_cached_s": round(text_cached, 4),
            "per_image_s": round(statistics.median(runs), 4), "per_image_runs_s": [round(r, 4) for r in runs],
            "peak_rss_mb": round(peak_rss_mb(), 1)}


def time_textseg_process(peer: str, **kwargs: Any) -> dict[str, Any]:
    """:func:`time_textseg` in a fresh Python process (its own peak RSS)."""
    args = {k: str(v) if isinstance(v, Path) else v for k, v in kwargs.items()}
    code = ("import json, sys; from textseg.bench.peers import time_textseg; "
            f"print(json.dumps(time_textseg({peer!r}, **json.loads(sys.argv[1]))))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"textseg {peer} run failed: {' '.join(proc.stderr.strip().splitlines()[-3:])}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare_with_peers(peerbench: str | Path, *, image: str | Path, peers: tuple[str, ...] = tuple(PEER_MODELS),
                       repeats: int = 3, warmup: int = 1, threads: int | None = 2, seed: int = 0,
                       work_dir: str | Path | None = None) -> dict[str, Any]:
    """Each peer's public code and textseg's model of it, one after the other in this window on this machine, on
    the same random weights (``seed``), the same image (resized to short side 336 first) and the peer's own VOC-21
    class file: times, peak memory, and how far textseg's scores are from the peer's (max / mean |difference|,
    label agreement)."""
    from textseg.bench.timing import machine_info

    work = Path(work_dir or tempfile.mkdtemp(prefix="textseg-peers-"))
    weights = work / "weights"
    clip_file, dino_file = write_random_releases(weights, seed=seed)
    img = image_at_short_side(image, 336, work / "image336.png")
    rows = []
    for peer in peers:
        classes = Path(peerbench) / "peers" / peer / "configs" / "cls_voc21.txt"
        theirs = run_peerbench(peerbench, peer, image=img, classes=classes, weights_dir=weights, dump=work / "dump",
                               repeats=repeats, warmup=warmup, threads=threads)[0]
        ours = time_textseg_process(peer, image=img, classes=classes, clip_file=clip_file, dino_file=dino_file,
                                    repeats=repeats, warmup=warmup, threads=threads,
                                    cache_dir=work / f"text-{peer}", scores_out=work / f"textseg_{peer}.npz")
        ref = np.load(work / "dump" / f"{peer}_{img.stem}.npz")
        got = np.load(work / f"textseg_{peer}.npz")
        diff = np.abs(got["scores"] - ref["seg_logits"])
        rows.append({"peer": peer, "model": ours["model"], "n_prompts": ours["n_prompts"],
                     "peer_per_image_s": theirs["per_image_s"], "peer_model_s": theirs["model_s"],
                     "peer_text_s": theirs["text_embed_s"], "peer_rss_mb": theirs["peak_rss_mb"],
                     "per_image_s": ours["per_image_s"], "text_cold_s": ours["text_cold_s"],
                     "text_cached_s": ours["text_cached_s"], "rss_mb": ours["peak_rss_mb"],
                     "ratio_per_image": round(ours["per_image_s"] / theirs["per_image_s"], 3),
                     "text_cold_speedup": round(theirs["text_embed_s"] / ours["text_cold_s"], 1),
                     "text_cached_speedup": round(theirs["text_embed_s"] / max(ours["text_cached_s"], 1e-6), 0),
                     "scores_max_abs_diff": float(diff.max()), "scores_mean_abs_diff": float(diff.mean()),
                     "labels_equal": float((got["labels"] == ref["pred"][0]).mean()),
                     "peer_deviation": theirs.get("deviation"), "threads": ours["threads"]})
    return {"kind": "peers", "machine": machine_info("cpu"), "image": str(image), "input_hw": [int(v) for v in ref["input_hw"]],
            "repeats": repeats, "warmup": warmup, "seed": seed, "rows": rows}


def peers_markdown(report: dict[str, Any]) -> str:
    """The comparison as a Markdown table (one row per method)."""
    threads = report["rows"][0]["threads"] if report["rows"] else "?"
    lines = [f"# textseg dense modes against the public code ({report['machine'].get('cpu', '?')}, {threads} threads)",
             "", f"Image {Path(report['image']).name} at {report['input_hw'][0]}x{report['input_hw'][1]}, each "
             "method's VOC-21 class file, random real-size weights (the same files for both), median of "
             f"{report['repeats']} runs after {report['warmup']} warm-up.", "",
             "| method | public code s/image | textseg s/image | ratio | text: public s | textseg cold s | "
             "cached s | cold × | cached × | peak RSS public / textseg MB | max / mean abs diff | labels equal |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        lines.append(f"| {r['peer']} ({r['model']}) | {r['peer_per_image_s']:.2f} | {r['per_image_s']:.2f} | "
                     f"{r['ratio_per_image']:.2f} | {r['peer_text_s']:.1f} | {r['text_cold_s']:.1f} | "
                     f"{r['text_cached_s']:.3f} | {r['text_cold_speedup']:.1f} | {r['text_cached_speedup']:.0f} | "
                     f"{r['peer_rss_mb']:,.0f} / {r['rss_mb']:,.0f} | {r['scores_max_abs_diff']:.1e} / "
                     f"{r['scores_mean_abs_diff']:.1e} | {100 * r['labels_equal']:.3f} % |")
    return "\n".join(lines) + "\n"


__all__ = ["CLIP_FILE", "DINO_FILE", "PEER_MODELS", "compare_with_peers", "image_at_short_side", "peers_markdown",
           "run_peerbench", "time_textseg", "time_textseg_process", "write_random_releases"]
