"""Through the generic pipeline (data -> infer -> eval, bbox + segm): random weights end to end for
both targets, and the oracle on the generated COCO set."""

from __future__ import annotations

import json
import math

import pytest

from common.demococo import make_mini_coco
from common.fsutil import read_json
from common.pipeline import evaluate, preprocess_dataset, run_inference
from common.report import Provenance
from common.resultfiles import result_name
from common.tensors import write_tensor
from tools.maskrcnn import tool


@pytest.fixture(scope="module")
def mini_coco(tmp_path_factory):
    return make_mini_coco(tmp_path_factory.mktemp("maskrcnn-coco"), n_images=3, seed=3)


@pytest.mark.parametrize("which", ["onnx_export", "ascend_export"])
def test_random_weights_end_to_end_bbox_and_segm(which, request, mini_coco, tmp_path, small_canvas):
    onnx_path, parity = request.getfixturevalue(which)
    target = which.split("_")[0]
    assert parity["ok"]
    prep = tmp_path / "prep"
    preprocess_dataset(tool, mini_coco, prep)
    result_dir = run_inference(tool.SPEC, onnx_path, prep, tmp_path / "infer", backend="onnxruntime", batch=1)
    report = evaluate(tool, prep, result_dir, tmp_path / "eval", target=target,
                      provenance=Provenance.capture("onnxruntime", "cpu", 1))
    for metric in ("bbox_mAP", "segm_mAP"):
        assert math.isfinite(report.metrics[metric]) and 0.0 <= report.metrics[metric] < 100.0
    detections = read_json(tmp_path / "eval" / "detections.json")
    assert len(detections) >= 3 * 30
    images = json.loads((mini_coco / "annotations" / "instances_val2017.json").read_text())["images"]
    sizes = {img["id"]: [img["height"], img["width"]] for img in images}
    assert all(det["segmentation"]["size"] == sizes[det["image_id"]] and det["score"] > 0.05
               and min(det["bbox"][:2]) >= 0 and det["bbox"][0] + det["bbox"][2] <= sizes[det["image_id"]][1] + 1e-3
               and det["bbox"][1] + det["bbox"][3] <= sizes[det["image_id"]][0] + 1e-3 for det in detections)


def test_oracle_through_the_pipeline(mini_coco, tmp_path, small_canvas):
    """The generated set's objects are rectangles: 28x28 holds them almost exactly (segm ~100)."""
    prep = tmp_path / "prep"
    manifest = preprocess_dataset(tool, mini_coco, prep)
    anns = json.loads((mini_coco / "annotations" / "instances_val2017.json").read_text())["annotations"]
    results = tmp_path / "results" / "oracle"
    for entry in manifest.entries:
        own = [a for a in anns if a["image_id"] == entry.image_id]
        for k, array in enumerate(tool.oracle_outputs(own, entry, "ascend")):
            write_tensor(results / result_name(entry.stem, k), array)
    report = evaluate(tool, prep, results, tmp_path / "eval", target="ascend",
                      provenance=Provenance.capture("oracle", "cpu", 1))
    assert report.metrics["bbox_mAP"] == pytest.approx(100.0)
    assert report.metrics["segm_mAP"] > 90.0
