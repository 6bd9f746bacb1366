"""INPUT=uint8 for FCOS: uint8 canvases + the ONNX prologue (what AIPP does on the NPU) against the float
path on the same images.

Inside the image the inputs agree to float rounding; the centred letterbox's padding holds
round(mean) - mean instead of 0 (0.02, 0.05 and 0.23 on FCOS's pixel-unit B, G, R scale; common/aipp.py).
Measured here on the random-weight model: every detection matched (IoU >= 0.998, same label), scores
moved by at most 1.8e-4, just above the export's float32 parity tolerance (1e-4). The uint8 path is held
to every detection matched at the export's IoU rule and scores within UINT8_SCORE_ATOL, the stated
tolerance of this path (README: "uint8 inputs")."""

from __future__ import annotations

import numpy as np
import pytest

from common import aipp
from common.demococo import make_mini_coco
from common.manifest import Manifest
from common.parity import compare_detections
from common.pipeline import preprocess_dataset, run_inference
from tools.fcos import tool

#: scores may move this much through the padding's rounding (measured: 1.8e-4 at most); a wrong mean,
#: a swapped channel or a shifted image changes the input by tens of pixel units, not tenths
UINT8_SCORE_ATOL = 5e-4


@pytest.fixture(scope="module")
def mini_coco(tmp_path_factory):
    return make_mini_coco(tmp_path_factory.mktemp("fcos-u8-coco"), n_images=3, seed=4)


def _detections(results, stem):
    dets_spec, labels_spec = tool.SPEC.outputs_for("ascend")
    dets = np.fromfile(results / f"{stem}_0.bin", np.float32).reshape(dets_spec.shape)
    labels = np.fromfile(results / f"{stem}_1.bin", labels_spec.dtype).reshape(labels_spec.shape)
    return dets[:, :4], dets[:, 4], labels


def test_uint8_input_keeps_every_detection(export_small, mini_coco, tmp_path, small_canvas):
    onnx_path, _ = export_small("ascend", 1)
    manifest = preprocess_dataset(tool, mini_coco, tmp_path / "data")
    u8 = preprocess_dataset(tool, mini_coco, tmp_path / "data_uint8", input_format="uint8")
    assert u8.dtype == "uint8" and u8.shape == (256, 416, 3)
    assert Manifest.load(tmp_path / "data_uint8").meta["input_format"] == "uint8"
    u8_onnx = aipp.write_uint8_onnx(tool.SPEC, onnx_path, tmp_path / "fcos_uint8.onnx")
    ref = run_inference(tool.SPEC, onnx_path, tmp_path / "data", tmp_path / "f32", backend="onnxruntime", batch=1)
    got = run_inference(tool.SPEC, u8_onnx, tmp_path / "data_uint8", tmp_path / "u8", backend="onnxruntime", batch=1)
    compared = 0
    for entry in manifest.entries:
        result = compare_detections(*_detections(ref, entry.stem), *_detections(got, entry.stem),
                                    iou_thr=tool.PARITY_IOU, score_atol=UINT8_SCORE_ATOL, name=entry.stem,
                                    max_unmatched=tool.PARITY_MAX_UNMATCHED)
        print(f"{entry.stem}: {result.matched} matched, max score diff {result.max_score_diff:.2e}, "
              f"min IoU {result.min_iou:.4f}")
        assert result.ok, result
        compared += result.matched
    assert compared >= 3 * 50  # a non-trivial set of detections was compared
