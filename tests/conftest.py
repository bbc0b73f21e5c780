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
