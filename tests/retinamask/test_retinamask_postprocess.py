"""Host side of the recipe: NMS with the legacy +1 pixel convention, mask pasting, COCO results."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from common.errors import ToolError
from common.manifest import ManifestEntry
from common.masks import paste_masks_expanded
from tools.retinamask import tool


def masker_reference(mask: np.ndarray, box, height: int, width: int) -> np.ndarray:
    """maskrcnn_benchmark's paste_mask_in_image, restated: pad 28 -> 30, expand the box by 30/28
    about its centre, int32 box, PIL bilinear resize to (x2 - x1 + 1, y2 - y1 + 1), > 0.5, paste."""
    padded = np.zeros((30, 30), dtype=np.float32)
    padded[1:-1, 1:-1] = mask
    scale = 30 / 28
    x0, y0, x1, y1 = box
    half_w, half_h = (x1 - x0) * 0.5 * scale, (y1 - y0) * 0.5 * scale
    cx, cy = (x1 + x0) * 0.5, (y1 + y0) * 0.5
    b = np.array([cx - half_w, cy - half_h, cx + half_w, cy + half_h]).astype(np.int32)
    w, h = max(b[2] - b[0] + 1, 1), max(b[3] - b[1] + 1, 1)
    resized = np.array(Image.fromarray(padded).resize((int(w), int(h)), resample=Image.BILINEAR)) > 0.5
    out = np.zeros((height, width), dtype=bool)
    left, top, right, bottom = max(b[0], 0), max(b[1], 0), min(b[2] + 1, width), min(b[3] + 1, height)
    if right > left and bottom > top:
        out[top:bottom, left:right] = resized[top - b[1]:bottom - b[1], left - b[0]:right - b[0]]
    return out


def test_paste_masks_expanded_equals_maskrcnn_benchmark_masker():
    rng = np.random.default_rng(0)
    height, width = 180, 260
    masks = rng.random((60, 28, 28)).astype(np.float32)
    corners = np.stack([rng.uniform(-40, width, 60), rng.uniform(-40, height, 60)], axis=1)
    sides = rng.uniform(0.5, 220, (60, 2))  # tiny boxes (PIL then shrinks with antialiasing) to huge
    boxes = np.concatenate([corners, corners + sides], axis=1)
    got = paste_masks_expanded(masks, boxes, height, width)
    assert got.shape == (60, height, width) and got.dtype == bool
    for k in range(60):
        np.testing.assert_array_equal(got[k], masker_reference(masks[k], boxes[k], height, width))
    assert got.any(axis=(1, 2)).sum() > 30  # most boxes land in the image


def test_nms_is_class_aware_with_inclusive_pixels():
    boxes = np.array([[0, 0, 9, 9], [0, 0, 9, 5], [0, 0, 9, 9], [20, 20, 29, 29], [0, 0, 9, 6]], dtype=np.float64)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = np.array([1, 1, 2, 1, 1])
    # box 1 vs box 0: 10x6 / 10x10 = 0.6 > 0.4 (without +1: 9x5 / 9x9 = 0.56); box 4 vs 0: 70/100 = 0.7
    assert tool.nms_plus_one(boxes, scores, labels, 0.4, 100).tolist() == [0, 2, 3]
    # exactly at the threshold survives (the recipe drops only IoU > threshold): 10x4 / 10x10 = 0.4
    edge = np.array([[0, 0, 9, 9], [0, 0, 9, 3]], dtype=np.float64)
    assert tool.nms_plus_one(edge, np.array([0.9, 0.8]), np.array([1, 1]), 0.4, 100).tolist() == [0, 1]
    assert tool.nms_plus_one(boxes, scores, labels, 0.4, 2).tolist() == [0, 2]


def _outputs(k: int = 1000):
    boxes = np.zeros((k, 4), np.float32)
    labels = np.ones(k, np.int32)
    scores = np.zeros(k, np.float32)
    masks = np.zeros((k, 1, 28, 28), np.float32)
    return boxes, labels, scores, masks


def test_postprocess_scales_clips_pastes_and_maps_labels():
    boxes, labels, scores, masks = _outputs()
    boxes[:3] = [[100, 50, 300, 250], [1000, 900, 1344, 1344], [100, 50, 300, 250]]
    labels[:3] = [1, 80, 1]
    scores[:3] = [0.9, 0.8, 0.7]  # the third repeats the first: suppressed by NMS
    masks[:3] = 1.0
    entry = ManifestEntry(stem="x", source="x.jpg", file="x.bin", orig_size=(672, 500), scale=2.0,
                          pad=(0, 0, 0, 344), image_id=7)
    dets = tool.postprocess([boxes, labels, scores, masks], entry, "ascend")
    assert [d["category_id"] for d in dets] == [1, 90]  # label 1 -> person (1), 80 -> toothbrush (90)
    assert dets[0]["bbox"] == pytest.approx([50, 25, 100, 100])
    assert dets[1]["bbox"] == pytest.approx([500, 450, 172, 50])  # clipped to the 672x500 image
    full = mask_utils.decode(dets[0]["segmentation"])
    assert full.shape == (500, 672)
    ys, xs = np.nonzero(full)
    # the mask covers its box (the 30/28 expansion only adds the zero border around the 28 cells)
    assert abs(xs.min() - 50) <= 1 and abs(xs.max() - 150) <= 1 and abs(ys.min() - 25) <= 1 and abs(ys.max() - 125) <= 1


def test_postprocess_keeps_at_most_100():
    boxes, labels, scores, masks = _outputs()
    rng = np.random.default_rng(1)
    corners = rng.uniform(0, 1200, (1000, 2))
    boxes[:] = np.concatenate([corners, corners + 20], axis=1)
    scores[:] = rng.uniform(0.01, 1.0, 1000)
    labels[:] = rng.integers(1, 81, 1000)
    entry = ManifestEntry(stem="x", source="x.jpg", file="x.bin", orig_size=(1344, 1344), scale=1.0,
                          pad=(0, 0, 0, 0), image_id=1)
    dets = tool.postprocess([boxes, labels, scores, masks], entry, "onnx")
    assert len(dets) == 100
    assert [d["score"] for d in dets] == sorted((d["score"] for d in dets), reverse=True)
    assert dets[0]["score"] == pytest.approx(float(scores.max()))


def test_postprocess_refuses_foreign_outputs():
    boxes, labels, scores, masks = _outputs()
    entry = ManifestEntry(stem="x", source="x.jpg", file="x.bin", orig_size=(10, 10), scale=1.0,
                          pad=(0, 0, 0, 0), image_id=1)
    with pytest.raises(ToolError, match="4 outputs"):
        tool.postprocess([boxes, labels], entry, "ascend")
    with pytest.raises(ToolError, match="output masks holds"):
        tool.postprocess([boxes, labels, scores, masks[:, :, :14]], entry, "ascend")
