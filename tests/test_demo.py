"""`textseg demo`: the page's API (Starlette's test client) and the page itself in headless Chromium."""

from __future__ import annotations

import base64
import dataclasses
import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("starlette", reason="the demo extra is not installed: pip install 'textseg[demo]'")
pytest.importorskip("multipart", reason="the demo extra is not installed: pip install 'textseg[demo]'")

from starlette.testclient import TestClient  # noqa: E402

from textseg.assets import voc_sample_image  # noqa: E402
from textseg.cli import main  # noqa: E402
from textseg.demo import (MAX_CLASSES, RANDOM_WARNING, DemoService, create_app, find_workbench_checkpoint,  # noqa: E402
                          load_demo_model)
from textseg.artifacts import save_backbone_weights, save_checkpoint  # noqa: E402

EXAMPLE = voc_sample_image()
CLASSES = "aeroplane, person, car"


def _image(data_url: str) -> Image.Image:
    head, b64 = data_url.split(",", 1)
    assert head.startswith("data:image/")
    return Image.open(io.BytesIO(base64.b64decode(b64)))


@pytest.fixture(scope="module")
def demo():
    # a workbench model with random weights: the workbench protocol (short side 96) keeps every request fast
    return load_demo_model("labxy-small-workbench", pretrained=False)


@pytest.fixture(scope="module")
def client(demo):
    return TestClient(create_app(DemoService(demo)))


def test_info_names_the_model_and_warns_of_random_weights(client):
    info = client.get("/api/info").json()
    assert info["model"] == "labxy-small-workbench" and info["error"] is None
    assert any("meaningless" in w for w in info["warnings"])
    assert info["defaults"]["protocol"] == "workbench" and info["defaults"]["templates"] == "single"
    assert info["methods"] == ["global-local", "region"]  # no promptable segmenter given: no point method
    page = client.get("/")
    assert page.status_code == 200 and 'id="overlay"' in page.text
    assert client.get("/api/example").content == EXAMPLE.read_bytes()


def test_segment_example_gives_overlay_legend_and_shares(client):
    r = client.post("/api/segment", data={"example": "1", "classes": CLASSES, "rle": "1"})
    assert r.status_code == 200, r.text
    ans = r.json()
    w, h = Image.open(EXAMPLE).size
    assert _image(ans["overlay"]).size == (w, h)
    label_png = _image(ans["labels_png"])
    assert label_png.size == (w, h) and label_png.mode == "P"  # the page shows it: VOC colours, as the legend's
    assert [e["colour"] for e in ans["legend"]] == [
        "#" + bytes(label_png.getpalette()[3 * i: 3 * i + 3]).hex() for i in range(4)]
    labels = np.array(label_png)
    assert labels.shape == (h, w) and labels.max() <= 3
    names = [e["name"] for e in ans["legend"]]
    assert names == ["background", "aeroplane", "person", "car"]
    shares = np.array([e["share"] for e in ans["legend"]])
    assert shares.sum() == pytest.approx(1.0, abs=1e-9)
    # the shares are those of the label map sent back, label by label
    assert shares == pytest.approx(np.bincount(labels.ravel(), minlength=4) / labels.size)
    assert set(ans["rle"]) == {n for n, s in zip(names[1:], shares[1:]) if s > 0}
    from pycocotools import mask as mask_utils
    for name, rle in ans["rle"].items():
        area = mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()})
        assert area == (labels == names.index(name)).sum()
    assert ans["summary"]["shares"]["car"] == pytest.approx(shares[3], abs=1e-6)


def test_constant_background_score_and_no_background(client):
    # a score above every cosine makes all background; "none" gives every pixel a class
    r = client.post("/api/segment", data={"example": "1", "classes": CLASSES, "background": "score", "bg_score": "1"})
    assert r.status_code == 200, r.text
    assert r.json()["legend"][0]["share"] == 1.0
    r = client.post("/api/segment", data={"example": "1", "classes": CLASSES, "background": "none"})
    assert r.json()["legend"][0]["share"] == 0.0


@pytest.mark.parametrize("data, upload, message", [
    ({"classes": ""}, None, "the class list is empty"),
    ({"classes": ", ".join(f"c{i}" for i in range(MAX_CLASSES + 350))}, None, f"at most {MAX_CLASSES}"),
    ({"classes": "cat, Cat"}, None, "listed twice"),
    ({"classes": CLASSES, "background": "score"}, None, "needs a constant background score"),
    ({"classes": CLASSES, "background": "threshold", "bg_threshold": "2"}, None, "between 0 and 1"),
    ({"classes": CLASSES, "background": "sky"}, None, "background must be"),
    ({"classes": CLASSES}, ("notes.txt", b"not an image at all"), "cannot read 'notes.txt' (the upload)"),
    ({"classes": CLASSES}, None, "no image"),
])
def test_bad_input_is_a_readable_400(client, data, upload, message):
    form = dict(data)
    if upload is None and message != "no image":
        form["example"] = "1"
    files = {"image": (upload[0], upload[1], "application/octet-stream")} if upload else None
    r = client.post("/api/segment", data=form, files=files)
    assert r.status_code == 400 and message in r.json()["error"], r.text
    # the server still answers the next request
    assert client.post("/api/segment", data={"example": "1", "classes": CLASSES}).status_code == 200


def test_a_malformed_form_is_a_400_and_the_server_goes_on(client):
    two = [("image", ("a.png", b"x", "image/png")), ("image", ("b.png", b"y", "image/png"))]
    r = client.post("/api/segment", data={"classes": CLASSES}, files=two)
    assert r.status_code == 400 and "the form was refused" in r.json()["error"]
    r = client.post("/api/segment", content=b"--nonsense", headers={"content-type": "multipart/form-data"})
    assert r.status_code == 400 and "refused" in r.json()["error"]
    assert client.post("/api/segment", data={"example": "1", "classes": CLASSES}).status_code == 200


def test_huge_image_is_refused_from_its_header(client):
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")  # 400 MP, a few hundred kB
    r = client.post("/api/segment", data={"classes": CLASSES},
                    files={"image": ("huge.png", buf.getvalue(), "image/png")})
    assert r.status_code == 400
    assert "20000x20000" in r.json()["error"] and "above the limit" in r.json()["error"]


def test_refer_returns_a_mask_or_no_target(client):
    r = client.post("/api/refer", data={"example": "1", "sentence": "the plane", "method": "region"})
    assert r.status_code == 200, r.text
    ans = r.json()
    w, h = Image.open(EXAMPLE).size
    mask = np.array(_image(ans["mask_png"]))
    assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
    assert not ans["no_target"] and mask.any() and isinstance(ans["score"], float)
    assert ans["summary"]["mask_share"] == pytest.approx((mask > 0).mean())
    # a threshold above every score: no target, an empty mask
    r = client.post("/api/refer", data={"example": "1", "sentence": "the plane", "method": "region",
                                        "no_target_threshold": "10000"})
    assert r.json()["no_target"] and not np.array(_image(r.json()["mask_png"])).any()
    for form, message in [({"sentence": " "}, "the sentence is empty"),
                          ({"sentence": "x", "method": "points"}, "--promptable"),
                          ({"sentence": "x" * 501}, "at most 500")]:
        r = client.post("/api/refer", data={"example": "1", **form})
        assert r.status_code == 400 and message in r.json()["error"]


def _checkpoint(path: Path, name: str, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"w": torch.zeros(1)}, step=1, model_config={"name": name})
    os.utime(path, (mtime, mtime))
    return path


def test_find_workbench_checkpoint_takes_the_newest_workbench_model(tmp_path):
    runs = tmp_path / "runs"
    assert find_workbench_checkpoint(runs) is None  # no folder
    old = _checkpoint(runs / "a" / "stage2" / "final.pt", "labxy-small-workbench", 1000)
    new = _checkpoint(runs / "b" / "stage2" / "final.pt", "learned-small-workbench", 2000)
    _checkpoint(runs / "c" / "final.pt", "dino-s16-clip-b16", 3000)  # newer, but not a workbench model
    (runs / "grouping").mkdir()
    save_backbone_weights(runs / "grouping" / "final.pt", {"w": torch.zeros(1)}, name="vit", kwargs={}, step=1)
    (runs / "junk.pt").write_bytes(b"not a checkpoint")
    assert find_workbench_checkpoint(runs) == new
    new.unlink()
    assert find_workbench_checkpoint(runs) == old


def test_load_demo_model_uses_the_runs_checkpoint_then_says_so(tmp_path, demo):
    path = tmp_path / "runs" / "quickstart" / "stage2" / "final.pt"
    path.parent.mkdir(parents=True)
    save_checkpoint(path, demo.model.state_dict(), step=1700, model_config=dataclasses.asdict(demo.model.config))
    found = load_demo_model(runs=tmp_path / "runs")
    assert found.error is None and found.model is not None and str(path) in found.source
    assert any("newest workbench checkpoint" in w for w in found.warnings)
    assert RANDOM_WARNING not in found.warnings and found.protocol.name == "workbench"


def test_missing_weights_are_a_message_on_the_page(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTSEG_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("TEXTSEG_OFFLINE", "1")
    named = load_demo_model("dino-s16-clip-b16")
    assert named.model is None and str(tmp_path) in named.error  # says where to put the file
    assert "\n" not in named.error
    broken = load_demo_model(checkpoint=tmp_path / "missing.pt")
    assert broken.model is None and "does not exist" in broken.error
    client = TestClient(create_app(broken))
    info = client.get("/api/info").json()
    assert info["model"] is None and "does not exist" in info["error"]
    r = client.post("/api/segment", data={"example": "1", "classes": CLASSES})
    assert r.status_code == 400 and "no model is loaded" in r.json()["error"] and "missing.pt" in r.json()["error"]


def test_cli_rejects_bad_options_before_loading(capsys):
    assert main(["demo", "--port", "0"]) == 2
    assert "--port" in capsys.readouterr().err
    assert main(["demo", "--no-pretrained"]) == 2
    assert "--no-pretrained needs --model" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- headless Chromium
def _browser() -> str | None:
    return os.environ.get("TEXTSEG_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def server(demo):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(create_app(demo), log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    srv.should_exit = True
    thread.join(10)


def test_page_in_headless_chromium(server, tmp_path):
    browser_path = _browser()
    if browser_path is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium; or set TEXTSEG_CHROMIUM)")
    playwright = pytest.importorskip("playwright.sync_api",
                                     reason="playwright is not installed (pip install playwright)")
    w, h = Image.open(EXAMPLE).size
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(server)
            page.wait_for_function("document.getElementById('model-info').textContent.includes('labxy')")
            assert "meaningless" in page.inner_text("#warning")
            # classes: upload the VOC sample, type three classes, submit, wait for the overlay
            page.set_input_files("#image", str(EXAMPLE))
            page.fill("#classes", "aeroplane, person, car")
            page.click("#submit")
            page.wait_for_selector("#class-result:not(.hidden)")
            page.wait_for_function("document.getElementById('overlay').naturalWidth > 0")
            size = page.evaluate("[document.getElementById('overlay').naturalWidth, "
                                 "document.getElementById('overlay').naturalHeight]")
            assert size == [w, h]
            names = page.eval_on_selector_all("#legend tbody td.name", "tds => tds.map(t => t.textContent)")
            assert names == ["background", "aeroplane", "person", "car"]
            shares = page.eval_on_selector_all("#legend tbody td.share", "tds => tds.map(t => +t.dataset.share)")
            assert sum(shares) == pytest.approx(1.0, abs=0.01)
            # a sentence returns a mask
            page.check("#mode-sentence")
            page.fill("#sentence", "the airplane")
            page.select_option("#method", "region")
            page.click("#submit")
            page.wait_for_selector("#refer-result:not(.hidden)")
            page.wait_for_function("document.getElementById('refer-mask').naturalWidth > 0")
            assert page.evaluate("document.getElementById('refer-mask').naturalWidth") == w
            assert page.inner_text("#refer-text").startswith(("mask:", "no target"))
            # a non-image upload: an error message, and the page still answers the next request
            page.check("#mode-classes")
            page.set_input_files("#image", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                                   "buffer": b"not an image"}])
            page.click("#submit")
            page.wait_for_selector("#error:not(.hidden)")
            assert "cannot read 'notes.txt'" in page.inner_text("#error")
            assert page.is_hidden("#class-result")
            page.set_input_files("#image", str(EXAMPLE))
            page.click("#submit")
            page.wait_for_selector("#class-result:not(.hidden)")
            assert page.is_hidden("#error")
        finally:
            browser.close()


def test_point_method_is_offered_with_a_promptable_segmenter(tmp_path, demo):
    from textseg.ris.promptable import PromptableSegmenter, build_workbench_segmenter, save_workbench_segmenter

    small = {"img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "out_chans": 32,
             "decoder_depth": 1, "decoder_mlp_dim": 64, "decoder_heads": 2, "iou_head_hidden_dim": 32}
    torch.manual_seed(0)
    save_workbench_segmenter(build_workbench_segmenter(**small), tmp_path / "seg.pt", small)
    points = load_demo_model("labxy-small-workbench", pretrained=False, points=lambda: {
        "promptable": PromptableSegmenter.from_workbench(tmp_path / "seg.pt", device="cpu"), "generator": None,
        "n_positive": 1, "n_negative": 0})
    service = DemoService(points)
    assert service.methods() == ["global-local", "region", "points"]
    ans = service.refer({"sentence": "the plane", "method": "points"}, example=True)
    w, h = Image.open(EXAMPLE).size
    assert ans["size"] == [h, w] and np.array(_image(ans["mask_png"])).shape == (h, w)
    (point,) = ans["points"]  # the baseline: one positive point, inside the image
    assert point["label"] == 1 and 0 <= point["x"] < w and 0 <= point["y"] < h
    assert ans["no_target"] == (not np.array(_image(ans["mask_png"])).any())
    # a broken promptable file is a message on the page, not a crash
    (tmp_path / "bad.pt").write_bytes(b"junk")
    broken = load_demo_model("labxy-small-workbench", pretrained=False, points=lambda: {
        "promptable": PromptableSegmenter.from_workbench(tmp_path / "bad.pt", device="cpu")})
    assert broken.model is None and "bad.pt" in broken.error


def test_refer_answer_says_how_the_sentence_was_read(client):
    r = client.post("/api/refer", data={"example": "1", "sentence": "the plane on the left", "method": "region"})
    reading = r.json()["summary"]["reading"]
    assert reading["head"] == "plane" and reading["horizontal"] == "left" and reading["relation"] is None
