"""The GPU check (`tools/gpu_check.sh`, `tools/gpu_check_summary.py`) on the CPU: the commands its dry run prints
and the summary it writes from hand-made result files (numbers and ratios computed by hand)."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_check.sh"
MODELS = ("dino-s16-clip-b16", "sclip-b16", "naclip-b16", "proxyclip-b16")
# the peers' VOC-21 input for the models compared with them
INPUTS = ("", "--short-side 336 --window 224 --stride 112 ", "--short-side 336 --modes whole ",
          "--short-side 336 --window 336 --stride 112 ")
TRAIN_MODELS = ("labxy-small-workbench", "dino-s16-clip-b16")
H100 = "NVIDIA H100 80GB HBM3"


def _load_summary():
    spec = importlib.util.spec_from_file_location("gpu_check_summary", ROOT / "tools" / "gpu_check_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


summary = _load_summary()


@pytest.fixture
def checkout(tmp_path):
    """A checkout holding the two GPU check scripts (the real ones, copied), so .peerbench/ and .whl/ can be
    made there without touching this repository."""
    repo = tmp_path / "repo"
    (repo / "tools").mkdir(parents=True)
    for name in ("gpu_check.sh", "gpu_check_summary.py"):
        shutil.copy(ROOT / "tools" / name, repo / "tools" / name)
    return repo


def run_check(repo: Path, *args: str, python: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "PYTHONPATH")}
    if python:
        env["PYTHON"] = python
    return subprocess.run(["bash", str(repo / "tools" / "gpu_check.sh"), *args], capture_output=True, text=True,
                          env=env, cwd=repo.parent, timeout=120)


def dry_run(repo: Path, out: Path, *args: str) -> list[str]:
    res = run_check(repo, "--dry-run", "--out", str(out), *args)
    assert res.returncode == 0, res.stderr
    return res.stdout.splitlines()


# ------------------------------------------------------------------------------------------------- gpu_check.sh
def test_dry_run_prints_each_command_and_runs_nothing(checkout, tmp_path):
    out = tmp_path / "out"
    lines = dry_run(checkout, out)
    assert lines[0] == f"export PYTHONPATH={checkout} PYTHONUNBUFFERED=1 TEXTSEG_OFFLINE=1 HF_HUB_OFFLINE=1"
    assert f"nvidia-smi -L > {out}/device.txt" in lines
    assert any(line.startswith("python3 -c 'import sys, torch; ok = torch.cuda.is_available()") for line in lines)
    assert "python3 -m pytest -q -p no:cacheprovider -m cuda tests" in lines
    segment = [line for line in lines if " bench segment " in line]
    assert segment == [f"python3 -m textseg.cli bench segment --device cuda --amp bf16 --batch-sizes 1,32 {i}"
                       f"--repeats 5 --warmup 2 --model {m} --out {out}/bench_segment_{m}"
                       for m, i in zip(MODELS, INPUTS)]
    train = [line for line in lines if " bench train " in line]
    assert train == [f"python3 -m textseg.cli bench train --device cuda --amp bf16 --steps 10 --warmup 2 "
                     f"--model {m} --out {out}/bench_train_{m}" for m in TRAIN_MODELS]
    assert lines[-1] == f"python3 tools/gpu_check_summary.py {out}"
    assert not any("run.py" in line or "pip install" in line for line in lines)  # no .peerbench/, no .whl/
    assert not out.exists()


def test_dry_run_runs_the_peers_only_when_peerbench_is_there_and_not_skipped(checkout, tmp_path):
    out = tmp_path / "out"
    peers = f"python3 .peerbench/run.py --device cuda --peer all --repeats 5 --warmup 2 > {out}/peers.jsonl"
    assert peers not in dry_run(checkout, out)
    (checkout / ".peerbench").mkdir()
    (checkout / ".peerbench" / "run.py").write_text("")
    lines = dry_run(checkout, out)
    assert peers in lines and lines.index(peers) == len(lines) - 2  # the last step, before the summary
    assert not any("run.py" in line for line in dry_run(checkout, out, "--skip-peers"))


def test_quick_shrinks_the_repeats_and_skip_train_drops_training(checkout, tmp_path):
    (checkout / ".peerbench").mkdir()
    (checkout / ".peerbench" / "run.py").write_text("")
    out = tmp_path / "o"
    lines = dry_run(checkout, out, "--quick")
    segment = [line for line in lines if " bench segment " in line]
    assert len(segment) == 4 and all("--repeats 1 --warmup 1 --cache none --model" in line for line in segment)
    train = [line for line in lines if " bench train " in line]
    assert len(train) == 2 and all("--steps 3 --warmup 1 --model" in line for line in train)
    assert f"python3 .peerbench/run.py --device cuda --peer all --repeats 2 --warmup 1 > {out}/peers.jsonl" in lines
    lines = dry_run(checkout, out, "--skip-train", "--quick")
    assert not any(" bench train " in line for line in lines)
    assert len([line for line in lines if " bench segment " in line]) == 4


def test_wheels_are_installed_first_and_put_on_the_path(checkout, tmp_path):
    (checkout / ".whl").mkdir()
    assert not any("pip install" in line for line in dry_run(checkout, tmp_path / "o"))  # an empty .whl/
    for name in ("b-1.0-py3-none-any.whl", "a-2.0-py3-none-any.whl"):
        (checkout / ".whl" / name).write_text("")
    lines = dry_run(checkout, tmp_path / "o")
    assert lines[0] == ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
                        "--target /tmp/site .whl/a-2.0-py3-none-any.whl .whl/b-1.0-py3-none-any.whl")
    assert lines[1].startswith(f"export PYTHONPATH=/tmp/site:{checkout} ")


def test_an_odd_folder_name_is_quoted_as_the_shell_reads_it(checkout, tmp_path):
    out = tmp_path / "my results" / "it's"
    lines = dry_run(checkout, out)
    quoted = str(out).replace("'", "'\\''")
    assert lines[-1] == f"python3 tools/gpu_check_summary.py '{quoted}'"


@pytest.mark.parametrize("args, message", [(["--fast"], "unknown option '--fast'"), (["--out"], "--out needs a folder"),
                                           (["--out", "--quick"], "--out needs a folder")])
def test_a_wrong_option_is_one_line_and_a_nonzero_exit(checkout, args, message):
    res = run_check(checkout, *args, "--dry-run")
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.splitlines() == [f"gpu_check.sh: {message} (see: bash tools/gpu_check.sh --help)"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the stop on a machine without CUDA")
def test_without_cuda_it_stops_with_a_message_and_a_summary(checkout, tmp_path):
    out, export = tmp_path / "out", tmp_path / "export"
    res = run_check(checkout, "--out", str(out), "--export", str(export), python=sys.executable)
    assert res.returncode == 1
    assert "torch sees no CUDA device" in res.stderr and "run this on the GPU machine" in res.stderr
    (line,) = (out / "steps.tsv").read_text().splitlines()
    assert line.split("\t")[:2] == ["cuda", "1"]
    text = (out / "summary.md").read_text()
    assert "| cuda | FAIL | 1 |" in text and "no CUDA device" in text  # the log's end
    assert not (out / "logs" / "pytest_cuda.log").exists()
    assert (export / "gpu_check_summary.md").read_text() == text
    with tarfile.open(export / "gpu_check.tar.gz") as tar:
        assert {"out/summary.md", "out/steps.tsv", "out/logs/cuda.log"} <= set(tar.getnames())


# ------------------------------------------------------------------------------------------ gpu_check_summary.py
def _segment_report(model: str, short_side: int, window: tuple[int, int],
                    runs: list[tuple[str, int, float, float]]) -> dict:
    """A bench_segment.json with the fields the summary reads: (mode, batch, ms/image, peak device MB) per run."""
    return {"kind": "segment", "model": model, "short_side": short_side, "runs": [
        {"mode": mode, "batch_size": b, "crops_per_image": 2 if mode == "window" else 1,
         "window": window[0] if mode == "window" else None, "stride": window[1] if mode == "window" else None,
         "ms_per_image": ms, "images_per_s": round(1000 / ms, 3), "peak_device_mb": mb, "peak_host_mb": 2100}
        for mode, b, ms, mb in runs]}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.fixture
def results(tmp_path):
    """A finished check: sclip-b16 and proxyclip-b16 timed, naclip-b16 failed (its folder made, no report), two
    peers timed and one failed, one training report and one training step stopped before making its folder."""
    d = tmp_path / "gpu"
    _write(d / "steps.tsv", "cuda\t0\t1.5\npytest_cuda\t0\t30.1\nsegment_sclip-b16\t0\t40.2\n"
                            "segment_naclip-b16\t2\t3.0\nsegment_proxyclip-b16\t0\t51.0\n"
                            "train_labxy-small-workbench\t124\t180.0\n")
    _write(d / "logs" / "pytest_cuda.log", "..\n===== 2 passed, 1062 deselected in 30.10s =====\n")
    _write(d / "logs" / "segment_naclip-b16.log", "loading\ntextseg: error: unknown model 'naclip-b16'\n")
    _write(d / "device.txt", f"GPU 0: {H100} (UUID: GPU-1)\n")
    _write(d / "commit.txt", "abc1234\n")
    _write(d / "bench_segment_sclip-b16" / "bench_segment.json", json.dumps(_segment_report(
        "sclip-b16", 336, (224, 112),
        [("whole", 1, 20.0, 1234.4), ("whole", 32, 1.25, 9000.0), ("window", 1, 36.0, 1300.0)])))
    _write(d / "bench_segment_proxyclip-b16" / "bench_segment.json", json.dumps(_segment_report(
        "proxyclip-b16", 448, (448, 224), [("whole", 1, 30.0, 2000.0)])))
    (d / "bench_segment_naclip-b16").mkdir()  # the step failed before writing its report
    _write(d / "bench_train_dino-s16-clip-b16" / "bench_train.json", json.dumps({
        "kind": "train", "model": "dino-s16-clip-b16", "batch_size": 64, "image_size": 224, "overhead": 0.25,
        "variants": {"open_clip": {"samples_per_s": 800.0, "ms_per_step": 80.0, "peak_device_mb": 5000.0},
                     "textseg": {"samples_per_s": 640.0, "ms_per_step": 100.0, "peak_device_mb": 6000.0}}}))
    peers = [{"peer": "sclip", "per_image_s": 0.08, "model_s": 0.05, "text_embed_s": 2.5, "cuda_peak_alloc_mb": 1500.0,
              "device_name": H100, "input_hw": [336, 459]},
             {"peer": "proxyclip", "per_image_s": 0.12, "model_s": 0.1, "text_embed_s": 3.25,
              "cuda_peak_alloc_mb": 2500.0, "device_name": H100, "input_hw": [336, 459]},
             {"peer": "naclip", "error": "child exited 1", "device": "cuda"}]
    _write(d / "peers.jsonl", "".join(json.dumps(p) + "\n" for p in peers))
    return d


def test_summary_tables_hold_the_hand_made_figures(results):
    text = summary.render_summary(results, now=dt.datetime(2027, 1, 2, 3, 4, tzinfo=dt.timezone.utc))
    lines = text.splitlines()
    assert lines[0] == "# textseg GPU check"
    assert "- date: 2027-01-02 03:04 UTC" in lines and f"- device: GPU 0: {H100} (UUID: GPU-1)" in lines
    assert "- commit: abc1234" in lines
    # steps
    assert "| cuda | PASS | 0 | 1.5 |" in lines and "| segment_naclip-b16 | FAIL | 2 | 3.0 |" in lines
    assert "| train_labxy-small-workbench | FAIL | 124 | 180.0 |" in lines
    assert "4 of 6 steps passed." in lines and "pytest: 2 passed, 1062 deselected in 30.10s" in lines
    # segmentation: model / batch / mode / crops / ms per image / images per s / peak device MB / peak host MB
    assert "| sclip-b16 | 1 | whole | 1 | 20.00 | 50.0 | 1,234 | 2,100 |" in lines
    assert "| sclip-b16 | 32 | whole | 1 | 1.25 | 800.0 | 9,000 | 2,100 |" in lines
    assert "| sclip-b16 | 1 | window | 2 | 36.00 | 27.8 | 1,300 | 2,100 |" in lines  # 1000 / 36 = 27.78
    assert "| naclip-b16 | – | not run | – | – | – | – | – |" in lines
    # training
    assert "| dino-s16-clip-b16 | open_clip | 64 | 224 | 800.0 | 80.0 | 5,000 | – |" in lines
    assert "| dino-s16-clip-b16 | textseg | 64 | 224 | 640.0 | 100.0 | 6,000 | +25% |" in lines
    assert "| labxy-small-workbench | not run | – | – | – | – | – | – |" in lines  # a step, no folder
    # peers: per_image_s and model_s in ms
    assert f"| sclip | 80.0 | 50.0 | 2.50 | 1,500 | 336×459 | {H100} |" in lines
    assert f"| proxyclip | 120.0 | 100.0 | 3.25 | 2,500 | 336×459 | {H100} |" in lines
    assert "| naclip | error: child exited 1 | – | – | – | – | – |" in lines
    # ratios at batch 1: 20 / 80 = 0.25 and 20 / 50 = 0.40; 36 / 80 = 0.45 and 36 / 50 = 0.72; 30 / 120 = 0.25
    # and 30 / 100 = 0.30; naclip-b16 has no report, the batch-32 row has no peer figure
    ratio_lines = [line for line in lines if line.startswith(("| sclip-b16 | whole | 20", "| sclip-b16 | window | 36",
                                                              "| proxyclip-b16 | whole | 30", "| naclip-b16 | whole"))]
    assert ratio_lines == [  # in the order of the report folders' names; SCLIP slides 224/112 windows at 336
        "| proxyclip-b16 | whole | 30.00 | proxyclip | 120.0 | 100.0 | 0.25 | 0.30 | short side 448, whole image "
        "| 336×459 | no |",
        "| sclip-b16 | whole | 20.00 | sclip | 80.0 | 50.0 | 0.25 | 0.40 | short side 336, whole image "
        "| 336×459 | no |",
        "| sclip-b16 | window | 36.00 | sclip | 80.0 | 50.0 | 0.45 | 0.72 | short side 336, windows 224/112 "
        "| 336×459 | yes |"]
    # the failing step's log, and nothing unreadable
    assert "### segment_naclip-b16 (`logs/segment_naclip-b16.log`)" in lines
    heading = lines.index("### train_labxy-small-workbench (`logs/train_labxy-small-workbench.log`)")
    assert lines[heading + 2] == "(no log)"
    assert "textseg: error: unknown model 'naclip-b16'" in lines
    assert "## Unreadable files" not in text


def test_ratio_rows_pair_each_model_with_its_own_peer_at_batch_one():
    segment = [{"model": "naclip-b16", "batch": 1, "mode": "whole", "ms_per_image": 10.0, "status": "ok",
                "short_side": 336, "window": None, "stride": None},
               {"model": "naclip-b16", "batch": 8, "mode": "whole", "ms_per_image": 2.0, "status": "ok"},
               {"model": "dino-s16-clip-b16", "batch": 1, "mode": "whole", "ms_per_image": 5.0, "status": "ok"},
               {"model": "sclip-b16", "batch": 1, "mode": "whole", "ms_per_image": 7.0, "status": "ok"}]
    peers = [{"peer": "naclip", "per_image_s": 0.04}, {"peer": "sclip", "per_image_s": 0.0},
             {"peer": "proxyclip", "per_image_s": 0.5}]
    (row,) = summary.ratio_rows(segment, peers)  # sclip's zero time and dino-s16's missing peer give no row
    assert (row["model"], row["peer"], row["mode"]) == ("naclip-b16", "naclip", "whole")
    assert row["peer_ms"] == pytest.approx(40.0) and row["ratio"] == pytest.approx(0.25)
    assert row["peer_model_ms"] is None and row["model_ratio"] is None  # no model_s
    assert row["textseg_input"] == "short side 336, whole image" and row["peer_input"] == "–"
    assert row["same_input"]  # NACLIP segments the whole image at short side 336


def test_missing_inputs_show_as_not_run(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    assert summary.main([str(d)]) == 0
    text = (d / "summary.md").read_text(encoding="utf-8")
    assert "not run (no steps.tsv)" in text and "not run (no peers.jsonl)" in text
    assert text.count("\nnot run\n") == 2  # segmentation and training
    assert "not run (needs a textseg model and its peer at batch 1" in text
    assert "- device: unknown (no device.txt)" in text and "- commit: unknown" in text
    assert not [p.name for p in d.iterdir() if p.name != "summary.md"]  # no temporary file left


def test_malformed_files_are_named_as_unreadable(results):
    _write(results / "bench_segment_proxyclip-b16" / "bench_segment.json", '{"runs": [')
    _write(results / "bench_segment_odd" / "bench_segment.json", '{"model": "odd", "runs": [{"mode": "whole"}]}')
    _write(results / "bench_train_x" / "bench_train.json", "[1, 2]")
    with (results / "steps.tsv").open("a") as f:
        f.write("half a line\n")
    with (results / "peers.jsonl").open("a") as f:
        f.write('{oops\n[1]\n{"peer": ["sclip"]}\n')
    text = summary.render_summary(results)
    unreadable = text.split("## Unreadable files\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(unreadable) == 7
    assert unreadable[0] == f"- `{results}/steps.tsv` line 7 is unreadable: 'half a line'"
    assert unreadable[1] == (f"- `{results}/bench_segment_odd/bench_segment.json` is unreadable: no field "
                             "'batch_size' where a segment report has one")
    assert unreadable[2].startswith(f"- `{results}/bench_segment_proxyclip-b16/bench_segment.json` is unreadable: "
                                    "JSONDecodeError")
    assert unreadable[3].startswith(f"- `{results}/bench_train_x/bench_train.json` is unreadable: not a training "
                                    "report (AttributeError")
    assert unreadable[4].startswith(f"- `{results}/peers.jsonl` line 4 is unreadable")
    assert unreadable[5] == f"- `{results}/peers.jsonl` line 5 is unreadable: not a peer's JSON object"
    assert unreadable[6] == f"- `{results}/peers.jsonl` line 6 is unreadable: not a peer's JSON object"
    lines = text.splitlines()
    assert "| proxyclip-b16 | – | unreadable | – | – | – | – | – |" in lines
    assert "| odd | – | unreadable | – | – | – | – | – |" in lines
    assert "| x | unreadable | – | – | – | – | – | – |" in lines
    # what could be read is still there, proxyclip-b16's ratio is gone with its report
    assert "| sclip-b16 | 1 | whole | 1 | 20.00 | 50.0 | 1,234 | 2,100 |" in lines
    assert "| cuda | PASS | 0 | 1.5 |" in lines and "4 of 6 steps passed." in lines
    assert not any(line.startswith("| proxyclip-b16 | whole | 30") for line in lines)


def test_summary_main_refuses_a_missing_folder(tmp_path, capsys):
    assert summary.main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"gpu_check_summary.py: {tmp_path / 'nope'} is not a folder"


def test_summary_reads_the_report_textseg_writes(tmp_path, tiny_model):
    from textseg.bench import bench_segment_stages, segment_markdown, write_report

    seg = bench_segment_stages(tiny_model, device="cpu", batch_sizes=(1,), modes=("whole",), short_side=48,
                               templates="single", repeats=1, warmup=0, flops=False)
    write_report(seg, tmp_path / "bench_segment_tiny", "bench_segment", segment_markdown(seg))
    problems = []
    (row,) = summary.segment_rows(tmp_path, problems)
    run = seg["runs"][0]
    assert (row["model"], row["batch"], row["mode"], row["status"]) == ("tiny", 1, "whole", "ok")
    assert (row["ms_per_image"], row["images_per_s"], row["peak_host_mb"]) == (
        run["ms_per_image"], run["images_per_s"], run["peak_host_mb"])
    assert (row["short_side"], row["window"], row["crops_per_image"]) == (48, None, 1) and problems == []
