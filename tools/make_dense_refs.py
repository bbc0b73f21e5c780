"""Make tests/data/dense/: the public code's outputs of SCLIP, NACLIP and ProxyCLIP (peerbench) on random weights
that textseg's own code makes from seed 0, for tests/test_dense_parity.py.

    cp -r ../shared/peerbench /tmp/peerbench
    .venv/bin/python tools/make_dense_refs.py --peerbench /tmp/peerbench

Writes voc336.png (the bundled VOC image, short side 336), the class files in both synonym formats and refs.npz:
per peer its seg_logits at every third pixel of both axes and its full prediction.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from textseg.assets import voc_sample_image
from textseg.bench.peers import run_peerbench, write_random_releases

STRIDE = 3
CLASS_LINES = [["sky", "wall", "tree"], ["aeroplane"], ["person", "person in shirt", "person in jeans"], ["dog"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peerbench", required=True, help="a writable copy of ../shared/peerbench")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests" / "data" / "dense"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    image = Image.open(voc_sample_image()).convert("RGB")
    w, h = image.size
    image.resize((round(w * 336 / min(w, h)), 336) if h <= w else (336, round(h * 336 / min(w, h))),
                 Image.BILINEAR).save(out / "voc336.png")
    (out / "classes_comma.txt").write_text("".join(", ".join(line) + "\n" for line in CLASS_LINES))
    (out / "classes_semicolon.txt").write_text("".join("; ".join(line) + "\n" for line in CLASS_LINES))
    refs = {}
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights"
        write_random_releases(weights, seed=0)
        for peer in ("sclip", "naclip", "proxyclip"):
            classes = out / ("classes_semicolon.txt" if peer == "proxyclip" else "classes_comma.txt")
            run_peerbench(args.peerbench, peer, image=out / "voc336.png", classes=classes, weights_dir=weights,
                          dump=Path(tmp) / "dump", repeats=1, warmup=0, threads=2)
            dump = np.load(Path(tmp) / "dump" / f"{peer}_voc336.npz")
            refs[f"{peer}_scores"] = dump["seg_logits"][:, ::STRIDE, ::STRIDE].astype(np.float32)
            refs[f"{peer}_pred"] = dump["pred"][0].astype(np.uint8)
    np.savez_compressed(out / "refs.npz", stride=STRIDE, **refs)
    print(f"wrote {out / 'refs.npz'}")


if __name__ == "__main__":
    main()
