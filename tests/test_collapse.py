"""Region-collapse measures (textseg.eval.collapse) on a two-colour image the colour grouping splits exactly."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from textseg.eval.collapse import collapse_markdown, collapse_measures, size_bin_names


class TwoColourScenes:
    """An in-memory labelled set: a red left half labelled ``left`` over a blue right half labelled background."""

    class_names = ["background", "cat", "dog"]
    ignore_index = 255

    def __init__(self, left: int = 1) -> None:
        image = np.zeros((64, 64, 3), dtype=np.uint8)
        image[:, :32] = (220, 30, 30)
        image[:, 32:] = (30, 30, 220)
        label = np.zeros((64, 64), dtype=np.uint8)
        label[:, :32] = left
        label[:2] = 255  # void rows are not counted
        self.sample = {"image": image, "label": label, "id": "0"}

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> dict:
        return self.sample


@torch.no_grad()
def test_measures_of_two_regions(color_model):
    from textseg.segmenter import Segmenter

    seg = Segmenter(color_model.eval(), "workbench", text_cache_dir=False)
    data = TwoColourScenes()
    got = collapse_measures(seg, data)
    x = seg.pipeline.prepare(data.sample["image"])
    groups = color_model.group(x, pixel_size=(64, 64))
    out = color_model(x, groups.region_masks)
    r = F.normalize(out.regions[0], dim=-1)
    img = F.normalize(out.image[0], dim=-1)
    assert got["images"] == 2 and got["regions"] == 4
    assert got["pairwise"] == pytest.approx(float(r[0] @ r[1]), abs=1e-5)
    assert got["to_image"] == pytest.approx(float((r @ img).mean()), abs=1e-5)
    mass = color_model.region.self_attention_mass(x, groups.region_masks)[0]
    assert got["self_attention"] == pytest.approx(float(mass.mean()), abs=1e-5)
    # one object region per image (the red half, area 1/2): counted in the largest bin only
    bins = got["accuracy_by_size"]
    assert list(bins) == ["< 2 %", "2-5 %", "5-15 %", ">= 15 %"]
    assert [b["regions"] for b in bins.values()] == [0, 0, 0, 2]
    text = seg.text.encode_classes(["cat", "dog"], "single")
    red = int(groups.pixels[0, 32, 0])
    named = int((r[red] @ text.T.to(r.device)).argmax()) + 1
    assert bins[">= 15 %"]["accuracy"] == (100.0 if named == 1 else 0.0)
    other = collapse_measures(seg, TwoColourScenes(left=2), limit=1)  # the same regions, the other class
    assert other["images"] == 1 and other["accuracy"] == (100.0 if named == 2 else 0.0)
    table = collapse_markdown({"tiny": got})
    assert table.splitlines()[2].startswith(f"| tiny | {got['pairwise']:.3f} |") and "(2)" in table


def test_size_bin_names():
    assert size_bin_names((0.1, 0.5)) == ["< 10 %", "10-50 %", ">= 50 %"]


@torch.no_grad()
def test_pooling_has_no_attention_measure(color_model):
    from textseg.segmenter import Segmenter

    color_model.region.mode = "pool"
    try:
        got = collapse_measures(Segmenter(color_model.eval(), "workbench", text_cache_dir=False), TwoColourScenes())
    finally:
        color_model.region.mode = "tokens"
    assert got["self_attention"] is None and got["regions"] == 4
