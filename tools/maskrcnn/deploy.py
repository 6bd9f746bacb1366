"""Mask R-CNN with static-shape inference: the network ONNX Runtime and ATC receive.

detectron2's inference filters with data-dependent shapes (non-empty boxes, score > 0.05, NMS)
that ATC cannot compile. :class:`MaskRCNNDeploy` keeps detectron2's modules (backbone, RPN head,
anchor generator, box coder, box and mask heads, their weights and constants) and redoes the
glue between them with the same steps but fixed sizes, as the recipe's patch does:

* RPN: per FPN level the top ``PRE_NMS_TOPK_TEST`` anchors (``topk`` instead of sort + narrow),
  decode, clip to the canvas, per-level NMS 0.7, the best ``POST_NMS_TOPK_TEST`` proposals;
  padding rows are flagged invalid and can never become detections;
* box head: ROIAlignV2 7x7, class scores and class-specific boxes, clip, score > 0.05, per-class
  NMS 0.5, the best 100;
* mask head: ROIAlignV2 14x14 on the 100 boxes, the predicted class's 28x28 mask, sigmoid
  (the recipe returns all 80 classes and picks on the host; picking in the graph is 80x smaller).

The two NMS steps and the two ROIAlign poolers have one implementation per target:

* ``ascend``: ``BatchMultiClassNMS`` (fp16 inputs, as the 310 kernel takes) and ``RoiExtractor``
  (common.customops), because ATC has no static NonMaxSuppression and no multi-level RoiAlign;
* ``onnx``: standard ``NonMaxSuppression`` (:class:`KeepMask`) + ``TopK``, and detectron2's own
  ROIPooler (torchvision ``roi_align`` -> ONNX ``RoiAlign``); opset 11's RoiAlign stretches RoIs
  thinner than one feature cell to one cell, so this target widens them first (:func:`widen_thin`):
  PyTorch and ONNX Runtime agree, and detections from such RoIs differ a little from detectron2's.

Outputs (batch 1): ``boxes`` (1, 100, 4) x1 y1 x2 y2 in canvas pixels, ``scores`` (1, 100),
``classes`` (1, 100) int64 0-based, ``masks`` (1, 100, 28, 28) probabilities; rows past the
detections have score 0. Boxes are clipped to the canvas: for an image that fills the canvas this
is detectron2's own result; otherwise the postprocess clips to the image (see README).
"""

from __future__ import annotations

import torch
from torch import nn

from common.contract import check_target

#: canvas pixels per feature pixel of p2..p5 (the poolers' levels), as RoiExtractor's spatial_scale
POOLER_SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
#: detectron2's ROIPooler maps a box of sqrt(area) 224 to p4; in RoiExtractor terms the finest
#: level (p2) takes sqrt(area) < 112, i.e. finest_scale 56
FINEST_SCALE = 56


class KeepMask(torch.autograd.Function):
    """0/1 mask of the rows ONNX ``NonMaxSuppression`` keeps (one class, score > threshold).

    Forward: torchvision's ``nms`` on the rows above the threshold (what detectron2 runs, and what
    ONNX Runtime's kernel computes); symbolic: NonMaxSuppression -> selected indices -> a scatter
    of ones, so the graph keeps static shapes after it. Class-aware NMS is done by the caller with
    detectron2's coordinate offsets (torchvision ``batched_nms``).
    """

    @staticmethod
    def forward(ctx, boxes, scores, iou_threshold: float, score_threshold: float):
        from torchvision.ops import nms

        cand = torch.nonzero(scores > score_threshold, as_tuple=False).reshape(-1)
        keep = cand[nms(boxes[cand], scores[cand], iou_threshold)]
        return torch.zeros_like(scores).index_fill(0, keep, 1.0)

    @staticmethod
    def symbolic(g, boxes, scores, iou_threshold, score_threshold):
        count = g.op("Constant", value_t=torch.tensor([2 ** 31 - 1], dtype=torch.long))
        selected = g.op("NonMaxSuppression", g.op("Unsqueeze", boxes, axes_i=[0]),
                        g.op("Unsqueeze", g.op("Unsqueeze", scores, axes_i=[0]), axes_i=[0]), count,
                        g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float)),
                        g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float)))
        index = g.op("Squeeze", g.op("Gather", selected, g.op("Constant", value_t=torch.tensor([2])), axis_i=1),
                     axes_i=[1])
        zeros = g.op("Mul", scores, g.op("Constant", value_t=torch.tensor(0.0)))
        ones = g.op("Add", g.op("Gather", zeros, index, axis_i=0), g.op("Constant", value_t=torch.tensor(1.0)))
        return g.op("ScatterElements", zeros, index, ones, axis_i=0)


def _finite(x: torch.Tensor) -> torch.Tensor:
    """``torch.isfinite`` in ops opset 11 has (no IsInf/IsNaN export in torch 1.8): x - x is NaN
    exactly for NaN and +-inf."""
    return (x - x) == 0


def widen_thin(boxes: torch.Tensor, cell: float) -> torch.Tensor:
    """Boxes at least ``cell`` wide and high (x2/y2 moved): what ONNX ``RoiAlign`` (opset 11) does to
    a RoI thinner than one feature cell. Only p2 (cell 4 px) sees such boxes (sqrt(area) < 112 at
    1344 px), so widening first does not move a box to another level; with it, the PyTorch forward
    computes what ONNX Runtime computes (detectron2 itself does not widen: see README)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1, y1, torch.max(x2, x1 + cell), torch.max(y2, y1 + cell)], -1)


def grouped_nms_topk(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, *, iou: float,
                     score_threshold: float, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard-op NMS within groups, then the best ``k``: (scores (k,), row index (k,)); a row whose
    score is 0 is padding. Groups are separated by detectron2's coordinate offset (torchvision
    ``batched_nms``), so boxes of different groups never overlap."""
    offsets = groups.to(boxes) * (boxes.max() + 1)
    kept = KeepMask.apply(boxes + offsets[:, None], scores, float(iou), float(score_threshold))
    return (scores * kept).topk(k)


class MaskRCNNDeploy(nn.Module):
    """(1, 3, H, W) normalised canvas -> (boxes, scores, classes, masks) for a fixed H x W."""

    def __init__(self, model: nn.Module, target: str, input_hw: tuple[int, int]) -> None:
        super().__init__()
        self.model, self.target = model, check_target(target)
        self.input_hw = tuple(int(side) for side in input_hw)  # (H, W) of the static canvas
        rpn, heads = model.proposal_generator, model.roi_heads
        self.pre_nms_topk = int(rpn.pre_nms_topk[False])
        self.post_nms_topk = int(rpn.post_nms_topk[False])
        self.rpn_nms = float(rpn.nms_thresh)
        self.score_threshold = float(heads.box_predictor.test_score_thresh)
        self.box_nms = float(heads.box_predictor.test_nms_thresh)
        self.max_dets = int(heads.box_predictor.test_topk_per_image)

    # ---------------------------------------------------------------- shared steps

    def clip(self, boxes: torch.Tensor) -> torch.Tensor:
        """Boxes.clip with the canvas as constant bounds (x to [0, W], y to [0, H])."""
        height, width = self.input_hw
        x1, y1, x2, y2 = boxes.unbind(-1)
        return torch.stack([x1.clamp(0, width), y1.clamp(0, height), x2.clamp(0, width), y2.clamp(0, height)], -1)

    def pool(self, maps: list[torch.Tensor], boxes: torch.Tensor, pooler) -> torch.Tensor:
        """ROIAlignV2 over p2..p5 for (R, 4) boxes: RoiExtractor (ascend) or detectron2's ROIPooler."""
        if self.target == "onnx":
            from detectron2.structures import Boxes

            return pooler(maps, [Boxes(widen_thin(boxes, 1 / POOLER_SCALES[0]))])
        from common.customops import ascend_roi_extractor

        size = pooler.output_size
        rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1)
        return ascend_roi_extractor(maps, rois, pooled_height=size[0], pooled_width=size[1],
                                    spatial_scale=POOLER_SCALES, finest_scale=FINEST_SCALE, sample_num=0,
                                    aligned=True)

    # ---------------------------------------------------------------- stages

    def proposals(self, features: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """RPN -> (proposals (P, 4), valid (P,) bool), best first, P = POST_NMS_TOPK_TEST."""
        rpn = self.model.proposal_generator
        maps = [features[f] for f in rpn.in_features]
        anchors = rpn.anchor_generator(maps)
        logits, deltas = rpn.rpn_head(maps)
        boxes, scores, levels = [], [], []
        for level, (anchor, logit, delta) in enumerate(zip(anchors, logits, deltas)):
            logit = logit.permute(0, 2, 3, 1).reshape(-1)
            delta = delta.view(1, -1, 4, delta.shape[-2], delta.shape[-1]).permute(0, 3, 4, 1, 2).reshape(-1, 4)
            top, index = logit.topk(min(self.pre_nms_topk, int(logit.shape[0])))
            boxes.append(rpn.box2box_transform.apply_deltas(delta[index], anchor.tensor[index]))
            scores.append(top)
            levels.append(torch.full_like(top, level))
        boxes, scores, levels = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
        finite = _finite(boxes.sum(dim=1)) & _finite(scores)  # a NaN/inf coordinate makes the sum one
        boxes = self.clip(torch.where(finite[:, None], boxes, torch.zeros_like(boxes)))
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        # sigmoid keeps the logits' order and makes "invalid" a score of 0 (no NMS candidate)
        probs = torch.sigmoid(scores) * (finite & nonempty).to(scores)
        if self.target == "onnx":
            top, index = grouped_nms_topk(boxes, probs, levels, iou=self.rpn_nms, score_threshold=0.0,
                                          k=self.post_nms_topk)
            return boxes[index], top > 0
        from common.customops import ascend_batch_nms

        one_hot = torch.nn.functional.one_hot(levels.long(), len(maps)).to(probs)
        kept, top, _, _ = ascend_batch_nms(boxes[None, :, None], (probs[:, None] * one_hot)[None],
                                           score_threshold=0.0, iou_threshold=self.rpn_nms,
                                           max_size_per_class=self.post_nms_topk,
                                           max_total_size=self.post_nms_topk, cast_fp16=True)
        return kept[0], top[0] > 0

    def detections(self, features: dict, proposals: torch.Tensor, valid: torch.Tensor):
        """Box head -> (boxes (100, 4), scores (100,), classes (100,) int64), best first."""
        heads = self.model.roi_heads
        maps = [features[f] for f in heads.box_in_features]
        x = heads.box_head(self.pool(maps, proposals, heads.box_pooler))
        logits, deltas = heads.box_predictor(x)
        probs = torch.softmax(logits, dim=-1)[:, :-1] * valid[:, None].to(logits)
        num_classes = probs.shape[1]
        boxes = heads.box_predictor.box2box_transform.apply_deltas(deltas, proposals)
        boxes = self.clip(boxes.view(-1, num_classes, 4))
        if self.target == "onnx":
            flat_boxes = boxes.reshape(-1, 4)
            classes = torch.arange(num_classes).repeat(int(probs.shape[0]))
            top, index = grouped_nms_topk(flat_boxes, probs.reshape(-1), classes, iou=self.box_nms,
                                          score_threshold=self.score_threshold, k=self.max_dets)
            keep = (top > 0).to(top)
            return flat_boxes[index] * keep[:, None], top, (index % num_classes) * keep.long()
        from common.customops import ascend_batch_nms

        kept, top, classes, _ = ascend_batch_nms(boxes[None], probs[None], score_threshold=self.score_threshold,
                                                 iou_threshold=self.box_nms, max_size_per_class=self.max_dets,
                                                 max_total_size=self.max_dets, cast_fp16=True)
        return kept[0], top[0], classes[0].long()

    def masks(self, features: dict, boxes: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Mask head -> (100, 28, 28) probabilities of each detection's class."""
        heads = self.model.roi_heads
        maps = [features[f] for f in heads.mask_in_features]
        logits = heads.mask_head.layers(self.pool(maps, boxes, heads.mask_pooler))
        return logits[torch.arange(int(boxes.shape[0])), classes].sigmoid()

    def forward(self, x: torch.Tensor):
        features = self.model.backbone(x)
        proposals, valid = self.proposals(features)
        boxes, scores, classes = self.detections(features, proposals, valid)
        masks = self.masks(features, boxes, classes)
        return boxes[None], scores[None], classes[None], masks[None]
