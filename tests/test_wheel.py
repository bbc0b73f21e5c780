"""The package as a user gets it: build the wheel, install it into a folder, run it from an unrelated folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import VOC_IMAGE

REPO = Path(__file__).resolve().parents[1]

CHECKS = """
import json, sys
from pathlib import Path
import textseg
from textseg.assets import demo_page, voc_sample_image
from textseg.config import config_path, list_configs, load_protocol
from textseg.train import load_train_config
assert Path(textseg.__file__).resolve().is_relative_to(Path(sys.argv[1]).resolve()), textseg.__file__
protocols = {p: load_protocol(p).short_side for p in list_configs("protocols")}
stages = {s: load_train_config(s).model for s in list_configs("train")}
variants = {v: load_train_config("stage2_region", (), config_path("ablations", v)).loss.mode
            for v in list_configs("ablations")}
models = {m: textseg.get_model_config(m).clip.arch for m in textseg.list_models()}
small = textseg.create_model("labxy-small-workbench", pretrained=False)
selfsup = list_configs("selfsup")
print(json.dumps({"protocols": protocols, "stages": stages, "variants": variants, "models": models,
                  "selfsup": selfsup, "sample": voc_sample_image().is_file(), "small_patch": small.patch_size,
                  "demo_page": 'id="overlay"' in demo_page()}))
"""


def test_installed_wheel_works_from_any_folder(tmp_path):
    dist, site, elsewhere = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(REPO)], check=True,
                   capture_output=True)
    (wheel,) = dist.glob("textseg-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], check=True,
                   capture_output=True)
    (entry_points,) = site.glob("textseg-*.dist-info/entry_points.txt")
    assert "textseg = textseg.cli:main" in entry_points.read_text()
    env = {**os.environ, "PYTHONPATH": str(site)}

    def run(*args: str) -> str:
        res = subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-2000:]
        return res.stdout

    assert "tiny" in run("-m", "textseg.cli", "models")
    run("-m", "textseg.cli", "segment", str(VOC_IMAGE), "--model", "tiny", "--no-pretrained", "--classes", "a,b",
        "--templates", "single", "--no-text-cache", "--short-side", "64", "--out", "out")
    assert sorted(p.name for p in (elsewhere / "out").iterdir()) == [
        "2007_000033.json", "2007_000033_labels.png", "2007_000033_overlay.png"]
    found = json.loads(run("-c", CHECKS, str(site)).strip().splitlines()[-1])
    assert found["protocols"] == {"groupvit": 448, "sclip": 336, "workbench": 96, "workbench-generic": 96,
                                  "sclip-voc21": 336, "naclip-voc21": 336, "proxyclip-voc21": 336}
    assert found["models"]["naclip-b16"] == "ViT-B-16" and found["models"]["proxyclip-b16"] == "ViT-B-16"
    assert found["selfsup"] == ["workbench"] and found["models"]["learned-small-workbench"] == "textseg-small-vit12-96"
    assert found["stages"] == {"stage1_image_text": "labxy-small-workbench", "stage2_region": "labxy-small-workbench"}
    shipped = sorted(f.stem for f in (Path(__file__).parents[1] / "textseg" / "configs" / "ablations").glob("*.yaml"))
    assert found["variants"]["two_way_pool"] == "two_way" and sorted(found["variants"]) == shipped  # all in the wheel
    assert len(shipped) == 9
    assert found["variants"]["one_way_pool_max"] == "one_way"
    assert found["models"]["tiny"] == "textseg-tiny-vit16" and found["models"]["dino-s16-clip-b16"] == "ViT-B-16"
    assert found["sample"] and found["small_patch"] == 12 and found["demo_page"]
