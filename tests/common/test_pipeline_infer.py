"""Generic inference -> evaluation -> report, and throughput, on a tiny ONNX model."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from common import pipeline
from common.demococo import make_mini_coco
from common.errors import ToolError
from common.report import provenance
from common.throughput import measure_throughput


def _tiny_model(path, batch):
    """out[b] = per-image channel means of the input (B,3,32,48) -> (B,4); static batch ``batch``."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 32, 48])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 4])
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["m"], axes=[2, 3], keepdims=0),
        helper.make_node("Concat", ["m", "m1"], ["out"], axis=1),
    ]
    one = helper.make_tensor("m1", TensorProto.FLOAT, [batch, 1], [1.0] * batch)
    graph = helper.make_graph(nodes, "tiny", [x], [y], initializer=[one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.save(model, path)
    return path


@pytest.fixture
def tiny_onnx(tmp_path):
    return _tiny_model(tmp_path / "tiny.onnx", 1)


@pytest.fixture
def prepared(tiny_tool, tmp_path):
    coco = make_mini_coco(tmp_path / "coco", n_images=3, seed=2)
    pipeline.preprocess_dataset(tiny_tool, coco, tmp_path / "prep")
    anns = json.loads((coco / "annotations" / "instances_val2017.json").read_text())["annotations"]

    def postprocess(outputs, entry, target):
        """An oracle that checks the wiring: the output must be this image's tensor statistics."""
        assert outputs[0].shape == (4,) and outputs[0][3] == 1.0
        return [{"image_id": entry.image_id, "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
                for a in anns if a["image_id"] == entry.image_id]

    tiny_tool.postprocess = postprocess
    return tiny_tool, tmp_path / "prep"


def test_infer_then_evaluate_writes_report(prepared, tiny_onnx, tmp_path):
    tool, prep = prepared
    results = pipeline.run_inference(tool.SPEC, tiny_onnx, prep, tmp_path / "infer", backend="onnxruntime",
                                     batch=1)
    assert sorted(p.name for p in results.iterdir()) == [f"{1000 + i:012d}_0.bin" for i in range(3)]
    report = pipeline.evaluate(tool, prep, results, tmp_path / "eval", target="ascend",
                               provenance=provenance("onnxruntime", 1, "cpu", tiny_onnx))
    assert report.metrics["bbox_mAP"] == pytest.approx(100.0)
    md = (tmp_path / "eval" / "report.md").read_text()
    assert "published" in md and "onnxruntime" in md
    with pytest.raises(ToolError, match="--force"):
        pipeline.run_inference(tool.SPEC, tiny_onnx, prep, tmp_path / "infer", backend="onnxruntime", batch=1)


def test_evaluation_refuses_incomplete_results(prepared, tiny_onnx, tmp_path):
    tool, prep = prepared
    results = pipeline.run_inference(tool.SPEC, tiny_onnx, prep, tmp_path / "infer", backend="onnxruntime",
                                     batch=1)
    victim = sorted(results.iterdir())[1]
    victim.unlink()
    (results / "stranger_0.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ToolError) as err:
        pipeline.evaluate(tool, prep, results, tmp_path / "eval", target="ascend",
                          provenance=provenance("onnxruntime", 1, "cpu"))
    assert victim.name in str(err.value) + err.value.detail and "stranger" in str(err.value) + err.value.detail


def test_backend_and_model_file_must_fit(prepared, tiny_onnx, tmp_path):
    tool, prep = prepared
    with pytest.raises(ToolError, match="ais_bench"):
        pipeline.run_inference(tool.SPEC, tiny_onnx, prep, tmp_path / "i", backend="ais_bench", batch=1)
    with pytest.raises(ToolError, match="valid"):
        pipeline.run_inference(tool.SPEC, tiny_onnx, prep, tmp_path / "i", backend="tensorrt", batch=1)
    with pytest.raises(ToolError, match="BATCH=8"):
        pipeline.run_inference(tool.SPEC, tiny_onnx, prep, tmp_path / "i", backend="onnxruntime", batch=8)


def test_throughput_rows_add_up_per_batch_size_beside_published(tiny_spec, tiny_onnx, tmp_path):
    out = tmp_path / "perf"
    measure_throughput(tiny_spec, tiny_onnx, out, backend="onnxruntime", batches=[1], loop=2,
                       argv=["python", "-m", "tools.tiny", "perf", "--batch", "1"])
    bs2 = _tiny_model(tmp_path / "tiny_bs2.onnx", 2)
    table = measure_throughput(tiny_spec, bs2, out, backend="onnxruntime", batches=[2], loop=2)
    rows = json.loads((out / "perf.json").read_text())["rows"]
    assert [(r["batch"], r["model_file"]) for r in rows] == [(1, str(tiny_onnx)), (2, str(bs2))]
    assert all(r["fps"] > 0 and np.isfinite(r["fps"]) and r["versions"]["onnxruntime"] for r in rows)
    assert all(r["warmup"] == 1 and len(r["warmup_ms"]) == 1 for r in rows)  # the cold run: apart, not averaged
    assert "| 1 | measured | onnxruntime |" in table and "| 2 | measured | onnxruntime |" in table
    md = (out / "perf.md").read_text()
    assert "`python -m tools.tiny perf --batch 1`" in md and str(bs2) in md
    assert md.count("warm-up excluded: ") == 2
    with pytest.raises(ToolError, match="already has onnxruntime bs1: pass --force"):
        measure_throughput(tiny_spec, tiny_onnx, out, backend="onnxruntime", batches=[1])
    before = rows[0]["timestamp"], rows[0]["fps"]
    measure_throughput(tiny_spec, tiny_onnx, out, backend="onnxruntime", batches=[1], loop=2, force=True)
    again = json.loads((out / "perf.json").read_text())["rows"]
    assert [r["batch"] for r in again] == [1, 2] and (again[0]["timestamp"], again[0]["fps"]) != before


def test_perf_results_of_another_model_are_never_mixed(tiny_spec, tiny_onnx, tmp_path):
    out = tmp_path / "perf"
    out.mkdir()
    (out / "perf.json").write_text(json.dumps({"model": "fcos", "rows": []}))
    with pytest.raises(ToolError, match="model 'fcos', not 'tiny': use another --out"):
        measure_throughput(tiny_spec, tiny_onnx, out, backend="onnxruntime", batches=[1])
    (out / "perf.json").write_text("[1, 2]")
    with pytest.raises(ToolError, match="not a perf results file"):
        measure_throughput(tiny_spec, tiny_onnx, out, backend="onnxruntime", batches=[1])


def test_skipped_images_make_the_report_partial(tiny_tool, tiny_onnx, tmp_path):
    coco = make_mini_coco(tmp_path / "coco", n_images=3, seed=3)
    bad = sorted((coco / "val2017").glob("*.jpg"))[0]
    bad.write_bytes(b"garbage")
    pipeline.preprocess_dataset(tiny_tool, coco, tmp_path / "prep", skip_bad=True)
    tiny_tool.postprocess = lambda outputs, entry, target: []
    results = pipeline.run_inference(tiny_tool.SPEC, tiny_onnx, tmp_path / "prep", tmp_path / "infer",
                                     backend="onnxruntime", batch=1)
    report = pipeline.evaluate(tiny_tool, tmp_path / "prep", results, tmp_path / "eval", target="ascend",
                               provenance=provenance("onnxruntime", 1, "cpu"))
    assert report.dataset.partial and report.dataset.num_images == 2
    assert report.dataset.skipped[0]["source"] == str(bad)
    md = (tmp_path / "eval" / "report.md").read_text()
    assert "Partial run" in md and bad.name in md
