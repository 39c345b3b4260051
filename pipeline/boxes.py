"""The step's box inputs: manifest boxes in pixels and the pointing game's pixel tolerance,
as shares of each image's own size."""

from __future__ import annotations

import numpy as np


def normalise_boxes(
    boxes: np.ndarray, orig_hw: np.ndarray, loaded: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list]:
    """Pixel boxes (B,4) + image sizes (B,2) -> ([0,1] boxes (B,4), valid (B,), warnings).

    Rows whose image did not load (loaded False) get neither a valid box nor a warning.
    """
    h = orig_hw[:, 0:1].astype(np.float64)
    w = orig_hw[:, 1:2].astype(np.float64)
    present = np.isfinite(boxes)
    complete = present.all(axis=1)
    x0, y0, x1, y1 = (boxes[:, i] for i in range(4))
    with np.errstate(invalid="ignore"):
        ordered = (x1 > x0) & (y1 > y0)
        inside = (x0 >= -1) & (y0 >= -1) & (x1 <= w[:, 0] + 1) & (y1 <= h[:, 0] + 1)
        scale = np.concatenate([w, h, w, h], axis=1)
        norm = np.clip(np.nan_to_num(boxes / np.maximum(scale, 1)), 0.0, 1.0).astype(np.float32)
    valid = complete & ordered & inside & loaded
    warnings: list[str | None] = []
    for i in range(len(boxes)):
        if not loaded[i]:
            warnings.append(None)
        elif present[i].any() and not complete[i]:
            warnings.append("incomplete box (needs x0, y0, x1, y1); box statistics left empty")
        elif complete[i] and not ordered[i]:
            warnings.append("box has x1<=x0 or y1<=y0; box statistics left empty")
        elif complete[i] and not inside[i]:
            warnings.append(
                f"box ({', '.join(f'{float(v):g}' for v in boxes[i])}) lies outside the "
                f"{int(w[i, 0])}x{int(h[i, 0])} image; "
                "box statistics left empty"
            )
        else:
            warnings.append(None)
    return norm, valid, warnings


def normalise_tolerance(tolerance: float, orig_hw: np.ndarray) -> np.ndarray:
    """The pointing game's tolerance in original-image pixels + image sizes (B,2) = (h,w) ->
    the tolerance as a share of each image's (width, height): (B,2) float32."""
    w_h = np.maximum(orig_hw[:, ::-1].astype(np.float64), 1.0)  # (B,2); 1 where nothing loaded
    return (tolerance / w_h).astype(np.float32)
