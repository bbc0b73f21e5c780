"""Score a workbench model (the quickstart's) on the workbench val set with each dense mode of its CLIP, with and
without the group vote, beside its own region labelling, all under the workbench protocol without background
calibration, smoothing or PAMR of region labelling (so every row is scored the same way). Writes OUT/rows.json
and OUT/rows.md.

    .venv/bin/python tools/eval_dense_workbench.py --checkpoint runs/quickstart/stage2/final.pt \\
        --data workbench/openmoji --out runs/eval/dense-workbench
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from textseg.factory import create_model
from textseg.io import atomic_write_text
from textseg.workbench.quickstart import evaluate_workbench

# Every row without the workbench protocol's smoothing and PAMR of region labelling (the dense modes label pixels
# and refuse smoothing; their PAMR row gives NACLIP's own), so that the rows differ only in the labelling.
PLAIN = {"smooth_sigma": 0.0, "pamr_steps": 0}
# (row name, dense mode or None, protocol fields changed)
ROWS = [
    ("region tokens (the model's own labelling)", None, PLAIN),
    ("SCLIP mode", "sclip", PLAIN),
    ("NACLIP mode", "naclip", PLAIN),
    ("NACLIP mode + PAMR (10 steps, dilations 8, 16)", "naclip",
     {**PLAIN, "pamr_steps": 10, "pamr_dilations": [8, 16]}),
    ("ProxyCLIP mode (proxy: the grouping features)", "proxyclip", PLAIN),
    ("SCLIP mode + group vote", "sclip", {**PLAIN, "group_vote": True}),
    ("NACLIP mode + group vote", "naclip", {**PLAIN, "group_vote": True}),
    ("ProxyCLIP mode + group vote", "proxyclip", {**PLAIN, "group_vote": True}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", default="workbench/openmoji")
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, help="only the first N val scenes")
    args = ap.parse_args()
    out = Path(args.out)
    rows = []
    for i, (name, mode, fields) in enumerate(ROWS):
        model = create_model(None, checkpoint=args.checkpoint,
                             overrides={"dense": {"mode": mode}} if mode else None)
        res = evaluate_workbench(model, Path(args.data), out / f"row{i}", overlays=0, limit=args.limit,
                                 progress=False, diagnose=False, protocol_fields=fields)
        rows.append({"row": name, "dense_mode": mode, "protocol_fields": fields,
                     "mIoU": round(res["metrics"]["mIoU"], 2)})
        print(f"{name}: mIoU {rows[-1]['mIoU']:.2f}", flush=True)
    md = ["| quickstart model labelled by | workbench val mIoU |", "|---|---:|"]
    md += [f"| {r['row']} | {r['mIoU']:.2f} |" for r in rows]
    atomic_write_text(out / "rows.json", json.dumps({"checkpoint": args.checkpoint, "rows": rows}, indent=2))
    atomic_write_text(out / "rows.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
