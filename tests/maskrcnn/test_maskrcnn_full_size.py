"""The real input size (1344x1344, the recipe's canvas and atc --input_shape): slow on 2 cores."""

from __future__ import annotations

import onnx
import pytest

from common import graph
from tools.maskrcnn import tool


@pytest.mark.slow
@pytest.mark.parametrize("target", ["ascend", "onnx"])
def test_full_size_export_keeps_parity(target, checkpoint, tmp_path):
    out = tmp_path / f"maskrcnn_{target}_bs1.onnx"
    report = tool.export(checkpoint, out, batch=1, target=target)
    assert report["ok"], report
    assert report["input"]["shape"] == [1, 3, 1344, 1344] and report["detections"] >= 30
    model = onnx.load(str(out))
    assert graph.output_names(model) == list(tool.OUTPUT_NAMES)
    assert not graph.static_shape_report(model, include_value_info=False)
