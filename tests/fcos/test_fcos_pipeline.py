"""Through the generic pipeline: the oracle (ground truth in -> mAP 100 out) and random-weight end to end."""

from __future__ import annotations

import json
import math

import pytest

from common.contract import TARGETS
from common.demococo import make_mini_coco
from common.fsutil import read_json
from common.pipeline import evaluate, preprocess_dataset, run_inference
from common.report import Provenance
from common.resultfiles import result_name
from common.tensors import Manifest, write_tensor
from tools.fcos import deploy, tool


@pytest.fixture(scope="module")
def mini_coco(tmp_path_factory):
    return make_mini_coco(tmp_path_factory.mktemp("fcos-coco"), n_images=4, seed=3)


@pytest.mark.parametrize("target", TARGETS)
def test_oracle_ground_truth_scores_map_100(target, mini_coco, tmp_path, small_canvas):
    prep = tmp_path / "prep"
    manifest = preprocess_dataset(tool, mini_coco, prep)
    ann_file = mini_coco / "annotations" / "instances_val2017.json"
    anns = json.loads(ann_file.read_text())["annotations"]
    results = tmp_path / "results" / "oracle"
    for entry in manifest.entries:
        own = [a for a in anns if a["image_id"] == entry.image_id]
        assert own, "every synthetic image has objects"
        for k, array in enumerate(tool.oracle_outputs(own, entry, target)):
            write_tensor(results / result_name(entry.stem, k), array)
    report = evaluate(tool, prep, results, tmp_path / "eval", target=target,
                      provenance=Provenance.capture("oracle", "cpu", 1))
    assert report.metrics["bbox_mAP"] == pytest.approx(100.0)
    assert report.metrics["bbox_AP50"] == pytest.approx(100.0)


def test_manifest_records_scale_and_centred_padding(mini_coco, tmp_path, small_canvas):
    manifest = preprocess_dataset(tool, mini_coco, tmp_path / "prep")
    reread = Manifest.load(tmp_path / "prep")
    assert reread.shape == (3, 256, 416) and len(reread.entries) == 4
    for entry in reread.entries:
        w, h = entry.orig_size
        sx, sy = entry.scale
        left, top, right, bottom = entry.pad
        assert round(w * sx) + left + right == 416 and round(h * sy) + top + bottom == 256
        assert abs(left - right) <= 1 and abs(top - bottom) <= 1
    assert [e.stem for e in reread.entries] == [e.stem for e in manifest.entries]


@pytest.mark.parametrize("target, batch", [("ascend", 4), ("onnx", 1)])
def test_random_weights_end_to_end(target, batch, export_small, mini_coco, tmp_path, small_canvas):
    onnx_path, parity = export_small(target, batch)
    assert parity["ok"]
    prep = tmp_path / "prep"
    preprocess_dataset(tool, mini_coco, prep)
    result_dir = run_inference(tool.SPEC, onnx_path, prep, tmp_path / "infer", backend="onnxruntime",
                               batch=batch)
    report = evaluate(tool, prep, result_dir, tmp_path / "eval", target=target,
                      provenance=Provenance.capture("onnxruntime", "cpu", batch))
    assert math.isfinite(report.metrics["bbox_mAP"]) and 0.0 <= report.metrics["bbox_mAP"] < 100.0
    detections = read_json(tmp_path / "eval" / "detections.json")
    assert len(detections) == 4 * 100  # the random model fills every image's 100 slots
    images = json.loads((mini_coco / "annotations" / "instances_val2017.json").read_text())["images"]
    sizes = {img["id"]: (img["width"], img["height"]) for img in images}
    for det in detections:
        x, y, w, h = det["bbox"]
        width, height = sizes[det["image_id"]]
        assert 0 <= x <= x + w <= width + 1e-3 and 0 <= y <= y + h <= height + 1e-3
        assert det["score"] > deploy.SCORE_THR
    assert (tmp_path / "eval" / "report.md").is_file()
