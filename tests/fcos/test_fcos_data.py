"""Preprocessing against mmdet's own test pipeline, and postprocessing as its exact inverse."""

from __future__ import annotations

import numpy as np
import pytest

from common.contract import TARGETS
from common.errors import ToolError
from common.manifest import ManifestEntry
from tests.letterboxcases import input_rules
from tools.fcos import tool
from tools.fcos.config import TEST_PIPELINE


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    img[h // 4: h // 2, w // 3: w // 2] = (10, 200, 90)  # structure, so the resize has edges to blend
    return img


def _mmdet_test_pipeline(img: np.ndarray) -> tuple[np.ndarray, dict]:
    """mmdet 2.13's test pipeline for this config, fed an in-memory image instead of a file."""
    from mmdet.datasets.pipelines import Compose

    steps = [dict(type="LoadImageFromWebcam")]
    steps += [s for s in TEST_PIPELINE if s["type"] != "LoadImageFromFile"]
    out = Compose(steps)(dict(img=img.copy()))
    return out["img"][0].numpy(), out["img_metas"][0].data


@pytest.mark.parametrize("h, w", [(480, 640), (427, 640), (333, 500)])
def test_preprocess_matches_mmdet_test_pipeline_for_landscape_images(h, w):
    img = _image(h, w)
    with input_rules(tool, resize_rounding="round"):  # mmdet's rounding; the data file floors (recipe)
        tensor, (sx, sy), (left, top, right, bottom) = tool.preprocess(img)
    ref, meta = _mmdet_test_pipeline(img)
    new_h, new_w = meta["img_shape"][:2]
    assert tensor.shape == (3, 800, 1333) and tensor.dtype == np.float32
    # same resized size and per-axis scale as mmdet (its scale_factor is w, h, w, h)
    assert (sx, sy) == pytest.approx(tuple(meta["scale_factor"][:2]), rel=1e-6)
    assert (1333 - left - right, 800 - top - bottom) == (new_w, new_h)
    # the content region is mmdet's resized + normalised image; mmdet puts it top-left, we centre it
    assert (left, top) == ((1333 - new_w) // 2, (800 - new_h) // 2)
    content = tensor[:, top:top + new_h, left:left + new_w]
    np.testing.assert_allclose(content, ref[:, :new_h, :new_w], atol=1e-4)
    # padding is zero after normalisation (mmdet's Pad value) on every side
    mask = np.ones(tensor.shape[1:], bool)
    mask[top:top + new_h, left:left + new_w] = False
    assert not tensor[:, mask].any()
    assert not ref[:, new_h:, :].any() and not ref[:, :, new_w:].any()


def test_portrait_images_are_fitted_into_the_landscape_canvas():
    """mmdet would make a 640x480 (h x w) image 1067x800; the static 800x1333 input needs 800x600."""
    img = _image(640, 480, seed=1)
    tensor, (sx, sy), (left, top, right, bottom) = tool.preprocess(img)
    assert (sx, sy) == pytest.approx((800 / 640, 800 / 640))
    assert (top, bottom) == (0, 0) and left + right == 1333 - 600 and abs(left - right) <= 1
    _, meta = _mmdet_test_pipeline(img)
    assert meta["img_shape"][:2] == (1067, 800)  # what the dynamic-shape PyTorch test would use


def test_preprocess_refuses_non_images():
    with pytest.raises(ToolError, match="BGR uint8"):
        tool.preprocess(np.zeros((10, 10), np.uint8))
    with pytest.raises(ToolError, match="BGR uint8"):
        tool.preprocess(np.zeros((10, 10, 3), np.float32))


def _entry(img: np.ndarray, image_id: int = 7) -> ManifestEntry:
    _, scale, pad = tool.preprocess(img)
    return ManifestEntry(stem="x", source="x.jpg", file="x.bin", orig_size=(img.shape[1], img.shape[0]),
                         scale=scale, pad=pad, image_id=image_id)


@pytest.mark.parametrize("target", TARGETS)
def test_postprocess_inverts_oracle_outputs(target):
    entry = _entry(_image(300, 520))
    anns = [{"bbox": [10.5, 20.0, 100.0, 50.25], "category_id": 90, "iscrowd": 0},
            {"bbox": [0.0, 0.0, 520.0, 300.0], "category_id": 1, "iscrowd": 0},
            {"bbox": [5.0, 5.0, 10.0, 10.0], "category_id": 3, "iscrowd": 1}]
    dets, labels = tool.oracle_outputs(anns, entry, target)
    assert dets.shape == (100, 5) and dets.dtype == np.float32 and labels.dtype == np.int64
    assert (dets[:, 4] > 0).sum() == 2  # the crowd region is not a detection target
    # boxes live in the centred canvas
    assert dets[1, 0] == pytest.approx(entry.pad[0]) and dets[1, 1] == pytest.approx(entry.pad[1])
    results = tool.postprocess([dets, labels], entry, target)
    assert [r["category_id"] for r in results] == [90, 1]
    assert all(r["image_id"] == 7 and r["score"] == 1.0 for r in results)
    np.testing.assert_allclose(results[0]["bbox"], anns[0]["bbox"], atol=1e-3)
    np.testing.assert_allclose(results[1]["bbox"], anns[1]["bbox"], atol=1e-3)


def test_postprocess_clips_to_the_image_and_checks_labels():
    entry = _entry(_image(300, 520))
    dets = np.zeros((100, 5), np.float32)
    labels = np.zeros(100, np.int64)
    dets[0] = (0, 0, 1333, 800, 0.9)  # the whole canvas, padding included
    res = tool.postprocess([dets, labels], entry, "ascend")
    assert len(res) == 1 and res[0]["bbox"] == pytest.approx([0, 0, 520, 300])
    labels[0] = 80
    with pytest.raises(ToolError, match="class index 80"):
        tool.postprocess([dets, labels], entry, "ascend")
    with pytest.raises(ToolError, match="2 outputs"):
        tool.postprocess([dets], entry, "ascend")
    not_coco = [{"id": 5, "bbox": [1.0, 1.0, 5.0, 5.0], "category_id": 12, "iscrowd": 0}]  # 12: unused by COCO
    with pytest.raises(ToolError, match="annotation 5 has category_id 12, which is not one of COCO's 80"):
        tool.oracle_outputs(not_coco, entry, "ascend")
