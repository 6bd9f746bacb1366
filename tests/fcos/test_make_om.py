"""`make fcos-om CHIP=310P3` — the project's headline example: the right atc command."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from tests.makehelpers import REPO
from tests.makehelpers import run_make as make

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")


def _graph_with_outputs(path: Path, names: list[str]) -> None:
    """A stand-in for the exported graph: only its input and output names matter to ATC's flags."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 800, 1333])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 800, 1333]) for n in names]
    nodes = [helper.make_node("Identity", ["input"], [n]) for n in names]
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], outs)), path)


def test_fcos_om_builds_the_atc_command_from_the_graph(tmp_path):
    onnx_path = tmp_path / "fcos" / "onnx" / "fcos_ascend_bs1.onnx"
    _graph_with_outputs(onnx_path, ["dets", "labels"])
    proc = make("fcos-om", "CHIP=310P3", out=tmp_path)
    assert proc.returncode != 0 and "error: atc not found" in proc.stderr
    cmd = next(line for line in proc.stderr.splitlines() if line.startswith("atc "))
    expected = ["atc", "--framework=5", f"--model={onnx_path}", "--input_format=NCHW",
                "--input_shape=input:1,3,800,1333", "--soc_version=Ascend310P3",
                f"--output={tmp_path}/fcos/om/fcos_ascend_bs1_Ascend310P3", "--log=error", '--out_nodes="dets;labels"']
    assert cmd.split() == expected


def test_fcos_om_refuses_a_graph_with_other_outputs(tmp_path):
    _graph_with_outputs(tmp_path / "fcos" / "onnx" / "fcos_ascend_bs1.onnx", ["Cast_1673", "Gather_1676"])
    proc = make("fcos-om", "CHIP=310P3", out=tmp_path)
    assert proc.returncode != 0 and "expected dets, labels" in proc.stderr and "Traceback" not in proc.stderr


def test_fcos_om_before_export_still_shows_the_command(tmp_path):
    proc = make("fcos-om", "CHIP=910B4", out=tmp_path)
    assert proc.returncode != 0 and "run `make fcos-onnx` first" in proc.stderr
    assert "--soc_version=Ascend910B4" in proc.stderr and '--out_nodes="dets;labels"' in proc.stderr


def test_cli_rejects_unknown_target_and_backend(tmp_path):
    run = [sys.executable, "-m", "tools.fcos"]
    proc = subprocess.run(run + ["export", "--out", str(tmp_path), "--target", "tensorrt"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown TARGET 'tensorrt' (valid: ascend, onnx)" in proc.stderr
    proc = subprocess.run(run + ["infer", "--model", str(tmp_path / "m.onnx"), "--prep", str(tmp_path),
                                 "--out", str(tmp_path), "--backend", "acl"], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "unknown BACKEND 'acl' (valid: onnxruntime, ais_bench)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_dynamic_batch_only_for_the_portable_target(tmp_path):
    run = [sys.executable, "-m", "tools.fcos"]
    ckpt = tmp_path / "random.pth"
    assert subprocess.run(run + ["checkpoint", "--out", str(ckpt)], cwd=REPO).returncode == 0
    proc = subprocess.run(run + ["export", "--out", str(tmp_path), "--target", "ascend", "--dynamic-batch",
                                 "--weights", str(ckpt), "--no-verify"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "static" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("*.onnx"))
