"""Tests of the benchmark reports (`textseg bench`): structure, stage accounting and output files, on the tiny model.

No timing thresholds: only that every stage is reported, that the stages add up to no more than the call they
were measured in, and that the hooks leave the Segmenter and the model as they were.
"""

import itertools
import json

import numpy as np
import pytest
import torch

from conftest import VOC_IMAGE
from textseg.bench import (SEGMENT_FRAMES, SEGMENT_GAPS, STAGES, StageTimeline, bench_segment,
                           bench_segment_cold_warm, bench_segment_stages, bench_train, instrument, segment_markdown,
                           train_markdown, write_report)
from textseg.cli import main
from textseg.io import load_image
from textseg.labels import CropPlan
from textseg.segmenter import Segmenter

MACHINE_FIELDS = ("cpu", "cpu_count", "torch_threads", "gpu")
VERSION_FIELDS = ("python", "torch", "textseg", "open_clip", "timm", "faiss")


def _check_header(report, kind):
    assert report["kind"] == kind and report["command"] and report["device"] == "cpu"
    assert all(k in report["machine"] for k in MACHINE_FIELDS)
    assert all(k in report["versions"] for k in VERSION_FIELDS)
    assert report["versions"]["torch"] and report["versions"]["textseg"]
    assert report["dtype"] == "float32"


def test_timeline_gives_exclusive_stage_times_that_add_up():
    ticks = itertools.count()  # every mark advances the clock by one second
    tl = StageTimeline(SEGMENT_FRAMES, SEGMENT_GAPS, clock=lambda: float(next(ticks)))
    grouper = tl.wrap("grouper", lambda: tl.wrap("backbone", lambda: None)())

    def call():
        tl.wrap("text", lambda: None)()
        tl.wrap("regions_batch", lambda: (grouper(), tl.wrap("region", lambda: None)()))()
        tl.wrap("finish", lambda: None)()

    _, stages, wall = tl.run("call", call)
    # marks: 0 start, 1 call, 2-3 text, 4 regions_batch, 5 grouper, 6-7 backbone, 8 grouper out, 9-10 region,
    # 11 regions_batch out, 12-13 finish, 14 call out, 15 end; the call's own time after the region pass and
    # after _finish is classification, the regions_batch's own time (4-5, 8-9, 10-11) preprocessing
    assert stages == {"other": 2.0, "text": 1.0, "preprocess": 3.0, "grouping": 2.0, "features": 1.0, "region": 1.0,
                      "classification": 2.0, "upsampling": 1.0}
    assert sum(stages.values()) == 13.0 and wall == 15.0


def test_instrument_keeps_results_and_restores_the_segmenter(tiny_model):
    seg = Segmenter(tiny_model, text_cache_dir=False, templates="single", short_side=48)
    image = load_image(VOC_IMAGE)
    plain = seg.predict_batch([image, image[::2]], ["cat", "dog"], window=32, stride=16)
    tl = StageTimeline(SEGMENT_FRAMES, SEGMENT_GAPS)
    label = CropPlan.label
    with instrument(seg, tl):
        assert CropPlan.label is not label and "to_device" in vars(seg.pipeline)
        timed, stages, wall = tl.run("call", lambda: seg.predict_batch([image, image[::2]], ["cat", "dog"],
                                                                       window=32, stride=16))
    for a, b in zip(plain, timed):
        np.testing.assert_array_equal(a.labels, b.labels)
    assert {"preprocess", "features", "grouping", "region", "classification", "upsampling"} <= set(stages)
    assert all(v >= 0 for v in stages.values()) and sum(stages.values()) <= wall
    assert not {"to_device", "regions_batch"} & set(vars(seg.pipeline))
    assert "encode_classes" not in vars(seg.text)
    assert CropPlan.label is label  # wrapped on the class while inside, the original after
    for module in (tiny_model.grouper, tiny_model.grouper.backbone, tiny_model.region):
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_segment_report_has_every_stage_and_adds_up(tiny_model, tmp_path):
    report = bench_segment_stages(tiny_model, image=VOC_IMAGE, batch_sizes=(1, 2), modes=("whole", "window"),
                                  window=32, stride=16, short_side=48, templates="single", repeats=1, warmup=0)
    _check_header(report, "segment")
    assert report["model"] == "tiny" and report["classes"] == 21
    assert report["text"]["prompts"] == 21 and min(report["text"][k] for k in
                                                     ("cold_s", "warm_disk_s", "warm_memory_s")) >= 0
    assert [(r["mode"], r["batch_size"]) for r in report["runs"]] == [("whole", 1), ("whole", 2), ("window", 1),
                                                                      ("window", 2)]
    for run in report["runs"]:
        stages = run["stages_ms_per_image"]
        assert set(stages) == set(STAGES) and all(v >= 0 for v in stages.values())
        check = run["check"]
        # the stages are exclusive times of one call: together with "other" they are that call, no more
        assert check["stage_sum_ms_per_image"] <= run["instrumented_ms_per_image"] * 1.001 + 1e-3
        assert check["stages_and_other_ms_per_image"] == pytest.approx(run["instrumented_ms_per_image"], rel=0.01,
                                                                       abs=0.01)
        # on the CPU the end-to-end runs are the instrumented runs themselves (the hooks do not synchronise)
        assert check["instrumented_over_end_to_end"] == pytest.approx(1.0, abs=1e-3)
        assert not check["hooks_synchronise"]
        assert run["images_per_s"] > 0 and run["peak_host_mb"] > 0 and run["peak_device_mb"] is None
        assert run["cpu_over_wall"] >= 0
        assert run["flops_per_image"] > 0 and run["flops_per_image_by_stage"]["features"] > 0
        assert run["flops_per_image_by_stage"]["region"] > 0
    assert [r["crops_per_image"] for r in report["runs"]] == [1, 1, 8, 8]  # 48 x 66: 2 rows x 4 columns of 32
    assert not [w for w in report["warnings"] if "out of order" in w]

    json_path, md_path = write_report(report, tmp_path / "out", "bench_segment", segment_markdown(report))
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(report))
    md = md_path.read_text()
    assert report["command"] in md and report["machine"]["cpu"] in md
    assert all(s in md for s in STAGES) and "| window | 2 |" in md and "open_clip" in md


def test_cli_bench_segment_writes_json_and_markdown_and_ignores_bf16_on_cpu(tmp_path, capsys, caplog):
    rc = main(["bench", "segment", "--model", "tiny", "--device", "cpu", "--amp", "bf16", "--short-side", "32",
               "--batch-sizes", "1", "--modes", "whole", "--repeats", "1", "--warmup", "0", "--templates", "single",
               "--no-flops", "--cache", "none", "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "bench_segment.json").read_text())
    _check_header(report, "segment")
    assert report["amp_requested"] == "bf16" and "ignored" in report["amp_note"]
    assert "ignored on cpu" in caplog.text
    assert "flops_per_image" not in report["runs"][0] and "processes" not in report
    md = (tmp_path / "bench_segment.md").read_text()
    assert md in capsys.readouterr().out and "| whole | 1 |" in md


def test_cli_bench_rejects_bad_numbers(capsys):
    for argv, option in ((["--batch-sizes", "0"], "--batch-sizes"), (["--repeats", "0"], "--repeats"),
                         (["--modes", "tiles"], "--modes")):
        assert main(["bench", "segment", "--model", "tiny", *argv]) == 2
        assert f"textseg: error: argument {option}:" in capsys.readouterr().err
    assert main(["bench", "segment", "--model", "tiny", "--window", "32"]) == 2
    assert "--window and --stride together" in capsys.readouterr().err


def test_warm_text_cache_in_a_fresh_process(tmp_path):
    kwargs = dict(image=str(VOC_IMAGE), model="tiny", pretrained=False, templates="single", repeats=1, short_side=32,
                  window=None, stride=None, device="cpu")
    cold = bench_segment(cache_dir=tmp_path / "cache", **kwargs)  # here: what each spawned process runs
    (warm,) = bench_segment_cold_warm("warm", tmp_path / "cache", **kwargs)  # one spawned process
    assert cold["prompts_encoded"] == 21 and warm["cache"] == "warm" and warm["prompts_encoded"] == 0
    assert cold["label_shape"] == warm["label_shape"] == [366, 500]


def test_train_report_compares_textseg_with_open_clip_step(tmp_path):
    report = bench_train("tiny", steps=1, warmup=0, batch_size=2, image_size=32, device="cpu")
    _check_header(report, "train")
    assert report["region_mode"] == "tokens" and report["batch_size"] == 2 and report["image_size"] == 32
    ts, oc = report["variants"]["textseg"], report["variants"]["open_clip"]
    assert set(ts["sections_ms"]) == {"tokens", "grouping", "forward", "backward", "optimizer"}
    assert set(oc["sections_ms"]) == {"tokens", "forward", "backward", "optimizer"}
    for v in (ts, oc):
        assert v["samples_per_s"] > 0 and all(x >= 0 for x in v["sections_ms"].values())
        assert sum(v["sections_ms"].values()) == pytest.approx(v["ms_per_step"], rel=0.01, abs=0.05)
    assert report["overhead"] == pytest.approx(ts["ms_per_step"] / oc["ms_per_step"] - 1, abs=1e-3)
    _, md_path = write_report(report, tmp_path, "bench_train", train_markdown(report))
    assert "open_clip image-text" in md_path.read_text() and "samples/s" in md_path.read_text()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_reports_device_memory_and_bf16_and_synchronised_stages():
    seg_report = bench_segment_stages("tiny", device="cuda", amp="bf16", batch_sizes=(2,), modes=("whole", "window"),
                                      window=32, stride=16, short_side=48, templates="single", repeats=1, warmup=1)
    assert seg_report["dtype"] == "bfloat16 autocast" and seg_report["amp_note"] is None
    assert seg_report["machine"]["gpu"]
    for run in seg_report["runs"]:
        assert run["check"]["hooks_synchronise"] and run["peak_device_mb"] > 0
        assert run["check"]["stage_sum_ms_per_image"] <= run["instrumented_ms_per_image"] * 1.001 + 1e-3
    train_report = bench_train("tiny", steps=1, warmup=1, batch_size=2, device="cuda")
    assert train_report["dtype"] == "bfloat16 autocast" and train_report["image_size"] == 224  # the CLIP's own size
    assert all(v["peak_device_mb"] > 0 for v in train_report["variants"].values())


def test_memory_bench_reports_each_fresh_process_peak(tmp_path):
    from textseg.bench import bench_segment_memory, memory_markdown, parse_memory_case

    assert parse_memory_case("640x48:3") == (640, 48, 3)
    report = bench_segment_memory([(640, 48, 3)], model="tiny", templates="single")
    (run,) = report["runs"]
    assert (run["width"], run["height"], run["classes"]) == (640, 48, 3)
    assert 100 < run["peak_rss_mb"] < 20_000  # the child's own peak: torch alone is over 100 MB
    assert "| 640x48 | 0.03 | 3 |" in memory_markdown(report)


def test_refer_bench_times_each_method_and_count():
    from textseg.bench import bench_refer, refer_markdown

    report = bench_refer("tiny", counts=(2, 5), short_side=64)
    assert [(r["method"], r["proposals"]) for r in report["runs"]] == [
        ("global-local", 2), ("global-local", 5), ("region", 2), ("region", 5)]
    assert all(r["seconds"] > 0 for r in report["runs"])
    md = refer_markdown(report)
    assert "| proposals | global-local (s) | region (s) |" in md and "\n| 5 | " in md


def test_training_step_seconds_times_the_configs_step_without_reading_init(tmp_path):
    from textseg.bench import training_step_seconds
    from textseg.train import load_train_config

    cfg = load_train_config("stage2_region", ["model=tiny", "data.batch_size=4", "data.image_size=48",
                                              f"init={tmp_path / 'not-made-yet.pt'}", "loss.noun_calibration=0.5"])
    seconds = training_step_seconds(cfg, steps=2, warmup=1)  # reading init would raise: the file does not exist
    assert 0 < seconds < 60
    assert not (tmp_path / "not-made-yet.pt").exists()
    with pytest.raises(ValueError):
        training_step_seconds(cfg, steps=0)


def test_optimizer_step_clips_steps_schedules_frees_and_caps_the_temperature():
    # the one update the training loop and the training benchmarks share (textseg.train.loop.optimizer_step)
    import math

    from textseg.train.loop import MAX_LOGIT_SCALE, optimizer_step

    p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    p.grad = torch.tensor([3.0, 4.0])  # norm 5: clipped to norm 1 -> (0.6, 0.8)
    opt = torch.optim.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    scale = torch.nn.Parameter(torch.tensor(math.log(2 * MAX_LOGIT_SCALE)))
    optimizer_step([p], opt, sched, 1.0, scale)
    torch.testing.assert_close(p.detach(), torch.tensor([2.4, 3.2]))
    assert p.grad is None and opt.param_groups[0]["lr"] == 0.5
    assert float(scale.detach()) == pytest.approx(math.log(MAX_LOGIT_SCALE))
    p.grad = torch.tensor([3.0, 4.0])
    optimizer_step([p], opt, sched, 0.0, scale)  # 0: no clipping; lr 0.5 -> (2.4 - 1.5, 3.2 - 2.0)
    torch.testing.assert_close(p.detach(), torch.tensor([0.9, 1.2]))
    assert opt.param_groups[0]["lr"] == 0.25


def test_refer_bench_spatial_overhead_compares_whole_calls():
    from textseg.bench import bench_refer, refer_markdown

    report = bench_refer("tiny", counts=(3,), methods=("region",), short_side=64, spatial=True)
    run = report["runs"][0]
    assert run["refer_seconds"] > 0 and run["refer_spatial_seconds"] > 0
    ratio = run["refer_spatial_seconds"] / run["refer_seconds"]  # (both rounded to 0.1 ms)
    assert 1 + run["spatial_overhead"] == pytest.approx(ratio, rel=0.02)
    assert "| region | 3 |" in refer_markdown(report)
