"""`make efficientdet-om`: the atc command from the data file, clear errors without CANN."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from common.spec import load_spec
from tests.makehelpers import fake_cann
from tests.makehelpers import run_make as make

SPEC = load_spec("efficientdet")

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")


def _placeholder_onnx(path: Path, batch: int = 1) -> None:
    """The export's input and output names and shapes: all that the om step reads from the graph."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 512, 512])
    names = [o.name for o in SPEC.outputs_for("ascend")]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [batch, 3, 512, 512]) for n in names]
    g = helper.make_graph([helper.make_node("Identity", ["input"], [n]) for n in names], "g", [x], outs)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(g), path)


def test_without_cann_prints_the_exact_atc_command(tmp_path):
    onnx_path = tmp_path / "efficientdet" / "onnx" / "efficientdet_ascend_bs4.onnx"
    _placeholder_onnx(onnx_path, batch=4)
    proc = make("efficientdet-om", "CHIP=310P3", "BATCH=4", out=tmp_path)
    assert proc.returncode != 0
    assert "error: atc not found" in proc.stderr
    cmd = next(line for line in proc.stderr.splitlines() if line.startswith("atc "))
    assert f"--model={onnx_path}" in cmd
    assert "--input_shape=input:4,3,512,512" in cmd and "--soc_version=Ascend310P3" in cmd
    assert "--precision_mode=allow_mix_precision" in cmd and "--modify_mixlist=" in cmd
    assert not (tmp_path / "efficientdet" / "om").exists() or not any((tmp_path / "efficientdet" / "om").glob("*.om"))


def test_wrong_chip_names_the_valid_ones(tmp_path):
    proc = make("efficientdet-om", "CHIP=311", out=tmp_path)
    assert proc.returncode != 0
    assert "unknown CHIP '311'" in proc.stderr and "310P3" in proc.stderr and "910B4" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unsupported_batch_is_refused(tmp_path):
    proc = make("efficientdet-om", "CHIP=310P3", "BATCH=3", out=tmp_path)
    assert proc.returncode != 0 and "BATCH=3 is not supported" in proc.stderr and "valid: 1, 4, 8" in proc.stderr


def test_om_records_the_onnx_and_checkpoint_it_came_from(tmp_path):
    """With a CANN-like toolkit (a fake atc writing the .om), the .om gets a source record for reports."""
    onnx_path = tmp_path / "efficientdet" / "onnx" / "efficientdet_ascend_bs1.onnx"
    _placeholder_onnx(onnx_path)
    weights = {"file": "/w/d0.pth", "sha256": "ab" * 32, "verified": True}
    onnx_path.with_suffix(".parity.json").write_text(json.dumps({"ok": True, "weights": weights}))
    fake_cann(tmp_path / "no-cann")  # run_make points ASCEND_TOOLKIT_HOME here
    proc = make("efficientdet-om", "CHIP=310P3", out=tmp_path)
    assert proc.returncode == 0, proc.stderr
    om = tmp_path / "efficientdet" / "om" / "efficientdet_ascend_bs1_Ascend310P3.om"
    record = json.loads(om.with_suffix(".source.json").read_text())
    assert record == {"onnx": str(onnx_path), "weights": weights}
