"""The boxes of mask proposals that Global-Local CLIP crops: FreeSOLO's (the public code's), tight and square."""

from __future__ import annotations

import torch


def freesolo_boxes(masks: torch.Tensor) -> torch.Tensor:
    """FreeSOLO's mask boxes: centre of mass of each projection ± half the projection's extent.

    The width is the number of columns holding a mask pixel and the centre the mean of those column indices
    (likewise for rows), so a solid rectangle over columns a..b gets ``a - 0.5 .. b + 0.5`` (half-pixel edges)
    and a mask with empty columns between its parts gets a narrower box around the mean column.

    Args:
        masks: (N, H, W) bool (or {0, 1}).

    Returns:
        (N, 4) float32 ``(x0, y0, x1, y1)``.
    """
    m = masks.bool()
    cols = m.any(1).float()  # (N, W)
    rows = m.any(2).float()  # (N, H)
    w, h = cols.sum(1), rows.sum(1)
    xs = torch.arange(m.shape[2], dtype=torch.float32, device=m.device)
    ys = torch.arange(m.shape[1], dtype=torch.float32, device=m.device)
    cx = (cols * xs).sum(1) / w.clamp(min=1e-6)
    cy = (rows * ys).sum(1) / h.clamp(min=1e-6)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], 1)


def reference_crop_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, 4) int64 crop boxes of reference mode: :func:`freesolo_boxes` truncated toward zero (as ``.int()``),
    widened to at least one pixel."""
    b = freesolo_boxes(masks).to(torch.int64)
    b[:, 2] = torch.maximum(b[:, 2], b[:, 0] + 1)
    b[:, 3] = torch.maximum(b[:, 3], b[:, 1] + 1)
    return b


def tight_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, 4) int64 ``(x0, y0, x1, y1)``: first and one-past-last column / row holding a mask pixel."""
    m = masks.bool()
    cols, rows = m.any(1).to(torch.uint8), m.any(2).to(torch.uint8)
    x0 = cols.argmax(1)
    x1 = m.shape[2] - cols.flip(1).argmax(1)
    y0 = rows.argmax(1)
    y1 = m.shape[1] - rows.flip(1).argmax(1)
    return torch.stack([x0, y0, x1, y1], 1)


def square_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """Grow ``(x0, y0, x1, y1)`` boxes to squares of side max(width, height) centred on them (to ±½ pixel)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    s = torch.maximum(w, h)
    x0 = boxes[:, 0] - torch.div(s - w, 2, rounding_mode="floor")
    y0 = boxes[:, 1] - torch.div(s - h, 2, rounding_mode="floor")
    return torch.stack([x0, y0, x0 + s, y0 + s], 1)


__all__ = ["freesolo_boxes", "reference_crop_boxes", "square_boxes", "tight_boxes"]
