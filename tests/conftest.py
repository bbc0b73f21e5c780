import os
import tempfile
from pathlib import Path

import pytest

# Tests never touch the network nor the user's caches.
os.environ["TEXTSEG_OFFLINE"] = "1"
os.environ.setdefault("TEXTSEG_CACHE_DIR", tempfile.mkdtemp(prefix="textseg-test-cache-"))
os.environ.setdefault("TEXTSEG_WEIGHTS_DIR", tempfile.mkdtemp(prefix="textseg-test-weights-"))

DATA = Path(__file__).parent / "data"
VOC_IMAGE = DATA / "voc2012" / "VOC2012" / "JPEGImages" / "2007_000033.jpg"


@pytest.fixture(scope="session")
def tiny_model():
    """The test-size model of the same code, random weights (built once per session)."""
    import torch

    import textseg

    torch.manual_seed(0)
    return textseg.create_model("tiny", pretrained=False)


@pytest.fixture(scope="session")
def color_model():
    """Tiny CLIP + Lab-colour grouping with k = 2: a two-colour image splits exactly into its two colours."""
    import textseg

    cfg = textseg.get_model_config("tiny", {"backbone": {"type": "color", "patch_size": 16},
                                            "grouping": {"num_groups": 2, "xy_weight": 0.0, "min_group_frac": 0.0,
                                                         "normalize": False}})
    return textseg.create_model(cfg, pretrained=False, seed=0)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Totals of the fault suite (tests/fault) by outcome class: clean errors, counted skips, correct outputs."""
    totals: dict[str, int] = {}
    failed = 0
    for key in ("passed", "failed"):
        for rep in terminalreporter.stats.get(key, []):
            if getattr(rep, "when", "call") != "call":
                continue
            kinds = [v for k, v in getattr(rep, "user_properties", []) if k == "fault"]
            if "fault/" not in rep.nodeid.replace("\\", "/"):
                continue
            if key == "failed":
                failed += 1
            else:
                kind = kinds[-1] if kinds else "unclassified"
                totals[kind] = totals.get(kind, 0) + 1
    if totals or failed:
        cases = sum(totals.values()) + failed
        terminalreporter.write_line(
            f"fault suite: {cases} cases: {totals.get('error', 0)} clean errors, {totals.get('skip', 0)} counted "
            f"skips, {totals.get('ok', 0)} correct outputs, {totals.get('unclassified', 0)} unclassified, "
            f"{failed} failed")
