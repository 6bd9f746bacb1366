"""The generic pipeline on a VOC2012-layout dataset: preprocessing, result files, mIoU (oracle = 100)."""

from __future__ import annotations

import textwrap
from types import SimpleNamespace

import numpy as np
import pytest

from common import pipeline
from common.dataset import VocDataset, open_dataset, read_label_png
from common.demovoc import make_mini_voc, voc_palette
from common.errors import ToolError
from common.manifest import Manifest
from common.report import provenance
from common.spec import load_spec

SEG_TOML = """
name = "tinyseg"
title = "Tiny segmentation model"
task = "semantic-segmentation"
dataset = "voc2012-val"

[weights]
url = "https://example.invalid/tinyseg-0123abcd.pth"
sha256_prefix = "0123abcd"

[input]
name = "input"
shape = [3, 64, 64]
dtype = "float16"
mean = [0.0, 0.0, 0.0]
std = [1.0, 1.0, 1.0]
placement = "center"
batch_sizes = [1]

[[outputs.ascend]]
name = "seg"
dtype = "int32"
shape = [64, 64]

[published]
tolerance_rel = 0.01
[[published.accuracy]]
metric = "mIoU"
value = 76.18
backend = "om"
device = "Ascend 310"
source = "test"
"""


@pytest.fixture
def seg_tool(tmp_path):
    """Centred letterbox that never upscales (images up to 64 px are only padded, so an oracle is exact);
    postprocess crops the padding and resizes back (nearest)."""
    import cv2

    path = tmp_path / "tinyseg" / "model.toml"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(SEG_TOML))
    spec = load_spec(path)
    size = spec.input.shape[1]

    def geometry(h, w):
        s = min(1.0, size / h, size / w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        return s, nh, nw, (size - nh) // 2, (size - nw) // 2

    def preprocess(bgr):
        s, nh, nw, top, left = geometry(*bgr.shape[:2])
        canvas = np.zeros((size, size, 3), np.float32)
        canvas[top:top + nh, left:left + nw] = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_NEAREST)
        return canvas.transpose(2, 0, 1), s, (left, top, size - nw - left, size - nh - top)

    def postprocess(outputs, entry, target):
        w, h = entry.orig_size
        left, top, right, bottom = entry.pad
        crop = outputs[0][top:size - bottom, left:size - right].astype(np.uint8)
        return cv2.resize(crop, (w, h), interpolation=cv2.INTER_NEAREST)

    return SimpleNamespace(SPEC=spec, preprocess=preprocess, postprocess=postprocess, geometry=geometry)


def test_voc_layout_is_read_with_its_label_maps(tmp_path):
    root = make_mini_voc(tmp_path / "voc", n_images=3, seed=1)
    ds = open_dataset("voc2012-val", root)
    assert isinstance(ds, VocDataset) and [im.image_id for im in ds.images] == [0, 1, 2]
    label = read_label_png(ds.images[0].label_path)
    assert label.dtype == np.uint8 and label.ndim == 2
    assert 255 in label and 0 in label and set(np.unique(label)) <= set(range(21)) | {255}
    assert len(voc_palette()) == 768 and voc_palette()[3:6] == [128, 0, 0]  # class 1 is dark red in VOC


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "ImageSets" / "Segmentation" / "val.txt").unlink(), "split list .* not found"),
    (lambda r: (r / "ImageSets" / "Segmentation" / "val.txt").write_text("\n"), "names no images"),
    (lambda r: next((r / "SegmentationClass").glob("*.png")).unlink(), "label map.* missing"),
    (lambda r: __import__("shutil").rmtree(r / "JPEGImages"), "JPEGImages not found"),
])
def test_voc_problems_are_one_line_errors(tmp_path, damage, message):
    root = make_mini_voc(tmp_path / "voc", n_images=2)
    damage(root)
    with pytest.raises(ToolError, match=message):
        VocDataset.open(root)


def test_unreadable_label_maps_are_named(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ToolError, match="label map .*x.png is corrupt"):
        read_label_png(bad)
    import cv2

    cv2.imwrite(str(tmp_path / "rgb.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ToolError, match="RGB image, not class indices"):
        read_label_png(tmp_path / "rgb.png")


def test_oracle_label_maps_through_the_pipeline_give_miou_100(seg_tool, tmp_path):
    root = make_mini_voc(tmp_path / "voc", n_images=4, seed=2, size_range=(33, 64))  # odd paddings too
    prep = tmp_path / "prep"
    manifest = pipeline.preprocess_dataset(seg_tool, root, prep, workers=2)
    assert manifest.dtype == "float16" and len(manifest.entries) == 4
    results = tmp_path / "results"
    results.mkdir()
    size = seg_tool.SPEC.input.shape[1]
    import cv2

    for entry, image in zip(manifest.entries, VocDataset.open(root).images):
        gt = read_label_png(image.label_path)
        _, nh, nw, top, left = seg_tool.geometry(*gt.shape)
        canvas = np.zeros((size, size), np.int32)  # the model's output: labels on the padded canvas
        canvas[top:top + nh, left:left + nw] = cv2.resize(gt, (nw, nh), interpolation=cv2.INTER_NEAREST)
        canvas[canvas == 255] = 0  # a model never predicts "ignore"
        canvas.tofile(results / f"{entry.stem}_0.bin")
    report = pipeline.evaluate(seg_tool, prep, results, tmp_path / "eval", target="ascend",
                               provenance=provenance("onnxruntime", 1, "cpu"))
    assert report.metrics["mIoU"] == 100.0 and report.metrics["aAcc"] == 100.0
    assert any(e.pad[1] != e.pad[3] or e.pad[0] != e.pad[2] for e in manifest.entries)  # uneven padding covered
    assert report.dataset.num_images == 4 and not report.dataset.partial
    assert not (tmp_path / "eval" / "detections.json").exists()
    assert (tmp_path / "eval" / "report.md").read_text().count("mIoU") >= 1
    assert Manifest.load(prep).meta["annotation_file"].endswith("val.txt")
