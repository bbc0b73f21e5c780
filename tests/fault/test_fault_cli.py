"""Fault cases of the command line itself: options and class lists (before any model is built)."""

from conftest import VOC_IMAGE
from faults import TINY, fault  # noqa: F401  (fixture)


def test_unknown_model_is_one_line(fault, tmp_path):
    fault.error(["segment", VOC_IMAGE, "--classes", "cat", "--out", tmp_path / "o", "--model", "nosuch"], "nosuch")
