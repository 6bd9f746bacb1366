"""Export: graph structure per target, parity with PyTorch, and the deploy head versus upstream mmdet."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from common import graph
from common.atc import graph_io
from common.errors import ToolError
from common.parity import parity_input, run_onnx
from tools.fcos import deploy, tool

SMALL_HW = (256, 416)  # tests/fcos/conftest.py


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _dims(value) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def test_ascend_export_is_static_with_one_batch_nms_node(export_small, small_canvas):
    path, parity = export_small("ascend", 1)
    assert parity["ok"], parity
    assert parity["rows"][0]["ref_count"] > 10  # the random model really detects: NMS was exercised
    model = graph.load(path)
    assert graph.output_names(model) == ["dets", "labels"]
    assert [_dims(o) for o in model.graph.output] == [[1, 100, 5], [1, 100]]
    assert _dims(model.graph.input[0]) == [1, 3, *SMALL_HW]
    assert model.graph.output[1].type.tensor_type.elem_type == onnx.TensorProto.INT64
    nms = [n for n in model.graph.node if n.op_type == "BatchMultiClassNMS"]
    assert len(nms) == 1 and nms[0].domain == ""  # default domain, as ATC wants
    attrs = _attrs(nms[0])
    assert attrs["max_size_per_class"] == 100 and attrs["max_total_size"] == 100
    assert attrs["score_threshold"] == pytest.approx(0.05) and attrs["iou_threshold"] == pytest.approx(0.5)
    producers = {o: n for n in model.graph.node for o in n.output}
    for name in nms[0].input:  # the recipe's fp16 casts in front of the op
        assert producers[name].op_type == "Cast" and _attrs(producers[name])["to"] == onnx.TensorProto.FLOAT16
    assert "NonMaxSuppression" not in graph.op_types(model)
    assert graph_io(tool.SPEC, path, target="ascend", batch=1) == ("input", ["dets", "labels"])


def test_onnx_export_uses_standard_ops_only(export_small):
    path, parity = export_small("onnx", 1)
    assert parity["ok"], parity
    model = graph.load(path)
    assert not graph.custom_ops(model)
    assert graph.op_types(model)["NonMaxSuppression"] == 1
    onnx.checker.check_model(model)
    assert graph.output_names(model) == ["dets", "labels"]


def test_ascend_batch_4_matches_pytorch_per_image(export_small):
    path, parity = export_small("ascend", 4)
    assert parity["ok"] and len(parity["rows"]) == 4
    assert _dims(graph.load(path).graph.input[0])[0] == 4


def test_onnx_dynamic_batch_gives_each_image_its_own_result(export_small, small_canvas):
    path, parity = export_small("onnx", 1, True)
    assert parity["ok"]
    assert _dims(graph.load(path).graph.input[0])[0] == "batch"
    x = parity_input(tool.SPEC, 3, seed=7, **tool.PARITY_BAND).numpy()
    together = run_onnx(path, {"input": x})
    for i in range(3):
        alone = run_onnx(path, {"input": x[i:i + 1]})
        np.testing.assert_allclose(alone["dets"][0], together["dets"][i], atol=1e-3)
        np.testing.assert_array_equal(alone["labels"][0], together["labels"][i])


def test_dynamic_batch_is_refused_for_ascend(checkpoint, tmp_path):
    with pytest.raises(ToolError, match="dynamic batch"):
        tool.export(checkpoint, tmp_path / "x.onnx", batch=1, target="ascend", dynamic_batch=True)
    with pytest.raises(ToolError, match="TARGET"):
        tool.export(checkpoint, tmp_path / "x.onnx", batch=1, target="tensorrt")
    assert not (tmp_path / "x.onnx").exists()


def test_parity_check_catches_a_changed_graph(export_small, tmp_path, checkpoint, small_canvas):
    """The parity check can fail: scale the class-score conv's bias in the exported graph."""
    path, _ = export_small("onnx", 1)
    model = graph.load(path)
    cls_bias = next(t for t in model.graph.initializer
                    if onnx.numpy_helper.to_array(t).shape == (80,))
    arr = onnx.numpy_helper.to_array(cls_bias) + 1.0
    cls_bias.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), cls_bias.name))
    broken = graph.save(model, tmp_path / "broken.onnx")
    x = parity_input(tool.SPEC, 1, **tool.PARITY_BAND)
    ref = deploy.FCOSDeploy(tool.load_model(checkpoint), "onnx", SMALL_HW).eval()
    with torch.no_grad():
        dets, labels = ref(x)
    assert tool.parity_report(path, x, dets, labels).ok
    assert not tool.parity_report(broken, x, dets, labels).ok


def test_atc_out_nodes_refuse_other_graphs(tmp_path):
    """common.atc takes ATC's out nodes from the graph's outputs and refuses a graph that is not FCOS's."""
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    g = onnx.helper.make_graph([node], "g", [x], [y])
    path = graph.save(onnx.helper.make_model(g), tmp_path / "other.onnx")
    with pytest.raises(ToolError, match="outputs y, expected dets, labels"):
        graph_io(tool.SPEC, path, target="ascend", batch=1)


# --------------------------------------------------------------------------- versus upstream mmdet

def _upstream_inputs(checkpoint):
    model = tool.load_model(checkpoint)
    x = parity_input(tool.SPEC, 1, seed=3, **tool.PARITY_BAND)
    meta = [{"img_shape": (*SMALL_HW, 3), "scale_factor": np.ones(4, np.float32), "ori_shape": (*SMALL_HW, 3),
             "pad_shape": (*SMALL_HW, 3)}]
    return model, x, meta


def test_candidates_equal_upstream_get_bboxes_without_nms(checkpoint, small_canvas):
    model, x, meta = _upstream_inputs(checkpoint)
    head = deploy.FCOSDeploy(model, "onnx", SMALL_HW)
    with torch.no_grad():
        boxes, scores = head.candidates(x)
        outs = model.bbox_head(model.extract_feat(x))
        up_boxes, up_scores, up_ctr = model.bbox_head.get_bboxes(*outs, meta, with_nms=False)[0]
    torch.testing.assert_allclose(boxes[0], up_boxes, rtol=0, atol=1e-4)
    torch.testing.assert_allclose(scores[0], up_scores[:, :80] * up_ctr[:, None], rtol=1e-6, atol=1e-7)


def test_detections_equal_upstream_simple_test_at_score_threshold_zero(checkpoint, monkeypatch, small_canvas):
    """With no score threshold, threshold-then-multiply (mmdet) and multiply-then-threshold agree."""
    from common.parity import compare_detections

    model, x, meta = _upstream_inputs(checkpoint)
    model.bbox_head.test_cfg.score_thr = 0.0
    monkeypatch.setattr(deploy, "SCORE_THR", 0.0)
    with torch.no_grad():
        upstream = model.simple_test(x, meta, rescale=False)[0]  # per-class arrays (n, 5)
        for target in ("ascend", "onnx"):
            dets, labels = deploy.FCOSDeploy(model, target, SMALL_HW)(x)
            up_dets = np.concatenate(upstream)
            up_labels = np.concatenate([np.full(len(a), c) for c, a in enumerate(upstream)])
            result = compare_detections(up_dets[:, :4], up_dets[:, 4], up_labels,
                                        dets[0, :, :4], dets[0, :, 4], labels[0],
                                        iou_thr=0.999, score_atol=1e-6)
            assert result.ok and result.matched == 100, (target, result.format())


@pytest.mark.slow
def test_full_size_ascend_export(checkpoint, tmp_path):
    parity = tool.export(checkpoint, tmp_path / "fcos_ascend_bs1.onnx", batch=1, target="ascend")
    assert parity["ok"] and parity["input"]["shape"] == [1, 3, 800, 1333]
    # P3-P5 have more than nms_pre = 1000 points at 800x1333: one TopK each
    assert graph.op_types(graph.load(tmp_path / "fcos_ascend_bs1.onnx"))["TopK"] == 3
