"""Equal initializers merged by common.graph instead of onnxsim's crashing pass.

onnxsim 0.4.36's ``eliminate_duplicate_initializer`` reads a freed Value and crashed the FCOS
``TARGET=onnx`` export at 800x1333 (tests/fcos/test_fcos_full_size.py, slow tier); these tests
check that the replacement keeps the graph's results and what it must not merge.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from common import graph


def _three_topk_model() -> onnx.ModelProto:
    """x (1, 10) -> three TopK(k=3) branches, each k its own initializer (as exporters write them),
    plus an initializer that is also a graph input (an overridable default)."""
    nodes, inits = [], []
    for i in range(3):
        inits.append(numpy_helper.from_array(np.array([3], np.int64), f"k{i}"))
        inits.append(numpy_helper.from_array(np.full((1, 10), float(i), np.float32), f"bias{i}"))
        nodes.append(helper.make_node("Add", ["x", f"bias{i}"], [f"a{i}"]))
        nodes.append(helper.make_node("TopK", [f"a{i}", f"k{i}"], [f"v{i}", f"idx{i}"]))
    inits.append(numpy_helper.from_array(np.array([3], np.int64), "k_default"))
    nodes.append(helper.make_node("TopK", ["x", "k_default"], ["v_default", "idx_default"]))
    nodes.append(helper.make_node("Concat", ["v0", "v1", "v2", "v_default"], ["y"], axis=1))
    g = helper.make_graph(
        nodes, "three_topk",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10]),
         helper.make_tensor_value_info("k_default", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 12])], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]


def test_equal_initializers_are_shared_and_results_unchanged():
    model = _three_topk_model()
    merged, removed = graph.merge_duplicate_initializers(model)
    assert removed == 2  # k1, k2 -> k0; the biases differ; k_default is a graph input
    names = {t.name for t in merged.graph.initializer}
    assert {"k0", "k_default"} <= names and not {"k1", "k2"} & names
    assert [n.input[1] for n in merged.graph.node if n.op_type == "TopK"] == ["k0", "k0", "k0", "k_default"]
    onnx.checker.check_model(merged)
    x = np.random.RandomState(0).rand(1, 10).astype(np.float32)
    np.testing.assert_array_equal(_run(merged, x), _run(model, x))
    assert len(model.graph.initializer) == 7  # the caller's model is not modified


def test_simplify_still_leaves_no_duplicate_constants():
    model = _three_topk_model()
    simple = graph.simplify(model, {"x": [1, 10]})
    ks = [t for t in simple.graph.initializer if numpy_helper.to_array(t).tolist() == [3] and t.name != "k_default"]
    assert len(ks) == 1
    x = np.random.RandomState(1).rand(1, 10).astype(np.float32)
    np.testing.assert_array_equal(_run(simple, x), _run(model, x))
    assert "eliminate_duplicate_initializer" in graph.SKIPPED_ONNXSIM_PASSES
