"""`make maskrcnn-om CHIP=310P3`: the ATC command with out nodes named by the graph's outputs
(never the recipe's node ids such as Cast_1673:0)."""

from __future__ import annotations

import shutil

import pytest

from tests.makehelpers import run_make as make
from tests.makehelpers import stand_in_graph
from tools.maskrcnn import tool

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")
INPUT = [1, 3, 1344, 1344]


def test_maskrcnn_om_prints_the_atc_command_with_named_out_nodes(tmp_path):
    onnx_path = stand_in_graph(tmp_path / "maskrcnn" / "onnx" / "maskrcnn_ascend_bs1.onnx", INPUT,
                               list(tool.OUTPUT_NAMES))
    proc = make("maskrcnn-om", "CHIP=310P3", out=tmp_path)
    assert proc.returncode != 0 and "error: atc not found" in proc.stderr
    cmd = next(line for line in proc.stderr.splitlines() if line.startswith("atc "))
    assert cmd.split() == ["atc", "--framework=5", f"--model={onnx_path}", "--input_format=NCHW",
                           "--input_shape=input:1,3,1344,1344", "--soc_version=Ascend310P3",
                           f"--output={tmp_path}/maskrcnn/om/maskrcnn_ascend_bs1_Ascend310P3", "--log=error",
                           '--out_nodes="boxes;scores;classes;masks"']


def test_maskrcnn_om_refuses_the_recipe_node_ids(tmp_path):
    stand_in_graph(tmp_path / "maskrcnn" / "onnx" / "maskrcnn_ascend_bs1.onnx", INPUT,
                   ["Cast_1673", "Gather_1676", "Reshape_1667", "Slice_1706"])
    proc = make("maskrcnn-om", "CHIP=310P3", out=tmp_path)
    assert proc.returncode != 0 and "expected boxes, scores, classes, masks" in proc.stderr
    assert "Traceback" not in proc.stderr
