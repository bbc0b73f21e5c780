"""Choose the spatial reading's candidate margin and geometric weight for global-local (or region) referring
segmentation on development splits (never val): every sentence's appearance scores, proposals and anchor scores are
computed once, then every setting of the grid is scored from them. Prints mIoU per setting and the best, and the
proposal oracle.

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
    ap.add_argument("--support-weight", type=float, default=2.0, help="the proposals' support prior (0: off)")
    ap.add_argument("--area-weight", type=float, default=-0.5, help="the proposals' area prior (0: off)")
    ap.add_argument("--margin", type=float, default=2.0, help="the margin reported in full (the default's)")
    ap.add_argument("--weight", type=float, default=2.0, help="the weight reported in full (the default's)")
    ap.add_argument("--margins", default="0.5,1,2,4,8")
    ap.add_argument("--weights", default="0.5,1,2,4,8")
    ap.add_argument("--appearance", choices=["sentence", "head"], default="head",
                    help="what the appearance score matches: the whole sentence or the target's noun phrase")
    args = ap.parse_args()
    seg = Segmenter(create_model(None, checkpoint=args.checkpoint), Protocol(name="ris", short_side=args.short_side,
                                                                           templates="single"), text_cache_dir=False)
    referrer = Referrer(seg, method=args.method, support_weight=args.support_weight,
                        area_weight=args.area_weight)
    parser = SpatialParser("auto")
    cases, counts, plains = [], [], []
    for split in args.splits.split(","):
        data = RefDataset(args.root, args.dataset, "unc", split)
        for i in tqdm(range(len(data)), desc=split):
            sample = data[i]
            props, visual = referrer.proposals_and_features(sample["image"])
            if len(props) == 0:
                continue
            reading = parser.read(sample["sentence"])
            prior = referrer.prior(props)
            plain = referrer.scores(visual, [sample["sentence"]])[0].cpu().numpy() + prior
            appearance = plain  # as Referrer: the noun phrase's appearance only when the reading has spatial terms
            if args.appearance == "head" and reading.has_spatial and reading.head:
                appearance = referrer.scores(visual, [reading.head])[0].cpu().numpy() + prior
            anchor = (referrer.scores(visual, [reading.anchor])[0].cpu().numpy() + prior
                      if reading.relation and reading.anchor else None)
            gt = sample["mask"]
            inter = (props.masks & gt).sum((1, 2))
            union = (props.masks | gt).sum((1, 2))
            cases.append((appearance, reading, ProposalGeometry.from_masks(props.masks), anchor,
                          inter / np.maximum(union, 1)))
            counts.append((inter, union))
            plains.append(plain)
    results = {}
    base = float(np.mean([c[4][int(p.argmax())] for c, p in zip(cases, plains)]))
    for margin, weight in itertools.product(map(float, args.margins.split(",")), map(float, args.weights.split(","))):
        ious = [iou[int(spatial_scores(a, r, g, anc, margin=margin, weight=weight)[0].argmax())]
                for a, r, g, anc, iou in cases]
        results[f"{margin},{weight}"] = round(100 * float(np.mean(ious)), 2)
    best = max(results, key=results.get)
    oracle = float(np.mean([iou.max() for *_, iou in cases]))

    def measures(spatial: bool) -> dict[str, float]:
        picks = [int((spatial_scores(a, r, g, anc, margin=args.margin, weight=args.weight)[0] if spatial else p)
                     .argmax()) for (a, r, g, anc, _), p in zip(cases, plains)]
        ious = np.array([c[4][k] for c, k in zip(cases, picks)])
        inter = sum(int(i[k]) for (i, _), k in zip(counts, picks))
        union = sum(int(u[k]) for (_, u), k in zip(counts, picks))
        return {"oIoU": round(100 * inter / max(union, 1), 2), "mIoU": round(100 * float(ious.mean()), 2),
                "Prec@0.5": round(100 * float((ious >= 0.5).mean()), 2)}

    print(json.dumps({"sentences": len(cases), "without_spatial": round(100 * base, 2),
                      "at_the_defaults": {"margin": args.margin, "weight": args.weight,
                                          "without_spatial": measures(False), "with_spatial": measures(True)},
                      "proposal_oracle": round(100 * oracle, 2), "best": best, "best_mIoU": results[best],
                      "grid": results}, indent=1))


if __name__ == "__main__":
    main()
