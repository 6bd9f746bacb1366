"""`make retinamask-om CHIP=310P3`: the atc command from the exported graph, as for every tool."""

from __future__ import annotations

import shutil

import pytest

from tests.makehelpers import run_make as make
from tests.makehelpers import stand_in_graph

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")
INPUT = [1, 3, 1344, 1344]


def test_retinamask_om_builds_the_atc_command_from_the_graph(tmp_path):
    onnx_path = tmp_path / "retinamask" / "onnx" / "retinamask_ascend_bs1.onnx"
    stand_in_graph(onnx_path, INPUT, ["boxes", "labels", "scores", "masks"])
    proc = make("retinamask-om", "CHIP=310P3", out=tmp_path)
    assert proc.returncode != 0 and "error: atc not found" in proc.stderr
    cmd = next(line for line in proc.stderr.splitlines() if line.startswith("atc "))
    expected = ["atc", "--framework=5", f"--model={onnx_path}", "--input_format=NCHW",
                "--input_shape=input:1,3,1344,1344", "--soc_version=Ascend310P3",
                f"--output={tmp_path}/retinamask/om/retinamask_ascend_bs1_Ascend310P3", "--log=error",
                '--out_nodes="boxes;labels;scores;masks"']
    assert cmd.split() == expected


def test_retinamask_om_refuses_the_recipes_output_names(tmp_path):
    stand_in_graph(tmp_path / "retinamask" / "onnx" / "retinamask_ascend_bs1.onnx", INPUT,
                   ["bboxs", "labels", "scores", "masks"])  # the recipe's names
    proc = make("retinamask-om", "CHIP=310P3", out=tmp_path)
    assert proc.returncode != 0 and "expected boxes, labels, scores, masks" in proc.stderr
    assert "Traceback" not in proc.stderr
