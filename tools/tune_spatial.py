"""Choose the spatial reading's candidate margin and geometric weight for global-local (or region) referring
segmentation on development splits (never val): every sentence's appearance scores, proposals and anchor scores are
computed once, then every setting of the grid is scored from them. Prints mIoU per setting and the best.

    .venv/bin/python tools/tune_spatial.py --checkpoint runs/quickstart/stage2/final.pt --splits testA,testB
"""

from __future__ import annotations

import argparse
import itertools
import json

import numpy as np
import torch
from tqdm import tqdm

from textseg import Segmenter, create_model
from textseg.config import Protocol
from textseg.data.refcoco import RefDataset
from textseg.ris.geometry import ProposalGeometry, spatial_scores
from textseg.ris.referrer import Referrer
from textseg.ris.spatial import SpatialParser


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--root", default="workbench/openmoji/refer")
    ap.add_argument("--dataset", default="openmoji_ref")
    ap.add_argument("--splits", default="testA,testB")
    ap.add_argument("--method", default="global-local")
    ap.add_argument("--short-side", type=int, default=96)
    ap.add_argument("--margins", default="0.5,1,2,4,8")
    ap.add_argument("--weights", default="0.5,1,2,4,8")
    ap.add_argument("--appearance", choices=["sentence", "head"], default="sentence",
                    help="what the appearance score matches: the whole sentence or the target's noun phrase")
    args = ap.parse_args()
    seg = Segmenter(create_model(None, checkpoint=args.checkpoint), Protocol(name="ris", short_side=args.short_side,
                                                                           templates="single"), text_cache_dir=False)
    referrer = Referrer(seg, method=args.method)
    parser = SpatialParser("auto")
    cases = []
    for split in args.splits.split(","):
        data = RefDataset(args.root, args.dataset, "unc", split)
        for i in tqdm(range(len(data)), desc=split):
            sample = data[i]
            props, visual = referrer.proposals_and_features(sample["image"])
            if len(props) == 0:
                continue
            reading = parser.read(sample["sentence"])
            text = reading.head if args.appearance == "head" and reading.head else sample["sentence"]
            appearance = referrer.scores(visual, [text])[0].cpu().numpy()
            anchor = (referrer.scores(visual, [reading.anchor])[0].cpu().numpy()
                      if reading.relation and reading.anchor else None)
            gt = sample["mask"]
            inter = (props.masks & gt).sum((1, 2))
            union = (props.masks | gt).sum((1, 2))
            cases.append((appearance, reading, ProposalGeometry.from_masks(props.masks), anchor,
                          inter / np.maximum(union, 1)))
    results = {}
    base = float(np.mean([iou[int(a.argmax())] for a, _, _, _, iou in cases]))
    for margin, weight in itertools.product(map(float, args.margins.split(",")), map(float, args.weights.split(","))):
        ious = [iou[int(spatial_scores(a, r, g, anc, margin=margin, weight=weight)[0].argmax())]
                for a, r, g, anc, iou in cases]
        results[f"{margin},{weight}"] = round(100 * float(np.mean(ious)), 2)
    best = max(results, key=results.get)
    oracle = float(np.mean([iou.max() for *_, iou in cases]))
    print(json.dumps({"sentences": len(cases), "without_spatial": round(100 * base, 2),
                      "proposal_oracle": round(100 * oracle, 2), "best": best, "best_mIoU": results[best],
                      "grid": results}, indent=1))


if __name__ == "__main__":
    main()
