"""Host-side decoding (numpy) against effdet's own DetBenchPredict post-processing (torch)."""

from __future__ import annotations

import numpy as np
import pytest
from effdet import get_efficientdet_config
from effdet.anchors import Anchors

from common.errors import ToolError
from common.metrics import COCO80_CATEGORY_IDS
from common.tensors import ManifestEntry
from tests.efficientdet.rawmaps import SPECS, object_maps
from tools.efficientdet import tool

CFG = get_efficientdet_config("tf_efficientdet_d0")


def noise_outputs(seed):
    """Unstructured maps: thousands of scattered candidates over all classes."""
    rng = np.random.default_rng(seed)
    cls = [(rng.standard_normal(s.shape) * 2 - 6).astype(np.float32) for s in SPECS[:5]]
    box = [(rng.standard_normal(s.shape) * 0.5).astype(np.float32) for s in SPECS[5:]]
    return cls + box


def clustered_outputs(seed, objects=25):
    """Detector-like maps: a few objects, each firing on every anchor of a 3x3 cell block, so NMS works."""
    return object_maps(seed, objects, background=-10, box_std=0.2, levels=4, classes=tool.NUM_CLASSES,
                       object_logits=lambda i, rng: rng.normal(2, 2, (3, 3)))


def test_anchors_equal_effdet_anchors():
    np.testing.assert_array_equal(tool.anchor_boxes(), Anchors.from_config(CFG).boxes.numpy())


@pytest.mark.parametrize("make,seed,size", [(noise_outputs, 1, (640, 427)),
                                            (clustered_outputs, 2, (500, 375)),
                                            (clustered_outputs, 3, (1000, 333))])
def test_detect_equals_upstream_generate_detections(assert_upstream_could_give, make, seed, size):
    outputs = make(seed)
    img_scale = 1.0 / min(512 / size[1], 512 / size[0])
    ours = tool.detect(outputs, img_scale=img_scale, img_size=size)
    assert len(ours) == 100
    assert_upstream_could_give(ours, outputs, img_scale, size)
    # with the COCO threshold: exactly upstream's rows above it
    kept = tool.detect(outputs, img_scale=img_scale, img_size=size, score_threshold=0.001)
    assert_upstream_could_give(kept, outputs, img_scale, size, keep=lambda rows: rows[rows[:, 4] >= 0.001])


def test_clustered_case_exercises_nms_and_clipping():
    """Guards the test data above: NMS must drop overlapping boxes, and clipping must bite."""
    outputs = clustered_outputs(2)
    candidates = sum(int((o > -6.9).sum()) for o in outputs[:5])
    dets = tool.detect(outputs, img_scale=1.0, img_size=(300, 200), score_threshold=0.001)
    assert candidates > 5 * len(dets) > 0
    x2_max, y2_max = dets[:, 2].max(), dets[:, 3].max()
    assert x2_max == pytest.approx(300, abs=1e-3) or y2_max == pytest.approx(200, abs=1e-3)


def entry(size=(640, 427), image_id=42):
    scale = min(512 / size[1], 512 / size[0])
    return ManifestEntry(stem="x", source="x.jpg", file="x.bin", orig_size=size, scale=scale,
                         pad=(0, 0, 0, 0), image_id=image_id)


def test_postprocess_gives_coco_results_like_the_upstream_evaluator(upstream_detections):
    outputs = clustered_outputs(4, objects=60)
    e = entry()
    ref = upstream_detections(outputs, 1.0 / e.scale, e.orig_size)
    ref = ref[ref[:, 4] >= 0.001]  # effdet's CocoEvaluator stops below this score
    ref = ref[np.isin(ref[:, 5], COCO80_CATEGORY_IDS)]  # ids COCO never annotates can never match
    results = tool.postprocess(outputs, e, "ascend")
    assert len(results) == len(ref) > 20
    assert {r["image_id"] for r in results} == {42}
    assert [r["category_id"] for r in results] == ref[:, 5].astype(int).tolist()
    xywh = np.array([r["bbox"] for r in results])
    np.testing.assert_allclose(xywh[:, :2], ref[:, :2], atol=1e-3)
    np.testing.assert_allclose(xywh[:, 2:], ref[:, 2:4] - ref[:, :2], atol=2e-3)
    np.testing.assert_allclose([r["score"] for r in results], ref[:, 4], rtol=1e-6)
    assert all(isinstance(r["score"], float) and isinstance(r["category_id"], int) for r in results)


def test_postprocess_target_onnx_is_the_same():
    outputs = clustered_outputs(5)
    assert tool.postprocess(outputs, entry(), "onnx") == tool.postprocess(outputs, entry(), "ascend")


def test_bad_outputs_are_refused():
    outputs = clustered_outputs(6)
    with pytest.raises(ToolError, match="expects 10 outputs"):
        tool.postprocess(outputs[:9], entry(), "ascend")
    swapped = outputs[5:] + outputs[:5]
    with pytest.raises(ToolError, match=r"class_p3 has shape \(36, 64, 64\)"):
        tool.postprocess(swapped, entry(), "ascend")
    outputs[2][0, 0, 0] = np.nan
    with pytest.raises(ToolError, match="class_p5 holds NaN"):
        tool.postprocess(outputs, entry(), "ascend")
    with pytest.raises(ToolError, match="unknown TARGET"):
        tool.postprocess(clustered_outputs(6), entry(), "npu")
    odd = entry()
    odd.scale = (0.5, 0.7)
    with pytest.raises(ToolError, match="per-axis scale"):
        tool.postprocess(clustered_outputs(6), odd, "ascend")


def test_top_k_threshold_search_keeps_the_true_top_k_when_the_sample_misleads():
    """The strided sample sees only the large values on its own positions: the first threshold keeps
    too few, and the search must lower it until every one of the true top k (and its ties) is in.
    The values come in parts (as the five maps do), positions count through their concatenation."""
    import numpy as np

    rng = np.random.default_rng(0)
    values = rng.random(200_000).astype(np.float32)
    values[::tool.SAMPLE_STRIDE] = 10.0  # 3125 positions the sample sees, all above the rest
    parts = np.split(values, [64 * 1000, 64 * 2500])  # each part's stride lands on the same positions
    k = 5000
    found = tool._at_least_top_k(parts, k, None)
    kth = np.sort(values)[-k]
    assert found.size >= k
    assert set(np.flatnonzero(values >= kth)) <= set(found.tolist())
    assert np.array_equal(tool._gather(parts, found), values[found])
    floor = float(np.sort(values)[-100])  # a floor above the k-th: only what reaches it, however few
    assert set(tool._at_least_top_k(parts, k, floor).tolist()) == set(np.flatnonzero(values >= floor).tolist())
