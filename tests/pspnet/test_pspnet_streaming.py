"""Streaming evaluation for segmentation, with a batch the dataset does not fill (the last batch is
padded as ais_bench pads): the same mIoU report as the file-based steps."""

from __future__ import annotations

import dataclasses
import json

from common import pipeline
from common.demovoc import make_mini_voc
from common.report import Provenance
from common.streaming import stream_evaluate
from tools.pspnet import tool


def test_stream_equals_the_file_based_steps_with_a_padded_batch(export_small, tmp_path, small_canvas, monkeypatch):
    # batch 2 (the data file lists 1 and 16): 3 images make one full batch and one padded one, cheaply
    monkeypatch.setattr(tool, "SPEC", dataclasses.replace(
        tool.SPEC, input=dataclasses.replace(tool.SPEC.input, batch_sizes=(1, 2))))
    onnx_path, _ = export_small(2)
    voc = make_mini_voc(tmp_path / "voc", n_images=3, sizes=[(97, 160), (200, 131), (120, 120)], seed=9)
    prov = Provenance.capture("onnxruntime", "cpu", 2)
    prep = tmp_path / "data"
    pipeline.preprocess_dataset(tool, voc, prep)
    results = pipeline.run_inference(tool.SPEC, onnx_path, prep, tmp_path / "infer", backend="onnxruntime", batch=2)
    files = pipeline.evaluate(tool, prep, results, tmp_path / "eval", target="ascend", provenance=prov)
    streamed = stream_evaluate(tool, voc, onnx_path, tmp_path / "stream", target="ascend", batch=2, workers=2,
                               provenance=prov)
    assert json.dumps(streamed.metrics) == json.dumps(files.metrics)
    assert json.loads((tmp_path / "stream" / "report.json").read_text())["dataset"]["num_images"] == 3
