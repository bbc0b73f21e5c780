"""sclip-b16, naclip-b16 and proxyclip-b16 give the public code's outputs on the same weights.

The weights are random, real-size and in the released formats (OpenAI's CLIP state dict in fp16, DINO's ViT-B/8
state dict), made here from seed 0 by textseg's own code; ``tests/data/dense/refs.npz`` holds what SCLIP's, NACLIP's
and ProxyCLIP's own code (peerbench, their pinned commits) computed from the same files on the same image and class
file (``tools/make_dense_refs.py``): their ``seg_logits`` at every third pixel and their full prediction.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from textseg import Segmenter, create_model
from textseg.bench.peers import write_random_releases
from textseg.cli import main

DATA = Path(__file__).parent / "data" / "dense"
CLASSES = [["aeroplane"], ["person", "person in shirt", "person in jeans"], ["dog"]]
BACKGROUND = ["sky", "wall", "tree"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_random_releases(tmp_path_factory.mktemp("releases"), seed=0)


@pytest.fixture(scope="module")
def refs():
    return np.load(DATA / "refs.npz")


@pytest.fixture(scope="module")
def image():
    return np.array(Image.open(DATA / "voc336.png").convert("RGB"))


@pytest.fixture(scope="module")
def text_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("text")  # the three models share the CLIP weights: the text is encoded once


@pytest.mark.parametrize("peer", ["sclip", "naclip", "proxyclip"])
def test_scores_and_labels_equal_the_public_code(peer, weights, refs, image, text_cache):
    clip_file, dino_file = weights
    extra = {"backbone_pretrained": str(dino_file)} if peer == "proxyclip" else {}
    model = create_model(f"{peer}-b16", clip_pretrained=str(clip_file), **extra)
    res = Segmenter(model, text_cache_dir=text_cache).predict(image, CLASSES, background_classes=BACKGROUND,
                                                               return_scores=True)
    stride = int(refs["stride"])
    ours = res.scores[:, ::stride, ::stride]
    theirs = refs[f"{peer}_scores"]
    assert ours.shape == theirs.shape == (4, *np.ceil(np.array(image.shape[:2]) / stride).astype(int))
    diff = np.abs(ours - theirs)
    assert diff.max() <= 2e-3 and diff.mean() <= 1e-4, (diff.max(), diff.mean())
    pred = refs[f"{peer}_pred"]
    assert len(np.unique(pred)) >= 2  # the reference is not one flat label
    assert (res.labels == pred).mean() >= 0.99
    assert res.classes == ["background", "aeroplane", "person", "dog"]


def test_cli_takes_their_class_files_as_they_are(weights, refs, tmp_path, text_cache, monkeypatch):
    clip_file, _ = weights
    monkeypatch.setenv("TEXTSEG_CACHE_DIR", str(text_cache.parent))
    out = tmp_path / "out"
    rc = main(["segment", str(DATA / "voc336.png"), "--model", "naclip-b16", "--clip-pretrained", str(clip_file),
               "--classes", str(DATA / "classes_comma.txt"), "--out", str(out), "--device", "cpu",
               "--num-workers", "0", "--no-progress"])
    assert rc == 0
    labels = np.array(Image.open(out / "voc336_labels.png"))
    assert (labels == refs["naclip_pred"]).mean() >= 0.99
    summary = json.loads((out / "voc336.json").read_text())
    assert summary["classes"] == ["background", "aeroplane", "person", "dog"]
    assert (out / "voc336_overlay.png").is_file()
