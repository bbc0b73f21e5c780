"""textseg: open-vocabulary and referring segmentation learned from image-caption pairs."""

__version__ = "0.1.0"

from textseg.errors import MissingWeightsError, UserError  # noqa: E402
from textseg.factory import create_model, get_model_config, list_models  # noqa: E402


def __getattr__(name: str):
    # Heavy modules load on first use so that `import textseg` stays cheap.
    if name in ("Segmenter", "SegmentationResult", "ReferringResult"):
        from textseg import segmenter

        return getattr(segmenter, name)
    raise AttributeError(f"module 'textseg' has no attribute {name!r}")


__all__ = ["create_model", "list_models", "get_model_config", "Segmenter", "SegmentationResult",
           "ReferringResult", "MissingWeightsError", "UserError"]
