"""Ground truth in -> raw maps (oracle_outputs) -> our postprocess -> COCO eval -> bbox mAP exactly 100."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.dataset import read_image_bgr
from common.demococo import make_mini_coco
from common.errors import ToolError
from common.manifest import ManifestEntry
from common.metrics import CocoEvaluator
from tools.efficientdet import tool


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    # wide size range so boxes land on every pyramid level, incl. upscaled small images
    root = make_mini_coco(tmp_path_factory.mktemp("oracle") / "coco", n_images=8, seed=5,
                          size_range=(120, 900), max_objects=5)
    ann_file = root / "annotations" / "instances_val2017.json"
    data = json.loads(ann_file.read_text())
    entries = []
    for img in data["images"]:
        bgr = read_image_bgr(root / "val2017" / img["file_name"])
        _, scale, pad = tool.preprocess(bgr)
        entries.append(ManifestEntry(stem=img["file_name"][:-4], source=img["file_name"], file="-",
                                     orig_size=(img["width"], img["height"]), scale=scale, pad=pad,
                                     image_id=img["id"]))
    return ann_file, data, entries


def _iou_xywh(a, b):
    iw = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return iw * ih / (a[2] * a[3] + b[2] * b[3] - iw * ih)


def _evaluate(ann_file, data, entries, drop_one=False):
    evaluator = CocoEvaluator(ann_file, iou_types=("bbox",))
    for e in entries:
        anns = [a for a in data["annotations"] if a["image_id"] == e.image_id]
        if drop_one and e is entries[0]:
            anns = anns[1:]
        outputs = tool.oracle_outputs(anns, e, "ascend")
        assert [o.shape for o in outputs] == [s.shape for s in tool.SPEC.outputs_for("ascend")]
        evaluator.process(e.image_id, tool.postprocess(outputs, e, "ascend"))
    return evaluator.evaluate()


def test_ground_truth_set_is_representable(coco):
    """Precondition of the oracle: no two same-class boxes of an image overlap beyond the NMS IoU."""
    _, data, _ = coco
    anns = data["annotations"]
    for a in anns:
        for b in anns:
            if a["id"] < b["id"] and a["image_id"] == b["image_id"] and a["category_id"] == b["category_id"]:
                assert _iou_xywh(a["bbox"], b["bbox"]) <= 0.5
    levels = set()
    for e in coco[2]:
        scale = e.scale
        for a in (x for x in anns if x["image_id"] == e.image_id):
            side = np.sqrt(a["bbox"][2] * a["bbox"][3]) * scale  # in model pixels; anchors are 32 px at P3
            levels.add(int(np.clip(np.round(np.log2(side / 32)), 0, 4)))
    assert len(levels) >= 3  # boxes of several sizes, matched on several pyramid levels


def test_oracle_outputs_give_map_100(coco):
    metrics = _evaluate(*coco)
    assert metrics["bbox_mAP"] == 100.0
    assert metrics["bbox_AP50"] == 100.0


def test_oracle_refuses_category_ids_coco_does_not_have(coco):
    """Ids are COCO's own: 12 is one of the 10 ids COCO never uses, 91 is past effdet's 90 classes."""
    entry = coco[2][0]
    for cat in (12, 91, 0):
        ann = {"id": 7, "bbox": [1.0, 1.0, 20.0, 20.0], "category_id": cat, "iscrowd": 0}
        with pytest.raises(ToolError, match=f"annotation 7 has category_id {cat}, which is not one of COCO's 80"):
            tool.oracle_outputs([ann], entry, "ascend")


def test_oracle_without_one_box_is_below_100(coco):
    """The same route scores a missing detection: the 100 above is not a constant."""
    assert _evaluate(*coco, drop_one=True)["bbox_mAP"] < 100.0
