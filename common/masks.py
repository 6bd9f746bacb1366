"""Instance masks: a detector's small per-box masks -> full-image binary masks -> COCO RLE.

Mask heads predict a fixed-size (e.g. 28x28) probability map per detection, relative to its box.
Turning it into an image mask ("pasting") differs between upstream libraries, and the segm AP
depends on the exact rule, so each library's rule is its own named function here:

* :func:`paste_masks_detectron2` — detectron2's ``paste_masks_in_image`` (Mask R-CNN).

Everything is NumPy (no torch), vectorised per detection: the bilinear sampling is separable, so
one detection's pasted mask is two small matrix products instead of a per-pixel loop.
"""

from __future__ import annotations

import numpy as np

from common.errors import ToolError
from common.metrics import mask_to_rle


def _check_masks_boxes(masks: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, M, M) float masks and (N, 4) boxes as float arrays, or a ToolError naming the shapes."""
    masks = np.asarray(masks)
    boxes = np.asarray(boxes, dtype=np.float64)
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.ndim != 3 or boxes.ndim != 2 or boxes.shape[1] != 4 or len(masks) != len(boxes):
        raise ToolError(f"masks of shape {masks.shape} do not go with boxes of shape {boxes.shape}: "
                        "expected (N, M, M) masks and (N, 4) boxes")
    return masks.astype(np.float32, copy=False), boxes


def _grid_sample_weights(centres: np.ndarray, start: float, end: float, size: int) -> np.ndarray:
    """Bilinear weights (len(centres), size) of ``F.grid_sample(align_corners=False,
    padding_mode='zeros')`` along one axis, for pixel centres mapped onto a box [start, end).

    grid_sample maps the normalised coordinate g = (c - start) / (end - start) * 2 - 1 to the
    source index ((g + 1) * size - 1) / 2; neighbours outside [0, size) contribute zero, which is
    why a mask fades out half a mask cell beyond its box.
    """
    extent = end - start
    g = (centres - start) / extent * 2 - 1 if extent != 0 else np.full_like(centres, np.inf)
    src = ((g + 1) * size - 1) / 2
    low = np.floor(src)
    frac = src - low
    weights = np.zeros((len(centres), size), dtype=np.float64)
    rows = np.arange(len(centres))
    for index, weight in ((low, 1 - frac), (low + 1, frac)):
        inside = np.isfinite(index) & (index >= 0) & (index < size)
        weights[rows[inside], index[inside].astype(np.int64)] += weight[inside]
    return weights


def paste_masks_detectron2(masks: np.ndarray, boxes: np.ndarray, height: int, width: int,
                           threshold: float = 0.5) -> np.ndarray:
    """detectron2 0.5's ``paste_masks_in_image``: (N, M, M) probabilities + (N, 4) xyxy boxes in
    image pixels -> (N, height, width) bool masks.

    Same semantics as detectron2 on CPU: each mask is bilinearly sampled (``grid_sample``,
    ``align_corners=False``, zero outside the mask) at the image's pixel centres relative to its
    box, only inside the box's integer hull widened by one pixel (``skip_empty``), then
    ``>= threshold``. The sampling is separable, so each detection is ``Wy @ mask @ Wx.T`` (in
    float64; grid_sample sums in float32, so a value within rounding of the threshold can land on
    the other side: about one pixel in 10^7 on random masks, tests/maskrcnn/test_maskrcnn_masks.py).
    """
    masks, boxes = _check_masks_boxes(masks, boxes)
    out = np.zeros((len(masks), int(height), int(width)), dtype=bool)
    for k, (mask, (x0, y0, x1, y1)) in enumerate(zip(masks, boxes)):
        left, top = (max(int(np.floor(v)) - 1, 0) for v in (x0, y0))
        right = min(int(np.ceil(x1)) + 1, int(width))
        bottom = min(int(np.ceil(y1)) + 1, int(height))
        if right <= left or bottom <= top:
            continue
        wy = _grid_sample_weights(np.arange(top, bottom, dtype=np.float64) + 0.5, y0, y1, mask.shape[0])
        wx = _grid_sample_weights(np.arange(left, right, dtype=np.float64) + 0.5, x0, x1, mask.shape[1])
        out[k, top:bottom, left:right] = (wy @ mask.astype(np.float64) @ wx.T) >= threshold
    return out


def masks_to_rle(binary: np.ndarray) -> list[dict]:
    """(N, H, W) binary masks -> one compressed COCO RLE dict per mask (JSON-safe ``counts``)."""
    binary = np.asarray(binary)
    if binary.ndim != 3:
        raise ToolError(f"masks_to_rle takes (N, H, W) masks, got shape {binary.shape}")
    return [mask_to_rle(m) for m in binary]


def _pil_bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) weights of PIL's bilinear resize along one axis (Pillow's precompute_coeffs).

    Output pixel x samples around centre (x + 0.5) * in/out with a triangle filter whose support
    widens by in/out when shrinking (PIL antialiases), each row normalised to sum 1.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    centres = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    xmin = np.clip(np.trunc(centres - filterscale + 0.5), 0, None).astype(np.int64)
    xmax = np.minimum(np.trunc(centres + filterscale + 0.5).astype(np.int64), in_size)
    taps = np.arange(in_size, dtype=np.float64)[None, :]
    weights = np.clip(1.0 - np.abs((taps - centres[:, None] + 0.5) / filterscale), 0.0, None)
    inside = (taps >= xmin[:, None]) & (taps < xmax[:, None])
    weights = np.where(inside, weights, 0.0)
    totals = weights.sum(axis=1, keepdims=True)
    return np.divide(weights, totals, out=np.zeros_like(weights), where=totals != 0)


def paste_masks_expanded(masks: np.ndarray, boxes: np.ndarray, height: int, width: int,
                         threshold: float = 0.5, padding: int = 1) -> np.ndarray:
    """maskrcnn_benchmark's ``Masker`` (RetinaMask): (N, M, M) probabilities + (N, 4) xyxy boxes in
    image pixels -> (N, height, width) bool masks.

    Each mask gets a zero border of ``padding`` cells (28 -> 30) and its box is scaled about its
    centre by the same factor (30/28), so the mask's own cells still cover the box. The expanded
    box is made integer by truncation (``astype(int32)``), the padded mask is resized with PIL's
    bilinear filter to the inclusive size (x2 - x1 + 1) x (y2 - y1 + 1), thresholded with ``>``
    and pasted at the integer box (inclusive x2/y2), cut to the image. The expansion and the
    integer boxes are computed for all detections at once; the separable resize is two small
    matrix products per detection, in PIL's order (horizontal pass, float32, then vertical).
    """
    masks, boxes = _check_masks_boxes(masks, boxes)
    n, size = len(masks), masks.shape[-1]
    padded = np.zeros((n, size + 2 * padding, size + 2 * padding), dtype=np.float32)
    padded[:, padding:padding + size, padding:padding + size] = masks
    scale = (size + 2 * padding) / size
    half = (boxes[:, 2:] - boxes[:, :2]) * 0.5 * scale
    centre = (boxes[:, 2:] + boxes[:, :2]) * 0.5
    expanded = np.concatenate([centre - half, centre + half], axis=1).astype(np.int32).astype(np.int64)
    sizes = np.maximum(expanded[:, 2:] - expanded[:, :2] + 1, 1)  # (w, h)
    out = np.zeros((n, int(height), int(width)), dtype=bool)
    for k in range(n):
        (x0, y0, x1, y1), (w, h) = expanded[k], sizes[k]
        left, top = max(x0, 0), max(y0, 0)
        right, bottom = min(x1 + 1, int(width)), min(y1 + 1, int(height))
        if right <= left or bottom <= top:
            continue
        wx = _pil_bilinear_weights(padded.shape[2], int(w))[left - x0:right - x0]
        wy = _pil_bilinear_weights(padded.shape[1], int(h))[top - y0:bottom - y0]
        horizontal = (padded[k].astype(np.float64) @ wx.T).astype(np.float32)
        resized = (wy @ horizontal.astype(np.float64)).astype(np.float32)
        out[k, top:bottom, left:right] = resized > threshold
    return out
