"""Export: the adaptive-pool fix, static fp16-in / int32-out graph, parity with PyTorch."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch

from common import graph
from common.atc import graph_io
from common.errors import ToolError
from common.parity import parity_input, run_onnx
from tests.toolhelpers import canvas
from tools.pspnet import tool


@pytest.mark.parametrize("size_in, size_out", [(63, 1), (63, 2), (63, 3), (63, 6), (17, 6), (16, 3), (5, 6)])
def test_matmul_pooling_equals_adaptive_avg_pool(size_in, size_out):
    x = torch.randn(2, 4, size_in, size_in + 1)
    ref = torch.nn.functional.adaptive_avg_pool2d(x, size_out)
    np.testing.assert_allclose(tool.MatmulAdaptiveAvgPool2d(size_out)(x).numpy(), ref.numpy(), atol=1e-6)


class _Pyramid(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = torch.nn.AdaptiveAvgPool2d(6)

    def forward(self, x):
        return self.pool(x)


def _export(module, x):
    buffer = io.BytesIO()
    torch.onnx.export(module, x, buffer, opset_version=11, input_names=["x"], output_names=["y"])
    return buffer.getvalue()


def test_the_fix_is_needed_and_works_only_while_exporting():
    module, x = _Pyramid().eval(), torch.randn(1, 3, 63, 63)
    with pytest.raises(RuntimeError, match="(?i)adaptive"):  # torch 1.8 refuses bins that do not divide the input
        _export(module, x)
    with tool.matmul_adaptive_pools(module) as n:
        data = _export(module, x)
    assert n == 1 and "forward" not in module.__dict__  # restored: the class's own forward again
    ops = {node.op_type for node in onnx.load_from_string(data).graph.node}
    assert "MatMul" in ops and not ops & {"AveragePool", "GlobalAveragePool"}
    got = run_onnx(onnx.load_from_string(data), {"x": x.numpy()})["y"]
    np.testing.assert_allclose(got, module(x).detach().numpy(), atol=1e-6)


def test_small_canvas_export_is_static_fp16_in_int32_out_and_matches_pytorch(export_small, small_canvas):
    path, parity = export_small(1)
    assert parity["ok"] and parity["rows"][0]["mismatch_fraction"] <= tool.PARITY_MISMATCH
    assert parity["matmul_adaptive_pools"] == 4 and parity["input"]["dtype"] == "float16"
    model = graph.load(path)
    graph.assert_static(model)
    assert [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input] == [("input", onnx.TensorProto.FLOAT16)]
    out = model.graph.output[0]
    assert out.name == "seg" and out.type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, 129, 128]
    assert "AveragePool" not in parity["ops"] and parity["ops"]["MatMul"] == 8
    assert graph_io(tool.SPEC, path, target="ascend", batch=1) == ("input", ["seg"])


def test_batch_16_export_keeps_images_apart(export_small):
    path, parity = export_small(16)
    assert parity["ok"] and parity["input"]["shape"] == [16, 3, 129, 128]
    with canvas(tool, 129, 128):
        x = parity_input(tool.SPEC, 16, **tool.PARITY_BAND).numpy()
    seg = run_onnx(path, {"input": x})["seg"]
    one = run_onnx(export_small(1)[0], {"input": x[:1]})["seg"]
    assert seg.shape == (16, 129, 128) and np.array_equal(seg[0], one[0])
    assert len(np.unique(seg)) > 1  # random weights still predict several classes


def test_export_refuses_unknown_targets_and_batches(checkpoint, tmp_path):
    with pytest.raises(ToolError, match="unknown TARGET"):
        tool.export(checkpoint, tmp_path / "x.onnx", batch=1, target="tensorrt")
    with pytest.raises(ToolError, match="BATCH=3 is not supported"):
        tool.export(checkpoint, tmp_path / "x.onnx", batch=3, target="ascend")


def test_checkpoint_keys_and_shapes_are_checked(checkpoint, tmp_path):
    saved = torch.load(str(checkpoint))
    assert set(saved) == {"meta", "state_dict"} and saved["meta"]["CLASSES"][0] == "background"
    state = dict(saved["state_dict"])
    del state["decode_head.conv_seg.bias"]
    torch.save({"meta": saved["meta"], "state_dict": state}, str(tmp_path / "missing.pth"))
    with pytest.raises(ToolError, match="decode_head.conv_seg.bias"):
        tool.load_model(tmp_path / "missing.pth")
    state = dict(saved["state_dict"])
    state["decode_head.conv_seg.weight"] = torch.zeros(19, 512, 1, 1)  # a Cityscapes head
    state["decode_head.conv_seg.bias"] = torch.zeros(19)
    torch.save({"meta": saved["meta"], "state_dict": state}, str(tmp_path / "other.pth"))
    with pytest.raises(ToolError, match="wrong shape"):
        tool.load_model(tmp_path / "other.pth")


@pytest.mark.slow
def test_full_size_export(checkpoint, tmp_path):
    parity = tool.export(checkpoint, tmp_path / "pspnet_ascend_bs1.onnx", batch=1, target="ascend")
    assert parity["ok"] and parity["input"]["shape"] == [1, 3, 500, 500]
    assert parity["rows"][0]["shape"] == [1, 500, 500]
