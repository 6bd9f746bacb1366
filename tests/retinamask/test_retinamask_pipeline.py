"""Through the generic pipeline: the oracle (ground truth in -> bbox AP 100, segm close to it) and
the random-weight end-to-end run (upstream-layout checkpoint -> export -> ORT -> bbox + segm)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from common.demococo import make_mini_coco
from common.fsutil import read_json
from common.metrics import coco_category_ids
from common.pipeline import evaluate, preprocess_dataset, run_inference
from common.report import Provenance
from common.resultfiles import result_name
from common.tensors import write_tensor
from tools.retinamask import tool


def _triangles(root):
    """Turn each synthetic rectangle into the triangle inscribed in it (apex at the top centre), so
    the masks are not their boxes; the boxes stay the triangles' extents."""
    ann_file = root / "annotations" / "instances_val2017.json"
    doc = json.loads(ann_file.read_text())
    for ann in doc["annotations"]:
        x, y, w, h = ann["bbox"]
        ann["segmentation"] = [[x, y + h, x + w / 2, y, x + w, y + h]]
        ann["area"] = w * h / 2
    ann_file.write_text(json.dumps(doc))
    return ann_file, doc


def _inclusive_iou(a, b):
    iw = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]) + 1)
    ih = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]) + 1)
    return iw * ih / ((a[2] + 1) * (a[3] + 1) + (b[2] + 1) * (b[3] + 1) - iw * ih)


@pytest.fixture(scope="module")
def triangle_coco(tmp_path_factory):
    root = make_mini_coco(tmp_path_factory.mktemp("retinamask-coco"), n_images=6, seed=11,
                          size_range=(150, 600), max_objects=4)
    return root, *_triangles(root)


def test_ground_truth_is_representable(triangle_coco):
    """Precondition of the oracle: no two same-class boxes of an image overlap beyond NMS's 0.4."""
    _, _, doc = triangle_coco
    anns = doc["annotations"]
    for a in anns:
        for b in anns:
            if a["id"] < b["id"] and a["image_id"] == b["image_id"] and a["category_id"] == b["category_id"]:
                assert _inclusive_iou(a["bbox"], b["bbox"]) <= 0.4


@pytest.mark.parametrize("target", ["ascend", "onnx"])
def test_oracle_ground_truth_scores_bbox_100_and_segm_close(target, triangle_coco, tmp_path, small):
    root, ann_file, doc = triangle_coco
    prep = tmp_path / "prep"
    manifest = preprocess_dataset(tool, root, prep)
    categories = coco_category_ids(ann_file)  # the mapping from the file, not the tool's table
    results = tmp_path / "results" / "oracle"
    for entry in manifest.entries:
        own = [a for a in doc["annotations"] if a["image_id"] == entry.image_id]
        for k, array in enumerate(tool.oracle_outputs(own, entry, target, categories)):
            write_tensor(results / result_name(entry.stem, k), array)
    report = evaluate(tool, prep, results, tmp_path / "eval", target=target,
                      provenance=Provenance.capture("oracle", "cpu", 1))
    assert report.metrics["bbox_mAP"] == pytest.approx(100.0)
    # a 28x28 mask pasted through the expanded box is off by about a pixel along the edges, which
    # costs only at the strictest IoU thresholds (measured: 96.8)
    assert report.metrics["segm_AP50"] == pytest.approx(100.0)
    assert report.metrics["segm_AP75"] == pytest.approx(100.0)
    assert report.metrics["segm_mAP"] >= 95.0


def test_random_weights_end_to_end(export_small, tmp_path, small):
    onnx_path, parity = export_small("ascend")
    assert parity["ok"]
    root = make_mini_coco(tmp_path / "coco", n_images=2, seed=3)
    prep = tmp_path / "prep"
    preprocess_dataset(tool, root, prep)
    result_dir = run_inference(tool.SPEC, onnx_path, prep, tmp_path / "infer", backend="onnxruntime", batch=1)
    report = evaluate(tool, prep, result_dir, tmp_path / "eval", target="ascend",
                      provenance=Provenance.capture("onnxruntime", "cpu", 1))
    for metric in ("bbox_mAP", "segm_mAP"):
        assert math.isfinite(report.metrics[metric]) and 0.0 <= report.metrics[metric] < 100.0
    detections = read_json(tmp_path / "eval" / "detections.json")
    images = json.loads((root / "annotations" / "instances_val2017.json").read_text())["images"]
    sizes = {img["id"]: (img["width"], img["height"]) for img in images}
    assert 2 * 20 <= len(detections) <= 2 * 100
    for det in detections:
        x, y, w, h = det["bbox"]
        width, height = sizes[det["image_id"]]
        assert 0 <= x <= x + w <= width + 1e-3 and 0 <= y <= y + h <= height + 1e-3
        assert det["segmentation"]["size"] == [height, width]
    assert any(np.isfinite(d["score"]) and d["score"] > tool.INFERENCE_TH for d in detections)
    assert (tmp_path / "eval" / "report.md").is_file()
