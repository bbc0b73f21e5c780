"""Collapse measures of trained models' region embeddings on the workbench's development scenes (never val): one
image's regions' mean pairwise cosine, their cosine to the image embedding, a region token's attention on itself,
and per-region accuracy by region size (textseg.eval.collapse). Writes JSON and a Markdown table.

    .venv/bin/python tools/region_collapse.py pool=runs/quickstart/stage2/final.pt \
        tokens=runs/ablation/one_way_tokens/final.pt --out runs/collapse
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from textseg import Segmenter, create_model
from textseg.config import load_protocol
from textseg.data import VOCSegmentation
from textseg.eval.collapse import collapse_markdown, collapse_measures
from textseg.io import atomic_write_text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", metavar="NAME=CHECKPOINT")
    ap.add_argument("--dev", default="workbench/openmoji/dev-seed1", help="a VOC-format workbench set (its voc/)")
    ap.add_argument("--limit", type=int, help="only the first N scenes")
    ap.add_argument("--out", default="runs/collapse")
    args = ap.parse_args()
    data = VOCSegmentation(Path(args.dev) / "voc", split="val")
    protocol = load_protocol("workbench").for_benchmark("voc21")
    rows = {}
    for spec in args.models:
        name, sep, ckpt = spec.partition("=")
        if not sep:
            ap.error(f"give each model as NAME=CHECKPOINT, got {spec!r}")
        seg = Segmenter(create_model(None, checkpoint=ckpt).eval(), protocol, text_cache_dir=False)
        with torch.no_grad():
            rows[name] = collapse_measures(seg, data, limit=args.limit, progress=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "collapse.json", json.dumps(rows, indent=2))
    table = collapse_markdown(rows)
    atomic_write_text(out / "collapse.md", table)
    print(table)


if __name__ == "__main__":
    main()
