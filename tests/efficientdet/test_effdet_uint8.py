"""INPUT=uint8 end to end: uint8 canvases (4x fewer bytes) + the ONNX prologue give EfficientDet's
float-path outputs and the same detections (its canvas is mean-filled before normalising, so the
uint8 path is exact up to float rounding; common/aipp.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common import aipp, pipeline
from common.demococo import make_mini_coco
from common.errors import ToolError
from common.report import Provenance
from common.tensors import read_tensor
from tools.efficientdet import tool


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_mini_coco(tmp_path_factory.mktemp("u8") / "coco", n_images=3, seed=5)


def _evaluate(prep, results, out):
    prov = Provenance.capture("onnxruntime", "cpu", 1, argv=["pytest"])
    report = pipeline.evaluate(tool, prep, results, out, target="ascend", provenance=prov)
    return report, json.loads((out / "detections.json").read_text())


def test_uint8_data_and_prologue_give_the_float_paths_detections(exported_bs1, coco, tmp_path):
    onnx_path, _ = exported_bs1
    float_prep, u8_prep = tmp_path / "data", tmp_path / "data_uint8"
    pipeline.preprocess_dataset(tool, coco, float_prep)
    manifest = pipeline.preprocess_dataset(tool, coco, u8_prep, input_format="uint8")
    assert manifest.dtype == "uint8" and manifest.shape == (512, 512, 3)
    assert manifest.meta["input_format"] == "uint8"
    for entry in manifest.entries:
        assert (u8_prep / entry.file).stat().st_size == 512 * 512 * 3
        canvas = read_tensor(u8_prep / entry.file, "uint8", (512, 512, 3))
        params = aipp.aipp_params(tool.SPEC.input)
        np.testing.assert_allclose(aipp.reference_aipp(canvas[None], params)[0],
                                   read_tensor(float_prep / entry.file, "float32", (3, 512, 512)),
                                   rtol=0, atol=1e-5)

    u8_onnx = aipp.write_uint8_onnx(tool.SPEC, onnx_path, tmp_path / "efficientdet_ascend_bs1_uint8.onnx")
    float_results = pipeline.run_inference(tool.SPEC, onnx_path, float_prep, tmp_path / "infer", backend="onnxruntime",
                                           batch=1)
    u8_results = pipeline.run_inference(tool.SPEC, u8_onnx, u8_prep, tmp_path / "infer_uint8", backend="onnxruntime",
                                        batch=1)
    for entry in manifest.entries:
        for k in range(len(tool.SPEC.outputs_for("ascend"))):
            a = np.fromfile(float_results / f"{entry.stem}_{k}.bin", np.float32)
            b = np.fromfile(u8_results / f"{entry.stem}_{k}.bin", np.float32)
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
    float_report, float_dets = _evaluate(float_prep, float_results, tmp_path / "eval")
    u8_report, u8_dets = _evaluate(u8_prep, u8_results, tmp_path / "eval_uint8")
    assert len(u8_dets) == len(float_dets) > 0
    assert u8_report.metrics["bbox_mAP"] == pytest.approx(float_report.metrics["bbox_mAP"], abs=0.05)


def test_float_model_on_uint8_data_is_refused_before_running(exported_bs1, coco, tmp_path):
    onnx_path, _ = exported_bs1
    prep = tmp_path / "data_uint8"
    pipeline.preprocess_dataset(tool, coco, prep, input_format="uint8")
    with pytest.raises(ToolError, match="bytes"):
        pipeline.run_inference(tool.SPEC, onnx_path, prep, tmp_path / "infer", backend="onnxruntime", batch=1)
