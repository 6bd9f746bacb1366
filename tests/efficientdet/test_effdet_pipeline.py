"""End to end through common.pipeline: data -> ONNX Runtime -> result files -> postprocess -> COCO eval."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from common import pipeline
from common.demococo import make_mini_coco
from common.metrics import COCO80_CATEGORY_IDS
from common.parity import run_onnx
from common.report import Provenance
from common.resultfiles import read_results
from common.tensors import Manifest, read_tensor, write_tensor
from tools.efficientdet import tool


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_mini_coco(tmp_path_factory.mktemp("e2e") / "coco", n_images=3, seed=2)


def coco_eval_rows(rows):
    """effdet's CocoEvaluator cut: scores >= 0.001, and only the 80 ids COCO annotates."""
    return rows[(rows[:, 4] >= 0.001) & np.isin(rows[:, 5], COCO80_CATEGORY_IDS)]


def test_onnxruntime_run_evaluates_and_matches_upstream(exported_bs1, upstream_tensor, assert_upstream_could_give,
                                                       coco, tmp_path):
    onnx_path, _ = exported_bs1
    prep = tmp_path / "prep"
    manifest = pipeline.preprocess_dataset(tool, coco, prep)
    assert len(manifest.entries) == 3 and manifest.shape == (3, 512, 512)
    result_dir = pipeline.run_inference(tool.SPEC, onnx_path, prep, tmp_path / "results",
                                        backend="onnxruntime", batch=1)
    results = read_results(result_dir, [e.stem for e in manifest.entries], tool.SPEC.outputs_for("ascend"))
    prov = Provenance.capture("onnxruntime", "cpu", 1, argv=["pytest"])
    report = pipeline.evaluate(tool, prep, result_dir, tmp_path / "eval", target="ascend", provenance=prov)
    assert 0.0 <= report.metrics["bbox_mAP"] <= 100.0 and not math.isnan(report.metrics["bbox_AP50"])
    assert {f.value for f in report.published if f.metric == "bbox_mAP"} == {33.4, 33.6}
    dets = json.loads((tmp_path / "eval" / "detections.json").read_text())
    by_image = {e.image_id: [d for d in dets if d["image_id"] == e.image_id] for e in manifest.entries}
    assert all(0 < len(v) <= 100 for v in by_image.values()) and len(dets) == sum(map(len, by_image.values()))

    # every stage against upstream on the pipeline's own files: the tensor file equals effdet's
    # transform, and the result files decoded by effdet give the detections the pipeline wrote,
    # exactly except for the order effdet leaves undefined among equal scores (the generated
    # images' flat colours give many exactly tied logits); ONNX vs PyTorch is the export's parity check
    for entry in manifest.entries:
        ref_tensor, img_scale = upstream_tensor(entry.source)
        np.testing.assert_array_equal(read_tensor(prep / entry.file, "float32", (3, 512, 512)), ref_tensor)
        raw = results[entry.stem]
        np.testing.assert_allclose(raw[0], run_onnx(onnx_path, {"input": ref_tensor[None]})["class_p3"][0],
                                   atol=1e-5, rtol=1e-5)
        ours = by_image[entry.image_id]
        got = np.array([[*d["bbox"][:2], d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3], d["score"],
                         d["category_id"]] for d in ours])
        assert_upstream_could_give(got, raw, img_scale, entry.orig_size, keep=coco_eval_rows)


def test_oracle_result_files_through_the_pipeline_give_map_100(coco, tmp_path):
    """Oracle maps written as ais_bench result files (<stem>_<k>.bin) and scored by the generic evaluate."""
    prep = tmp_path / "prep"
    manifest = pipeline.preprocess_dataset(tool, coco, prep)
    ann_file = coco / "annotations" / "instances_val2017.json"
    anns = json.loads(ann_file.read_text())["annotations"]
    result_dir = tmp_path / "results" / "oracle"
    for e in Manifest.load(prep).entries:
        maps = tool.oracle_outputs([a for a in anns if a["image_id"] == e.image_id], e, "ascend")
        for k, arr in enumerate(maps):
            write_tensor(result_dir / f"{e.stem}_{k}.bin", arr)
    prov = Provenance.capture("oracle", "cpu", 1, argv=["pytest"])
    report = pipeline.evaluate(tool, prep, result_dir, tmp_path / "eval", target="ascend", provenance=prov)
    assert report.metrics["bbox_mAP"] == 100.0
    assert len(manifest.entries) == 3
