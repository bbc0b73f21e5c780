"""textseg: open-vocabulary and referring segmentation learned from image-caption pairs."""

__version__ = "0.1.0"

from textseg.errors import MissingWeightsError, UserError  # noqa: E402

_LAZY = {
    "create_model": "textseg.factory", "list_models": "textseg.factory", "get_model_config": "textseg.factory",
    "Segmenter": "textseg.segmenter", "SegmentationResult": "textseg.labels", "ReferResult": "textseg.ris.result",
    "ReferringResult": "textseg.segmenter", "RegionPipeline": "textseg.pipeline",
    "Protocol": "textseg.config", "ModelConfig": "textseg.config", "load_protocol": "textseg.config",
    "Vocabulary": "textseg.vocab",
}


def __getattr__(name: str):
    # torch-heavy modules load on first use, so that `import textseg.data` stays cheap.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'textseg' has no attribute {name!r}")


__all__ = ["create_model", "list_models", "get_model_config", "Segmenter", "SegmentationResult", "ReferResult",
           "ReferringResult", "RegionPipeline", "Protocol", "ModelConfig", "load_protocol", "Vocabulary",
           "MissingWeightsError", "UserError"]
