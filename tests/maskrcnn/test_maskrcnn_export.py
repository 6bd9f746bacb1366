"""Both targets exported on a small canvas: PyTorch vs ONNX Runtime parity, the graphs' ops, and the
whole chain (preprocess -> ORT -> postprocess) against detectron2's own inference."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from common import graph
from common.customops.reference import NMS_OP, ROI_OP
from common.manifest import ManifestEntry
from common.parity import run_onnx
from tests.maskrcnn.conftest import SMALL, canvas
from tools.maskrcnn import tool

#: detections of the random checkpoint on the parity picture: many, or parity proves nothing
MIN_DETECTIONS = 30


def _rows(report: dict, kind: str) -> list[dict]:
    return [r for r in report["rows"] if r["kind"] == kind]


@pytest.mark.parametrize("which", ["onnx_export", "ascend_export"])
def test_export_parity_with_many_detections(which, request):
    path, report = request.getfixturevalue(which)
    assert report["ok"], report
    assert report["detections"] >= MIN_DETECTIONS
    (dets,) = _rows(report, "detections")
    assert dets["ref_count"] >= MIN_DETECTIONS and dets["matched"] >= dets["ref_count"] - tool.PARITY_MAX_UNMATCHED
    (masks,) = _rows(report, "array")
    assert masks["shape"][0] >= MIN_DETECTIONS - tool.PARITY_MAX_UNMATCHED and masks["max_abs_diff"] <= 1e-3
    model = onnx.load(str(path))
    assert graph.output_names(model) == list(tool.OUTPUT_NAMES)
    assert not graph.static_shape_report(model, include_value_info=False)


def test_ascend_graph_uses_the_ascend_ops_only(ascend_export, onnx_export):
    ops = ascend_export[1]["ops"]
    assert ops.get(NMS_OP) == 2 and ops.get(ROI_OP) == 2  # RPN + box head NMS; box + mask poolers
    assert "NonMaxSuppression" not in ops and "RoiAlign" not in ops and "NonZero" not in ops
    plain = onnx_export[1]["ops"]
    assert NMS_OP not in plain and ROI_OP not in plain and plain.get("NonMaxSuppression") == 2


def _picture(side: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (side // 16, side // 16, 3))
    return np.kron(cells, np.ones((16, 16, 1))).astype(np.uint8)


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@pytest.mark.parametrize("which", ["onnx_export", "ascend_export"])
def test_pipeline_matches_detectron2_inference(which, request, checkpoint):
    """An image that fills the canvas: our preprocess, the exported graph in ONNX Runtime (Ascend
    ops through their CPU kernels) and our postprocess (scale back, paste, RLE) give detectron2's
    own GeneralizedRCNN.inference result: same boxes, scores, classes and pasted masks."""
    from pycocotools import mask as mask_utils

    path, _ = request.getfixturevalue(which)
    img = _picture(SMALL, seed=3)
    with canvas(SMALL):
        tensor, scale, pad = tool.preprocess(img)
        outs = run_onnx(path, {tool.SPEC.input.name: tensor[None]})
        entry = ManifestEntry("p", "p.jpg", "p.bin", (SMALL, SMALL), scale, pad, image_id=1)
        ours = tool.postprocess([outs[n][0] for n in tool.OUTPUT_NAMES], entry, which.split("_")[0])
    model = tool.load_model(checkpoint)
    with torch.no_grad():
        inst = model.inference([{"image": torch.from_numpy(img.transpose(2, 0, 1).copy()), "height": SMALL,
                                 "width": SMALL}])[0]["instances"]
    ref_boxes = inst.pred_boxes.tensor.numpy()
    ref_masks = inst.pred_masks.numpy()
    assert len(inst) >= MIN_DETECTIONS and len(ours) >= MIN_DETECTIONS
    got_boxes = np.array([[d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3]]
                          for d in ours])
    got_labels = np.array([tool.COCO80_CATEGORY_IDS.index(d["category_id"]) for d in ours])
    pairs = tool.match_detections(ref_boxes, inst.scores.numpy(), inst.pred_classes.numpy(), got_boxes,
                                  np.array([d["score"] for d in ours]), got_labels, 0.99)
    assert len(pairs) >= len(inst) - tool.PARITY_MAX_UNMATCHED
    for r, g in pairs:
        x0, y0, x1, y1 = ref_boxes[r]  # image pixels = canvas pixels here
        # ONNX RoiAlign (opset 11) stretches a RoI thinner than one p2 cell (4 px) to one cell;
        # detectron2's ROIAlignV2 does not: such detections keep their box but not the exact score
        thin = min(x1 - x0, y1 - y0) < 4 and which == "onnx_export"
        assert abs(float(inst.scores[r]) - ours[g]["score"]) < (0.05 if thin else 1e-4), (r, g)
        got_mask = mask_utils.decode({"size": ours[g]["segmentation"]["size"],
                                      "counts": ours[g]["segmentation"]["counts"].encode()}).astype(bool)
        if thin:  # another RoI feature, another mask; still the same object
            assert _mask_iou(got_mask, ref_masks[r]) >= 0.5, (r, g)
        else:  # probabilities agree to 1e-4: only pixels at the 0.5 threshold may flip
            union = np.logical_or(got_mask, ref_masks[r]).sum()
            assert (got_mask != ref_masks[r]).sum() <= max(0.02 * union, 3), (r, g)
