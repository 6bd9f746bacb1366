"""Export on a 192x192 canvas with 64 candidates (the same code as 1344 / 1000): static graph,
the recipe's outputs, parity with many real detections, the RoI Concat fix found by structure."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from common import graph
from common.errors import ToolError
from common.fsutil import read_json
from common.weights import file_digest
from tests.retinamask.conftest import SMALL_TOP_K
from tools.retinamask import tool


def _fp16_concats(model: onnx.ModelProto) -> list:
    """Concat nodes whose every input is a Cast to float16 (what the fix leaves)."""
    casts = {n.output[0] for n in model.graph.node
             if n.op_type == "Cast" and helper.get_attribute_value(n.attribute[0]) == TensorProto.FLOAT16}
    return [n for n in model.graph.node if n.op_type == "Concat" and n.input and all(i in casts for i in n.input)]


@pytest.mark.parametrize("target", ["ascend", "onnx"])
def test_export_is_static_with_the_recipe_outputs_and_parity(target, export_small):
    path, parity = export_small(target)
    assert parity["ok"], parity
    model = graph.load(path)
    graph.assert_static(model)
    outputs = {o.name: o for o in model.graph.output}
    assert list(outputs) == ["boxes", "labels", "scores", "masks"]
    dims = {name: [d.dim_value for d in o.type.tensor_type.shape.dim] for name, o in outputs.items()}
    k = SMALL_TOP_K
    assert dims == {"boxes": [1, k, 4], "labels": [1, k], "scores": [1, k], "masks": [1, k, 1, 28, 28]}
    assert outputs["labels"].type.tensor_type.elem_type == TensorProto.INT32
    assert parity[f"candidates_above_{tool.INFERENCE_TH}"] >= k // 2  # real detections, not padding
    rows = {r["name"]: r for r in parity["rows"]}
    assert rows["image 0 boxes/scores/labels"]["matched"] >= k - tool.PARITY_MAX_UNMATCHED
    (masks_row,) = [r for r in parity["rows"] if r["name"].startswith("image 0 masks")]
    assert masks_row["shape"][0] >= k - tool.PARITY_MAX_UNMATCHED  # masks of (almost) every candidate compared
    assert parity["ops"]["RoiAlign"] == 3 and "NonMaxSuppression" not in parity["ops"]
    assert len(_fp16_concats(model)) == (1 if target == "ascend" else 0)


def test_export_records_the_checkpoint_sha256(export_small, checkpoint):
    path, _ = export_small("ascend")
    record = read_json(path.with_suffix(".parity.json"))["weights"]
    assert record == {"file": str(checkpoint), "sha256": file_digest(checkpoint, "sha256"), "verified": False}


def test_roi_concat_is_found_by_structure_not_by_name(export_small):
    path, _ = export_small("onnx")
    model = graph.load(path)
    for i, node in enumerate(model.graph.node):
        node.name = f"renamed_{len(model.graph.node) - i}"  # exporter names are gone
    fixed = tool.fix_roi_concat(model)
    (concat,) = _fp16_concats(fixed)
    users = [n for n in fixed.graph.node if concat.output[0] in n.input]
    assert [n.op_type for n in users] == ["Cast"]  # back to float32 for RoiAlign and the rest


def test_masks_are_compared_by_candidate_not_by_rank():
    """Tied scores come out in another order (or another tie member is cut) in another runtime."""
    ref_boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [100, 0, 120, 30], [5, 5, 9, 9]], np.float32)
    ref_labels = np.array([3, 3, 7, 3])
    order = [2, 0, 1]  # the other runtime: rows permuted, the last tied candidate replaced by another
    got_boxes = np.concatenate([ref_boxes[order] + 1e-4, [[200, 200, 210, 210]]]).astype(np.float32)
    got_labels = np.concatenate([ref_labels[order], [3]])
    pairs = tool.pair_candidates(ref_boxes, ref_labels, got_boxes, got_labels)
    assert pairs.tolist() == [[0, 1], [1, 2], [2, 0]]


def test_roi_concat_missing_is_an_error():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Concat", ["x", "x"], ["y"], axis=0)], "g", [x], [y]))
    with pytest.raises(ToolError, match="expected one RoI Concat feeding RoiAlign"):
        tool.fix_roi_concat(model)
