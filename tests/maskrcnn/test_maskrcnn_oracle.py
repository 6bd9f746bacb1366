"""Ground truth -> the outputs a perfect network gives (oracle_outputs, from the recipe's geometry)
-> our postprocess (scale back, paste, RLE) -> COCO evaluation.

bbox AP must be exactly 100. segm AP cannot be: the mask head sees an object at 28x28 over its
box, so pasting loses resolution. The expected segm AP is computed here independently of the
postprocess under test: the same 28x28 masks pasted with detectron2's own paste_masks_in_image
(torch grid_sample) at the annotations' boxes, scored by pycocotools' COCOeval directly.
"""

from __future__ import annotations

import contextlib
import io
import json
import math

import cv2
import numpy as np
import pytest
import torch

from common.manifest import ManifestEntry
from common.metrics import CocoEvaluator
from tools.maskrcnn import d2, tool

CATEGORIES = (1, 3, 18, 44, 62)


def _star_polygon(cx, cy, rx, ry, angle, spikes):
    """A rotated elliptic star: thin spikes are what a 28x28 mask cannot hold (a resolution loss)."""
    t = np.linspace(0, 2 * np.pi, 2 * spikes, endpoint=False)
    r = np.where(np.arange(2 * spikes) % 2 == 0, 1.0, 0.45)
    x = cx + r * (rx * np.cos(t) * math.cos(angle) - ry * np.sin(t) * math.sin(angle))
    y = cy + r * (rx * np.cos(t) * math.sin(angle) + ry * np.sin(t) * math.cos(angle))
    return np.stack([x, y], 1)


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """Images (landscape, portrait, long-edge-limited) with non-overlapping star-shaped objects."""
    root = tmp_path_factory.mktemp("maskrcnn-oracle")
    rng = np.random.default_rng(7)
    images, anns = [], []
    for i, (h, w) in enumerate([(480, 640), (640, 427), (300, 1000), (500, 500), (375, 500), (612, 612)]):
        image_id = 100 + i
        images.append({"id": image_id, "file_name": f"img{i}.jpg", "height": h, "width": w})
        cv2.imwrite(str(root / f"img{i}.jpg"), np.full((h, w, 3), 90, np.uint8))
        for col in range(3):  # one object per column third: no two overlap
            cx = (col + 0.5) * w / 3
            r_max = min(w / 7, h / 4)  # any rotation stays inside its third and the image
            rx, ry = rng.uniform(r_max / 3, r_max), rng.uniform(r_max / 3, r_max)
            poly = _star_polygon(cx, rng.uniform(h * 0.3, h * 0.7), rx, ry, rng.uniform(0, np.pi),
                                 int(rng.integers(5, 16)))
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            area = 0.5 * abs(np.dot(poly[:, 0], np.roll(poly[:, 1], 1)) - np.dot(poly[:, 1], np.roll(poly[:, 0], 1)))
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": int(rng.choice(CATEGORIES)),
                         "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "area": float(area),
                         "iscrowd": 0, "segmentation": [poly.reshape(-1).round(2).tolist()]})
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": c, "name": str(c)} for c in CATEGORIES]}))
    return path, images, anns


def _entries(images):
    """What the data step records: preprocess's scale and padding per image."""
    out = {}
    for img in images:
        _, scale, pad = tool.preprocess(np.zeros((img["height"], img["width"], 3), np.uint8))
        out[img["id"]] = ManifestEntry(f"img{img['id']}", img["file_name"], "x.bin", (img["width"], img["height"]),
                                       scale, pad, image_id=img["id"])
    return out


def _oracle(anns, images):
    entries = _entries(images)
    return {i["id"]: (entries[i["id"]], tool.oracle_outputs([a for a in anns if a["image_id"] == i["id"]],
                                                            entries[i["id"]], "ascend")) for i in images}


def _evaluate(path, oracle, drop_row=None):
    evaluator = CocoEvaluator(path, iou_types=("bbox", "segm"))
    for k, (image_id, (entry, outs)) in enumerate(oracle.items()):
        outs = [o.copy() for o in outs]
        if k == 0 and drop_row is not None:
            outs[1][drop_row] = 0.0  # a score of 0 is a padding row: that object is not detected
        evaluator.process(image_id, tool.postprocess(outs, entry, "ascend"))
    return evaluator.evaluate()


def _expected_segm_ap(path, images, anns, oracle) -> float:
    """The 28x28 masks pasted by detectron2 itself at the ground-truth boxes, COCOeval on those."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    d2.import_detectron2()
    from detectron2.layers.mask_ops import paste_masks_in_image
    from detectron2.structures import Boxes

    results = []
    for img in images:
        own = [a for a in anns if a["image_id"] == img["id"]]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in own])
        masks = torch.from_numpy(oracle[img["id"]][1][3][: len(own)])
        pasted = paste_masks_in_image(masks, Boxes(boxes), (img["height"], img["width"])).numpy()
        for ann, mask in zip(own, pasted):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            results.append({"image_id": img["id"], "category_id": ann["category_id"], "score": 1.0,
                            "segmentation": rle})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        ev = COCOeval(gt, gt.loadRes(results), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return 100.0 * ev.stats[0]


def test_oracle_scores_bbox_100_and_the_28x28_segm_ap(coco):
    path, images, anns = coco
    oracle = _oracle(anns, images)
    metrics = _evaluate(path, oracle)
    expected = _expected_segm_ap(path, images, anns, oracle)
    assert metrics["bbox_mAP"] == pytest.approx(100.0, abs=1e-9)
    assert 60.0 < expected < 99.5  # the 28x28 resolution loss is real, and small
    assert metrics["segm_mAP"] == pytest.approx(expected, abs=1e-6)


def test_oracle_without_one_object_scores_lower(coco):
    path, images, anns = coco
    oracle = _oracle(anns, images)
    full = _evaluate(path, oracle)
    less = _evaluate(path, oracle, drop_row=1)
    assert less["bbox_mAP"] < full["bbox_mAP"] and less["segm_mAP"] < full["segm_mAP"]


def test_oracle_masks_are_the_polygons_at_28x28(coco):
    """The oracle's mask is the annotation rasterised over its box: the star's core is set, the
    box corners (between the spikes) are not."""
    path, images, anns = coco
    entry = _entries(images[:1])[images[0]["id"]]
    outs = tool.oracle_outputs([anns[0]], entry, "onnx")
    fill = outs[3][0].mean()
    assert 0.2 < fill < 0.8 and outs[3][0][14, 14] == 1.0 and outs[3][0][0, 0] == 0.0
    assert outs[1][0] == 1.0 and outs[1][1:].max() == 0.0
