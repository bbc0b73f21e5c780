"""What the evaluation runners call: predictor types and the adapters that turn a Segmenter into predictors.

A *semantic predictor* is any callable ``(image HxWx3 uint8, class_names) -> HxW int labels`` in the dataset's
label space; a *RIS predictor* is any callable ``(image, sentence) -> RISOutput | bool mask | None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

import numpy as np

from textseg.config import Protocol


@dataclass
class RISOutput:
    """What a referring predictor returns: a boolean mask (None: no answer), an optional response map, how the
    sentence was read (spatial language, :mod:`textseg.ris.spatial`) and the (N, H, W) proposals the mask was
    chosen from (for the proposal oracle)."""

    mask: np.ndarray | None
    response: np.ndarray | None = None
    reading: dict | None = None
    proposals: np.ndarray | None = None


SemsegPredictor = Callable[[np.ndarray, Sequence[str]], np.ndarray]
RISPredictor = Callable[[np.ndarray, str], Union[RISOutput, np.ndarray, None]]


def as_ris_output(out: Any) -> RISOutput:
    """A RIS predictor's answer as a :class:`RISOutput` (None: no mask; an array: the mask)."""
    if out is None:
        return RISOutput(mask=None)
    if isinstance(out, RISOutput):
        return out
    if isinstance(out, np.ndarray):
        return RISOutput(mask=out)
    if hasattr(out, "mask"):  # a ReferResult: no mask when it found no target
        props = getattr(out, "proposals", None)
        return RISOutput(mask=None if getattr(out, "no_target", False) else out.mask,
                         response=getattr(out, "response", None), reading=getattr(out, "reading", None),
                         proposals=None if props is None else np.asarray(props))
    raise TypeError(f"a RIS predictor must return RISOutput, a mask array or None, got {type(out).__name__}")


class SegmenterSemsegPredictor:
    """Adapts :class:`textseg.segmenter.Segmenter` to a semantic predictor under an evaluation protocol.

    Args:
        segmenter: A ``Segmenter`` (anything with its ``predict(image, classes, protocol)``).
        protocol: The protocol, already resolved for the benchmark (:meth:`Protocol.for_benchmark`).
        has_background: Whether the dataset's label 0 is background. Then the segmenter is given
            ``class_names[1:]`` with the protocol's background rule and its labels are returned as they are
            (0 = background); otherwise it is asked for no background and its labels are shifted down by one.
    """

    def __init__(self, segmenter: Any, protocol: Protocol, has_background: bool) -> None:
        self.segmenter = segmenter
        self.has_background = has_background
        self.protocol = protocol if has_background else protocol.replace(
            background=None, background_classes=[], bg_score=None)

    def __call__(self, image: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
        names = list(class_names[1:] if self.has_background else class_names)
        labels = np.asarray(self.segmenter.predict(image, names, self.protocol).labels).astype(np.int64)
        return labels if self.has_background else labels - 1


RIS_METHODS = ("best-group", "global-local", "region", "points")


class SegmenterRISPredictor:
    """Adapts :class:`textseg.segmenter.Segmenter` to a referring predictor.

    Args:
        segmenter: A ``Segmenter``.
        protocol: the protocol of ``"best-group"`` (the segmenter's defaults without one).
        method: ``"best-group"`` (the k-means group that best matches the sentence),
            ``"global-local"`` or ``"region"`` (``Segmenter.refer`` over instance mask proposals; an image's
            proposals and visual features are computed once for all its sentences), or ``"points"`` (point
            prompts for a promptable segmenter; ``refer_options`` must hold ``promptable``).
        refer_options: ``Segmenter.refer`` options (``alpha``, ``beta``, ``mode``, ``no_target_threshold``, ...).
    """

    def __init__(self, segmenter: Any, protocol: Protocol | None = None, method: str = "best-group",
                 refer_options: dict[str, Any] | None = None) -> None:
        if method not in RIS_METHODS:
            from textseg.errors import UserError

            raise UserError(f"RIS method must be one of {', '.join(RIS_METHODS)}, got {method!r}")
        self.segmenter = segmenter
        self.protocol = protocol
        self.method = method
        self.refer_options = dict(refer_options or {})

    def __call__(self, image: np.ndarray, sentence: str) -> RISOutput:
        if self.method == "best-group":
            return as_ris_output(self.segmenter.refer(image, sentence, method="best-group", protocol=self.protocol))
        return as_ris_output(self.segmenter.refer(image, sentence, method=self.method, **self.refer_options))
