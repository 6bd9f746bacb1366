"""INPUT=uint8 for PSPNet: uint8 canvases + the ONNX prologue (what AIPP does on the NPU) give the float
path's class maps. The centred letterbox's padding becomes (round(mean) - mean) / std (at most 0.009)
instead of 0 (common/aipp.py); the class maps must agree within the export's own parity rule
(tool.PARITY_MISMATCH of the pixels)."""

from __future__ import annotations

import numpy as np

from common import aipp
from common.demovoc import make_mini_voc
from common.pipeline import preprocess_dataset, run_inference
from tools.pspnet import tool


def test_uint8_input_gives_the_float_paths_class_maps(export_small, tmp_path, small_canvas):
    onnx_path, _ = export_small(1)
    voc = make_mini_voc(tmp_path / "voc", n_images=3, sizes=[(97, 160), (200, 131), (120, 120)], seed=6)
    manifest = preprocess_dataset(tool, voc, tmp_path / "data")
    u8 = preprocess_dataset(tool, voc, tmp_path / "data_uint8", input_format="uint8")
    assert u8.dtype == "uint8" and u8.shape == (*tool.SPEC.input.shape[1:], 3)
    u8_onnx = aipp.write_uint8_onnx(tool.SPEC, onnx_path, tmp_path / "pspnet_uint8.onnx")
    ref = run_inference(tool.SPEC, onnx_path, tmp_path / "data", tmp_path / "f", backend="onnxruntime", batch=1)
    got = run_inference(tool.SPEC, u8_onnx, tmp_path / "data_uint8", tmp_path / "u8", backend="onnxruntime", batch=1)
    (out,) = tool.SPEC.outputs_for("ascend")
    for entry in manifest.entries:
        a = np.fromfile(ref / f"{entry.stem}_0.bin", out.dtype)
        b = np.fromfile(got / f"{entry.stem}_0.bin", out.dtype)
        assert a.size == b.size == np.prod(out.shape)
        assert len(np.unique(a)) > 1  # the random model's map is not one class
        mismatch = float(np.mean(a != b))
        print(f"{entry.stem}: {mismatch:.2e} of the pixels differ")
        assert mismatch <= tool.PARITY_MISMATCH
