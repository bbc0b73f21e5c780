"""Fault cases of the command line itself: commands, options and their values, before any real work starts."""

import pytest

from conftest import VOC_IMAGE
from faults import TINY, fault  # noqa: F401  (fixture)

CASES = {
    "no-command": ([], "required: COMMAND"),
    "unknown-command": (["segmnet"], "invalid choice: 'segmnet'"),
    "unknown-option": (["segment", str(VOC_IMAGE), "--classes", "cat", "--out", "o", "--colour"],
                       "unrecognized arguments: --colour"),
    "missing-required-option": (["segment", str(VOC_IMAGE), "--out", "o"], "--classes"),
    "int-option-given-text": (["segment", str(VOC_IMAGE), "--classes", "cat", "--out", "o", "--batch-size", "many"],
                              "--batch-size"),
    "float-option-given-text": (["segment", str(VOC_IMAGE), "--classes", "cat", "--out", "o", "--bg-threshold", "hi"],
                                "--bg-threshold"),
    "bench-memory-case": (["bench", "memory", "12x"], "WIDTHxHEIGHT:CLASSES"),
    "bench-memory-zero-classes": (["bench", "memory", "10x10:0"], "must be positive"),
    "bench-batch-sizes-zero": (["bench", "segment", "--batch-sizes", "0"], "--batch-sizes"),
    "ablate-missing-init": (["ablate", "--init", "/nonexistent/stage1.pt"], "/nonexistent/stage1.pt"),
    "workbench-negative-scenes": (["workbench", "build", "--out", "wb", "--scenes", "-3"], "-3"),
    "eval-unknown-subcommand": (["eval", "depth"], "invalid choice: 'depth'"),
}


@pytest.mark.parametrize("argv,fragment", CASES.values(), ids=CASES.keys())
def test_command_line_mistakes(fault, tmp_path, monkeypatch, argv, fragment):
    monkeypatch.chdir(tmp_path)  # relative outputs, if any were made, land in the test's folder
    fault.error(argv, fragment)
    assert not (tmp_path / "o").exists() and not (tmp_path / "wb").exists()


def test_help_is_not_an_error(fault, capsys):
    with pytest.raises(SystemExit) as stop:
        fault.run(["segment", "--help"])
    assert stop.value.code == 0 and "--max-pixels" in capsys.readouterr().out
    fault.ok()


@pytest.mark.parametrize("argv,fragment", [
    (["quickstart", "--minutes", "-1"], "--minutes must be positive"),
    (["quickstart", "--minutes", "nan"], "--minutes must be positive"),
    (["quickstart", "--stage1-steps", "-1"], "--stage1-steps must be 0 (no stage 1) or positive"),
    (["quickstart", "--stage2-steps", "-5"], "--stage2-steps must be positive"),
    (["quickstart", "--eval-limit", "0"], "--eval-limit must be positive"),
    (["ablate", "--steps", "0"], "--steps must be positive"),
], ids=["minutes-negative", "minutes-nan", "stage1-negative", "stage2-negative", "eval-limit-zero",
        "ablate-steps-zero"])
def test_quickstart_and_ablate_budgets(fault, tmp_path, argv, fragment):
    fault.error([*argv, "--out", tmp_path / "run", "--data", tmp_path / "wb"], fragment)
    assert not (tmp_path / "run").exists() and not (tmp_path / "wb").exists()  # refused before building anything
