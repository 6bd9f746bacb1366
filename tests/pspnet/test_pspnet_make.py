"""`make pspnet-om` / `make pspnet-data`: the recipe's atc command, VOC data through make."""

from __future__ import annotations

import shutil

import onnx
import pytest
from onnx import TensorProto, helper

from common.demovoc import make_mini_voc
from tests.makehelpers import run_make as make

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")


def _graph(path, output_name="seg"):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT16, [16, 3, 500, 500])
    y = helper.make_tensor_value_info(output_name, TensorProto.FLOAT16, [16, 3, 500, 500])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Identity", ["input"], [output_name])], "g",
                                                  [x], [y])), path)


def test_om_command_is_the_recipes_with_out_nodes_from_the_graph(tmp_path):
    onnx_path = tmp_path / "pspnet" / "onnx" / "pspnet_ascend_bs16.onnx"
    _graph(onnx_path)
    proc = make("pspnet-om", "CHIP=310", "BATCH=16", out=tmp_path)
    assert proc.returncode != 0 and "error: atc not found" in proc.stderr
    cmd = next(line for line in proc.stderr.splitlines() if line.startswith("atc ")).split()
    assert cmd == ["atc", "--framework=5", f"--model={onnx_path}", "--input_format=NCHW",
                   "--input_shape=input:16,3,500,500", "--soc_version=Ascend310",
                   f"--output={tmp_path}/pspnet/om/pspnet_ascend_bs16_Ascend310", "--log=error", "--out_nodes=seg",
                   "--input_fp16_nodes=input"]
    _graph(onnx_path, "ArgMax_412")
    proc = make("pspnet-om", "CHIP=310", "BATCH=16", out=tmp_path)
    assert proc.returncode != 0 and "expected seg" in proc.stderr and "Traceback" not in proc.stderr


def test_data_step_takes_a_voc_root_and_names_what_is_missing(tmp_path):
    root = make_mini_voc(tmp_path / "VOC2012", n_images=2)
    proc = make("pspnet-data", f"DATA={root}", out=tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "pspnet" / "data" / "manifest.json").is_file()
    proc = make("pspnet-data", f"DATA={tmp_path / 'coco'}", out=tmp_path / "out2")
    assert proc.returncode == 2 and "DATA=<VOC2012 root>" in proc.stderr
