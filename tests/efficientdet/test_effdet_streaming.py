"""Streaming evaluation (no tensor or result files) gives the file-based steps' detections and report,
through the real CLI for the stream; and refuses what it cannot run, before any work."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from common import aipp, pipeline
from common.demococo import make_mini_coco
from common.errors import ToolError
from common.report import Provenance
from common.spec import REPO_ROOT
from common.streaming import stream_evaluate
from tools.efficientdet import tool


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_mini_coco(tmp_path_factory.mktemp("stream") / "coco", n_images=3, seed=8)


def _file_based(onnx_path, coco, tmp_path, input_format="float"):
    prep = tmp_path / f"data_{input_format}"
    pipeline.preprocess_dataset(tool, coco, prep, input_format=input_format)
    results = pipeline.run_inference(tool.SPEC, onnx_path, prep, tmp_path / f"infer_{input_format}",
                                     backend="onnxruntime", batch=1)
    report = pipeline.evaluate(tool, prep, results, tmp_path / f"eval_{input_format}", target="ascend",
                               provenance=Provenance.capture("onnxruntime", "cpu", 1))
    return report, (tmp_path / f"eval_{input_format}" / "detections.json").read_bytes()


def test_stream_cli_equals_the_file_based_steps(exported_bs1, coco, tmp_path):
    onnx_path, _ = exported_bs1
    report, detections = _file_based(onnx_path, coco, tmp_path)
    out = tmp_path / "stream"
    done = subprocess.run([sys.executable, "-m", "tools.efficientdet", "stream", "--model", str(onnx_path),
                           "--data", str(coco), "--out", str(out), "--workers", "2"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (out / "detections.json").read_bytes() == detections
    streamed = json.loads((out / "report.json").read_text())
    assert streamed["metrics"] == json.loads((tmp_path / "eval_float" / "report.json").read_text())["metrics"]
    assert any(n.startswith("streaming (onnxruntime, batch 1") for n in streamed["notes"])
    assert not list(out.glob("*.bin"))  # nothing but the report and the detections
    again = subprocess.run([sys.executable, "-m", "tools.efficientdet", "stream", "--model", str(onnx_path),
                            "--data", str(coco), "--out", str(out)], cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 2 and "already exists: pass --force" in again.stderr


def test_stream_with_uint8_input_equals_the_file_based_uint8_steps(exported_bs1, coco, tmp_path):
    onnx_path, _ = exported_bs1
    u8_onnx = aipp.write_uint8_onnx(tool.SPEC, onnx_path, tmp_path / "effdet_uint8.onnx")
    report, detections = _file_based(u8_onnx, coco, tmp_path, "uint8")
    streamed = stream_evaluate(tool, coco, u8_onnx, tmp_path / "stream", target="ascend", input_format="uint8",
                               provenance=Provenance.capture("onnxruntime", "cpu", 1))
    assert (tmp_path / "stream" / "detections.json").read_bytes() == detections
    assert json.dumps(streamed.metrics) == json.dumps(report.metrics)  # NaN (no small objects) included


def test_stream_refuses_a_model_for_another_input_before_any_work(exported_bs1, coco, tmp_path):
    onnx_path, _ = exported_bs1
    with pytest.raises(ToolError, match=r"takes float32 \[3, 512, 512\] per image but INPUT=uint8"):
        stream_evaluate(tool, coco, onnx_path, tmp_path / "s", target="ascend", input_format="uint8",
                        provenance=Provenance.capture("onnxruntime", "cpu", 1))
    assert not (tmp_path / "s").exists()
