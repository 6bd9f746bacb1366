"""DEVICE=0,1,...: one shard per device in its own process, merged into the result directory a single
run writes (byte for byte), with the measured aggregate rate beside each device's figures."""

from __future__ import annotations

import numpy as np
import pytest

from common.backends import make_backend
from common.errors import ToolError
from common.fsutil import read_json
from common.sharding import ShardedRunner, parse_devices, shard


def _tiny_model(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"]), helper.make_node("ReduceSum", ["y"], ["s"], keepdims=0)],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.full((1, 3, 4), 3.0, np.float32), "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.save(model, path)
    return path


@pytest.fixture
def inputs(tmp_path):
    rng = np.random.default_rng(0)
    files = []
    for i in range(7):
        f = tmp_path / "prep" / f"img{i}.bin"
        f.parent.mkdir(exist_ok=True)
        rng.standard_normal((3, 4)).astype(np.float32).tofile(f)
        files.append(f)
    return files


def test_sharded_results_equal_one_run_byte_for_byte(tmp_path, inputs):
    model = _tiny_model(tmp_path / "tiny.onnx")
    one = make_backend("onnxruntime", model, 0).run(inputs, tmp_path / "one", "tiny_onnxruntime_bs1", 1)
    many = ShardedRunner("onnxruntime", model, [0, 1, 2]).run(inputs, tmp_path / "many", "tiny_onnxruntime_bs1", 1)
    names = sorted(p.name for p in one.iterdir())
    assert names == sorted(p.name for p in many.iterdir()) and len(names) == 7 * 2
    for name in names:
        assert (one / name).read_bytes() == (many / name).read_bytes(), name
    summary = read_json(tmp_path / "many" / "tiny_onnxruntime_bs1_summary.json")
    assert summary["devices"] == [0, 1, 2] and summary["images"] == 7
    assert [p["images"] for p in summary["per_device"]] == [2, 2, 3]
    assert summary["throughput"] > 0 and "measured aggregate" in summary["throughput_kind"]
    assert not [p for p in (tmp_path / "many").iterdir() if p.name.startswith(".")]  # no leftovers
    with pytest.raises(ToolError, match="already exists"):
        ShardedRunner("onnxruntime", model, [0, 1]).run(inputs, tmp_path / "many", "tiny_onnxruntime_bs1", 1)


def test_a_failing_shard_fails_the_run_and_leaves_no_results(tmp_path, inputs):
    model = _tiny_model(tmp_path / "tiny.onnx")
    (inputs[5]).write_bytes(b"\0" * 8)  # the second shard's file is the wrong size
    with pytest.raises(ToolError, match="wrong size|bytes"):
        ShardedRunner("onnxruntime", model, [0, 1]).run(inputs, tmp_path / "out", "tiny_onnxruntime_bs1", 1)
    assert list((tmp_path / "out").iterdir()) == []


def test_shards_cover_the_items_once_in_order():
    items = list(range(10))
    for count in (1, 3, 4, 10, 11):
        parts = [shard(items, i, count) for i in range(count)]
        assert sum(parts, []) == items
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ToolError, match="does not exist"):
        shard(items, 3, 3)


@pytest.mark.parametrize("text, devices", [("0", [0]), ("0,1,2,3", [0, 1, 2, 3]), (" 2, 5", [2, 5]), (3, [3])])
def test_device_lists(text, devices):
    assert parse_devices(text) == devices


@pytest.mark.parametrize("text", ["", "0,,1", "a", "-1", "0,0", "1.5"])
def test_bad_device_lists_are_refused(text):
    with pytest.raises(ToolError, match="DEVICE="):
        parse_devices(text)
