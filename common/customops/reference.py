"""NumPy references of the Ascend custom operators: the one definition of what BatchMultiClassNMS and
RoiExtractor compute, shared by the PyTorch forward (torch_export) and the ONNX Runtime kernels
(ort_kernels), so the model, its exported graph run on CPU and the tests agree by construction.

Facts taken from Huawei's TBE kernels (canndev ``ops/built-in/tbe/impl/``
``batch_multi_class_non_max_suppression.py`` and ``roi_extractor.py``), mmdet 2.x
``SingleRoIExtractor``, torchvision ``roi_align`` and the CANN "supported ONNX operators" pages;
where the NPU differs from the reference, the function docstring says how.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from common.errors import ToolError

NMS_OP = "BatchMultiClassNMS"
ROI_OP = "RoiExtractor"
ASCEND_OPS = (NMS_OP, ROI_OP)
ONNX_FLOAT16 = 10  # onnx.TensorProto.FLOAT16 (kept literal so this module imports without onnx)
ONNX_FLOAT = 1  # onnx.TensorProto.FLOAT
#: RoiExtractor attributes the Ascend op documents as optional, with the defaults of its TBE kernel
ROI_DEFAULTS: dict[str, Any] = {
    "finest_scale": 56, "roi_scale_factor": 0.0, "spatial_scale": [0.25, 0.125, 0.0625, 0.03125],
    "pooled_height": 7, "pooled_width": 7, "sample_num": 0, "pool_mode": "avg", "aligned": 1,
}
NMS_ATTRS = ("score_threshold", "iou_threshold", "max_size_per_class", "max_total_size")
#: number of FPN levels the CPU kernel is registered for (onnxruntime-extensions needs a fixed arity)
ROI_LEVELS = 4



def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box with many, torchvision's formula (area without +1; 0/0 counts as no overlap)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return iou_one_to_many_unguarded(box, boxes)


def iou_one_to_many_unguarded(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """:func:`iou_one_to_many` for a caller that holds ``np.errstate(divide="ignore", invalid="ignore")``
    around its whole loop: entering errstate costs about 13 us, more than the IoU of a few boxes."""
    # np.maximum(x, 0), not np.clip: the same values, without clip's per-call overhead (NMS calls this often)
    iw = np.maximum(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0)
    ih = np.maximum(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0)
    inter = iw * ih
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)


def nms_single_class(boxes: np.ndarray, scores: np.ndarray, *, iou_threshold: float,
                     limit: int) -> np.ndarray:
    """Greedy NMS: indices of kept boxes in descending score order, at most ``limit``.

    A box is suppressed when its IoU with a kept box is strictly greater than ``iou_threshold``
    (the Ascend kernel compares ``inter > t/(1+t) * (area_a + area_b)``, the same test). Equal
    scores keep input order (stable sort); the NPU's order for ties is unspecified.
    """
    order = np.argsort(-scores, kind="stable")
    boxes = boxes[order]
    alive = np.ones(len(order), dtype=bool)
    keep: list[int] = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(len(order)):
            if not alive[i]:
                continue
            keep.append(i)
            if len(keep) >= limit:
                break
            rest = slice(i + 1, None)
            alive[rest] &= ~(iou_one_to_many_unguarded(boxes[i], boxes[rest]) > iou_threshold)
    return order[np.asarray(keep, dtype=np.int64)]


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ToolError(f"{NMS_OP} attribute {name}={value!r} must be a positive integer: fix the export")
    return int(value)


def batch_multiclass_nms(boxes: np.ndarray, scores: np.ndarray, *, score_threshold: float,
                         iou_threshold: float, max_size_per_class: int,
                         max_total_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reference of Ascend ``BatchMultiClassNMS``: per-image, per-class NMS, then a global top-k.

    ``boxes`` is (B, N, C, 4) or (B, N, 1, 4) (one box shared by all classes), x1, y1, x2, y2;
    ``scores`` is (B, N, C). Returns ``nmsed_boxes`` (B, T, 4), ``nmsed_scores`` (B, T),
    ``nmsed_classes`` (B, T) as float32 0-based class indices, and ``nmsed_num`` (B,) int32, with
    T = ``max_total_size``; rows are sorted by score, descending, and rows past ``nmsed_num`` are 0.

    Semantics, from the TBE kernel (``filter_score_compute`` / ``do_nms_compute``): a candidate
    survives only if ``score > score_threshold`` (strictly: the kernel keeps ``score - thr`` clamped
    to [0, 2^-24] and rescaled, so ``score == thr`` is dropped) - the NPU applies that filter to the
    final sorted list, which selects the same boxes as filtering first because greedy NMS and the
    top-k work in descending score order; suppression is ``IoU > iou_threshold``.
    Known NPU differences: it computes in float16, sorts only the top ~4080 candidates per class
    before NMS, limits max_size_per_class / max_total_size to [1, 400] (older kernels) and fills the
    class column of padding rows with leftover class ids; here padding rows are all zeros.
    """
    boxes = np.asarray(boxes)
    scores = np.asarray(scores)
    if boxes.ndim != 4 or boxes.shape[-1] != 4 or scores.ndim != 3:
        raise ToolError(f"{NMS_OP} wants boxes (B,N,C,4) and scores (B,N,C), got boxes {list(boxes.shape)} "
                        f"and scores {list(scores.shape)}: fix the graph feeding it")
    b, n, c = scores.shape
    if boxes.shape[:2] != (b, n) or boxes.shape[2] not in (1, c):
        raise ToolError(f"{NMS_OP} boxes {list(boxes.shape)} do not match scores {list(scores.shape)} "
                        f"(need (B,N,C,4) or (B,N,1,4)): fix the graph feeding it")
    per_class = _check_positive_int("max_size_per_class", max_size_per_class)
    total = _check_positive_int("max_total_size", max_total_size)
    boxes = boxes.astype(np.float32, copy=False)
    scores = scores.astype(np.float32, copy=False)

    out_boxes = np.zeros((b, total, 4), np.float32)
    out_scores = np.zeros((b, total), np.float32)
    out_classes = np.zeros((b, total), np.float32)
    out_num = np.zeros((b,), np.int32)
    for img in range(b):
        kept_boxes, kept_scores, kept_classes = [], [], []
        for cls in range(c):
            cls_scores = scores[img, :, cls]
            cand = np.flatnonzero(cls_scores > np.float32(score_threshold))
            if cand.size == 0:
                continue
            cls_boxes = boxes[img, cand, 0 if boxes.shape[2] == 1 else cls]
            keep = nms_single_class(cls_boxes, cls_scores[cand], iou_threshold=iou_threshold, limit=per_class)
            kept_boxes.append(cls_boxes[keep])
            kept_scores.append(cls_scores[cand][keep])
            kept_classes.append(np.full(len(keep), cls, np.float32))
        if not kept_scores:
            continue
        all_scores = np.concatenate(kept_scores)
        top = np.argsort(-all_scores, kind="stable")[:total]
        k = len(top)
        out_boxes[img, :k] = np.concatenate(kept_boxes)[top]
        out_scores[img, :k] = all_scores[top]
        out_classes[img, :k] = np.concatenate(kept_classes)[top]
        out_num[img] = k
    return out_boxes, out_scores, out_classes, out_num


def roi_levels(rois: np.ndarray, num_levels: int, finest_scale: float = 56) -> np.ndarray:
    """FPN level of each RoI, mmdet's ``SingleRoIExtractor.map_roi_levels``.

    scale = sqrt(w*h) (no +1), level = floor(log2(scale / finest_scale + 1e-6)) clamped to
    [0, num_levels-1]; float32 like mmdet. The NPU kernel compares scale with finest_scale * 2^k
    instead (scale <= 112 -> level 0, ...), which differs only for a scale exactly on a boundary.
    Degenerate RoIs (negative area) go to level 0.
    """
    rois = np.asarray(rois, np.float32)
    area = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])
    with np.errstate(invalid="ignore", divide="ignore"):
        lvl = np.floor(np.log2(np.sqrt(area) / np.float32(finest_scale) + np.float32(1e-6)))
    lvl = np.nan_to_num(lvl, nan=0.0, posinf=num_levels - 1, neginf=0.0)
    return np.clip(lvl, 0, num_levels - 1).astype(np.int64)


def _bin_weights(start: np.float32, size: np.float32, bins: int, grid: int, limit: int) -> np.ndarray:
    """(bins, limit) matrix averaging the 1-D bilinear weights of each bin's ``grid`` samples.

    Bilinear RoIAlign over a product grid of sample points is separable, so a RoI's output is
    ``Ay @ F @ Ax.T``; the edge rules are torchvision's ``bilinear_interpolate`` (a sample beyond
    [-1, limit] contributes 0, coordinates below 0 snap to 0, the last row/column is replicated).
    """
    weights = np.zeros((bins, limit), np.float32)
    if grid <= 0:
        return weights
    f32 = np.float32
    bin_size = size / f32(bins)
    rows = np.repeat(np.arange(bins), grid)
    offsets = (np.tile(np.arange(grid), bins).astype(np.float32) + f32(0.5)) * bin_size / f32(grid)
    pos = start + rows.astype(np.float32) * bin_size + offsets
    inside = (pos >= -1.0) & (pos <= limit)
    pos = np.maximum(pos, f32(0))
    low = pos.astype(np.int64)
    last = low >= limit - 1
    low = np.where(last, limit - 1, low)
    high = np.where(last, limit - 1, low + 1)
    frac = np.where(last, f32(0), pos - low.astype(np.float32))
    share = inside.astype(np.float32) / f32(grid)
    np.add.at(weights, (rows, low), (f32(1) - frac) * share)
    np.add.at(weights, (rows, high), frac * share)
    return weights


def roi_align_one(feature: np.ndarray, roi: Sequence[float], *, pooled_height: int, pooled_width: int,
                  spatial_scale: float, sample_num: int = 0, aligned: bool = False) -> np.ndarray:
    """RoIAlign (average) of one box on one (C, H, W) map; torchvision's ``roi_align`` semantics.

    ``aligned`` shifts by -0.5 pixel (pixel-centre model) and then allows RoIs smaller than one
    pixel; without it, RoI sides are clamped to >= 1. ``sample_num`` <= 0 means
    ceil(roi_side / pooled_side) samples per bin. Arithmetic is float32 like the reference kernels.
    """
    f32 = np.float32
    _, height, width = feature.shape
    offset = f32(0.5) if aligned else f32(0)
    scale = f32(spatial_scale)
    x1, y1, x2, y2 = (f32(v) * scale - offset for v in roi)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = max(roi_w, f32(1)), max(roi_h, f32(1))
    grid_h = sample_num if sample_num > 0 else int(math.ceil(roi_h / f32(pooled_height)))
    grid_w = sample_num if sample_num > 0 else int(math.ceil(roi_w / f32(pooled_width)))
    ay = _bin_weights(y1, roi_h, pooled_height, grid_h, height)
    ax = _bin_weights(x1, roi_w, pooled_width, grid_w, width)
    rows, cols = np.flatnonzero(ay.any(0)), np.flatnonzero(ax.any(0))
    if rows.size == 0 or cols.size == 0:
        return np.zeros((feature.shape[0], pooled_height, pooled_width), np.float32)
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = feature[:, r0:r1, c0:c1].astype(np.float32, copy=False)
    return np.matmul(np.matmul(ay[:, r0:r1], crop), ax[:, c0:c1].T)


def roi_extractor(features: Sequence[np.ndarray], rois: np.ndarray, *, pooled_height: int,
                  pooled_width: int, spatial_scale: Sequence[float], finest_scale: float = 56,
                  sample_num: int = 0, aligned: bool = False, roi_scale_factor: float = 0.0) -> np.ndarray:
    """Reference of Ascend ``RoiExtractor``: mmdet ``SingleRoIExtractor`` + per-level RoIAlign.

    ``features`` are the FPN maps (B, C, H_l, W_l), finest first; ``rois`` is (K, 5)
    [batch_index, x1, y1, x2, y2] in input-image pixels. Each RoI is pooled from the level chosen
    by :func:`roi_levels` with that level's ``spatial_scale``; output (K, C, pooled_height,
    pooled_width) float32. RoIs with non-finite coordinates give zeros.
    ``roi_scale_factor`` other than 0 (unset) or 1 is refused: the TBE kernel stores but never
    applies it, so no value could match the NPU. The NPU also clamps RoI sides to >= 1 when
    ``aligned`` is set (it always runs with roi_end_mode 0); torchvision and this reference do not.
    """
    feats = [np.asarray(f) for f in features]
    rois = np.asarray(rois, np.float32)
    scales = [float(s) for s in spatial_scale]
    if not feats or len(scales) != len(feats):
        raise ToolError(f"{ROI_OP} got {len(feats)} feature maps but {len(scales)} spatial_scale values: "
                        "give one scale per FPN level")
    if any(f.ndim != 4 for f in feats) or len({(f.shape[0], f.shape[1]) for f in feats}) != 1:
        raise ToolError(f"{ROI_OP} feature maps {[list(f.shape) for f in feats]} must all be (B, C, H, W) "
                        "with the same B and C")
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise ToolError(f"{ROI_OP} rois {list(rois.shape)} must be (K, 5) [batch, x1, y1, x2, y2]")
    if roi_scale_factor not in (0, 1, None):
        raise ToolError(f"{ROI_OP} roi_scale_factor={roi_scale_factor} is not supported (the Ascend kernel "
                        "ignores it): export with 0")
    batch, channels = feats[0].shape[:2]
    out = np.zeros((rois.shape[0], channels, pooled_height, pooled_width), np.float32)
    levels = roi_levels(rois, len(feats), finest_scale)
    for k, (roi, lvl) in enumerate(zip(rois, levels)):
        if not np.isfinite(roi).all():
            continue
        b = int(roi[0])
        if not 0 <= b < batch:
            raise ToolError(f"{ROI_OP} roi {k} has batch index {roi[0]:g}, outside 0..{batch - 1}: "
                            "the rois do not belong to these feature maps")
        out[k] = roi_align_one(feats[lvl][b], roi[1:], pooled_height=pooled_height, pooled_width=pooled_width,
                               spatial_scale=scales[lvl], sample_num=sample_num, aligned=aligned)
    return out
