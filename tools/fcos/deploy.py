"""FCOS with static-shape post-processing: the network ONNX Runtime and ATC receive.

mmdet 2.13's own ONNX path (``FCOSHead._get_bboxes`` under ``torch.onnx.is_in_onnx_export()``)
does not suit Ascend: its top-k size is a runtime tensor (``get_k_for_topk`` -> ``torch.where``),
boxes are clipped through a shape tensor (``dynamic_clip_for_onnx``), its NMS is a dummy whose
PyTorch forward returns *random* indices (so PyTorch cannot be compared with the export), and it
exports for one image only. :class:`FCOSDeploy` keeps the upstream network (backbone, FPN, head
forward, point grid) and redoes the post-processing with the same steps and constants but static
shapes, ending in one of two NMS back ends:

* ``ascend``: the Ascend ``BatchMultiClassNMS`` custom op (score 0.05, IoU 0.5, 100 per class,
  100 per image; fp16 inputs as the recipe), via ``common.customops``;
* ``onnx``: standard ``NonMaxSuppression`` + ``TopK`` (any ONNX runtime), whose PyTorch forward
  computes the real NMS so the export can be checked against it; the batch axis may be dynamic.

Both return ``dets`` (B, 100, 5: x1, y1, x2, y2, score) and ``labels`` (B, 100, int64, 0-based),
rows past the detections having score 0. Boxes are in model-input (padded canvas) pixels.

Semantics versus mmdet's PyTorch test (``multiclass_nms``): the score threshold applies to
``class score x centerness`` (mmdet's own ONNX export and the recipe do this; mmdet's PyTorch test
thresholds the class score before multiplying), and boxes are clipped to the canvas, not to the
resized image (postprocessing clips to the image). With ``score_thr = 0`` both agree exactly
(tested).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from common.contract import check_target
from tools.fcos.config import TEST_CFG

#: recipe / mmdet test_cfg values, named for the NMS back ends
SCORE_THR = float(TEST_CFG["score_thr"])
IOU_THR = float(TEST_CFG["nms"]["iou_threshold"])
MAX_PER_IMG = int(TEST_CFG["max_per_img"])
NMS_PRE = int(TEST_CFG["nms_pre"])
#: per-class cap before the per-image top-100: mmdet has none; 100 per class loses nothing
MAX_PER_CLASS = MAX_PER_IMG


def gather_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[b, index[b, k]]`` for (B, N, ...) values and (B, K) index, as one flat Gather.

    A flat Gather maps to Ascend's GatherV2 and keeps the batch axis symbolic for ONNX; it is the
    form mmdet itself uses in export mode.
    """
    batch, num = values.shape[0], values.shape[1]
    offsets = torch.arange(batch, device=index.device).unsqueeze(1) * num
    flat = values.reshape((-1,) + tuple(values.shape[2:]))
    picked = flat[(index + offsets).reshape(-1)]
    return picked.reshape((batch, -1) + tuple(values.shape[2:]))


def decode_candidates(cls_scores: Sequence[torch.Tensor], bbox_preds: Sequence[torch.Tensor],
                      centernesses: Sequence[torch.Tensor], points: Sequence[torch.Tensor],
                      input_hw: tuple[int, int], nms_pre: int = NMS_PRE) -> tuple[torch.Tensor, torch.Tensor]:
    """Head outputs -> candidate boxes (B, N, 4) and scores (B, N, C) = sigmoid(cls) x sigmoid(centerness).

    Per level, as ``FCOSHead._get_bboxes``: keep the ``nms_pre`` points with the highest
    ``max_c(score x centerness)`` (a level with fewer points keeps all: the count is fixed by the
    static input size), decode ``distance2bbox`` and clamp to the canvas with constant bounds.
    """
    height, width = input_hw
    boxes_all, scores_all = [], []
    for cls_score, bbox_pred, centerness, pts in zip(cls_scores, bbox_preds, centernesses, points):
        batch, num_classes = cls_score.shape[0], cls_score.shape[1]
        scores = cls_score.permute(0, 2, 3, 1).reshape(batch, -1, num_classes).sigmoid()
        ctr = centerness.permute(0, 2, 3, 1).reshape(batch, -1, 1).sigmoid()
        dist = bbox_pred.permute(0, 2, 3, 1).reshape(batch, -1, 4)
        pts = pts.to(dist.dtype).unsqueeze(0).expand(batch, -1, 2)
        num_points = int(pts.shape[1])
        if 0 < nms_pre < num_points:
            _, keep = (scores * ctr).max(dim=2)[0].topk(nms_pre, dim=1)
            scores, ctr = gather_rows(scores, keep), gather_rows(ctr, keep)
            dist, pts = gather_rows(dist, keep), gather_rows(pts, keep)
        x1 = (pts[..., 0] - dist[..., 0]).clamp(0, width)
        y1 = (pts[..., 1] - dist[..., 1]).clamp(0, height)
        x2 = (pts[..., 0] + dist[..., 2]).clamp(0, width)
        y2 = (pts[..., 1] + dist[..., 3]).clamp(0, height)
        boxes_all.append(torch.stack([x1, y1, x2, y2], dim=-1))
        scores_all.append(scores * ctr)
    return torch.cat(boxes_all, dim=1), torch.cat(scores_all, dim=1)


def _onnx_nms_indices(boxes: torch.Tensor, scores: torch.Tensor, max_per_class: int, iou_thr: float,
                      score_thr: float) -> torch.Tensor:
    """What ONNX ``NonMaxSuppression`` returns: (K, 3) int64 [batch, class, box] per kept box.

    ``boxes`` (B, N, 4) x1,y1,x2,y2 (IoU is the same for ONNX's y1,x1,y2,x2 order), ``scores``
    (B, C, N). Kept: score > score_thr, not suppressed by IoU > iou_thr, at most ``max_per_class``
    per (image, class), in descending score order - ONNX Runtime's CPU kernel.
    """
    from torchvision.ops import nms

    rows = []
    for b in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            cand = torch.nonzero(scores[b, c] > score_thr, as_tuple=False).reshape(-1)
            if cand.numel() == 0:
                continue
            keep = cand[nms(boxes[b, cand].float(), scores[b, c, cand].float(), iou_thr)[:max_per_class]]
            rows.append(torch.stack([torch.full_like(keep, b), torch.full_like(keep, c), keep], dim=1))
    if not rows:
        return torch.zeros((0, 3), dtype=torch.long)
    return torch.cat(rows).long()


class OnnxNMS(torch.autograd.Function):
    """Standard ONNX ``NonMaxSuppression`` with a real PyTorch forward (mmdet's is a random dummy)."""

    @staticmethod
    def forward(ctx, boxes, scores, max_per_class: int, iou_thr: float, score_thr: float):
        return _onnx_nms_indices(boxes, scores, max_per_class, iou_thr, score_thr)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class, iou_thr, score_thr):
        return g.op("NonMaxSuppression", boxes, scores,
                    g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.long)),
                    g.op("Constant", value_t=torch.tensor([iou_thr], dtype=torch.float)),
                    g.op("Constant", value_t=torch.tensor([score_thr], dtype=torch.float)))


def onnx_nms(boxes: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class NMS + per-image top-100 in standard ONNX ops -> dets (B, 100, 5), labels (B, 100).

    The kept (image, class, box) triples switch on a 0/1 mask over all class-box scores; TopK over
    the masked scores then yields a fixed 100 rows per image (unkept rows have score 0).
    """
    batch, num_boxes, num_classes = scores.shape
    selected = OnnxNMS.apply(boxes, scores.transpose(1, 2), MAX_PER_CLASS, IOU_THR, SCORE_THR)
    flat_scores = scores.transpose(1, 2).reshape(-1)  # (B * C * N), class-major per image
    flat_index = (selected[:, 0] * num_classes + selected[:, 1]) * num_boxes + selected[:, 2]
    ones = torch.ones_like(flat_index, dtype=flat_scores.dtype)
    mask = torch.zeros_like(flat_scores).scatter(0, flat_index, ones)
    masked = (flat_scores * mask).reshape(batch, num_classes * num_boxes)
    top_scores, top_index = masked.topk(MAX_PER_IMG, dim=1)
    labels = top_index // num_boxes
    top_boxes = gather_rows(boxes, top_index % num_boxes)
    valid = (top_scores > 0).unsqueeze(2).to(top_boxes.dtype)
    dets = torch.cat([top_boxes * valid, top_scores.unsqueeze(2)], dim=2)
    return dets, labels * (top_scores > 0).long()


def ascend_nms(boxes: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ascend ``BatchMultiClassNMS`` (class-shared boxes (B, N, 1, 4), fp16 inputs as the recipe)."""
    from common.customops import ascend_batch_nms

    nmsed_boxes, nmsed_scores, nmsed_classes, _ = ascend_batch_nms(
        boxes.unsqueeze(2), scores, score_threshold=SCORE_THR, iou_threshold=IOU_THR,
        max_size_per_class=MAX_PER_CLASS, max_total_size=MAX_PER_IMG, cast_fp16=True)
    dets = torch.cat([nmsed_boxes, nmsed_scores.unsqueeze(2)], dim=2)
    return dets, nmsed_classes.long()


class FCOSDeploy(nn.Module):
    """Image batch (B, 3, H, W) -> (dets (B, 100, 5), labels (B, 100)) for a fixed H x W."""

    def __init__(self, detector: nn.Module, target: str, input_hw: tuple[int, int]) -> None:
        super().__init__()
        self.detector = detector
        self.target = check_target(target)
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        strides = detector.bbox_head.strides
        #: feature map size per level: each stride-2 conv rounds up, so ceil(side / stride)
        self.grid_sizes = [(-(-self.input_hw[0] // s), -(-self.input_hw[1] // s)) for s in strides]
        # the upstream point grid (x, y) per level: constants of the graph for this input size
        self._points = [p.clone() for p in detector.bbox_head.get_points(
            self.grid_sizes, torch.float32, torch.device("cpu"))]

    def candidates(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidate boxes (B, N, 4) and scores (B, N, 80) before NMS."""
        feats = self.detector.extract_feat(img)
        cls_scores, bbox_preds, centernesses = self.detector.bbox_head(feats)
        got = [tuple(c.shape[-2:]) for c in cls_scores]
        if got != self.grid_sizes:
            raise ValueError(f"feature maps {got} do not match the grid {self.grid_sizes} "
                             f"for input {self.input_hw}")
        return decode_candidates(cls_scores, bbox_preds, centernesses, self._points, self.input_hw)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        boxes, scores = self.candidates(img)
        return ascend_nms(boxes, scores) if self.target == "ascend" else onnx_nms(boxes, scores)
