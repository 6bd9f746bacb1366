"""Preprocessing against mmseg's own pipeline; postprocessing and the oracle through the generic pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from common import pipeline
from common.cli import provenance
from common.dataset import VocDataset, read_image_bgr, read_label_png
from common.demovoc import make_mini_voc
from common.errors import ToolError
from common.tensors import ManifestEntry, read_tensor
from tools.pspnet import tool


def _mmseg_resize_normalize(path, scale):
    """mmseg 0.16's test transforms for one image: load, keep-ratio Resize to ``scale``, Normalize(to_rgb)."""
    from mmseg.datasets.pipelines import LoadImageFromFile, Normalize, Resize

    results = LoadImageFromFile()({"img_prefix": None, "img_info": {"filename": str(path)}})
    results = Resize(img_scale=scale, keep_ratio=True)(results)
    results = Normalize(mean=tool.SPEC.input.mean, std=tool.SPEC.input.std, to_rgb=True)(results)
    return results["img"], results["scale_factor"]


@pytest.mark.parametrize("size", [(375, 500), (500, 333), (281, 500), (200, 150)])
def test_preprocess_equals_mmseg_resize_and_normalize_inside_centred_padding(tmp_path, size):
    root = make_mini_voc(tmp_path / "voc", n_images=1, sizes=[size])
    path = VocDataset.open(root).images[0].path
    tensor, (sx, sy), (left, top, right, bottom) = tool.preprocess(read_image_bgr(path))
    ref, scale_factor = _mmseg_resize_normalize(path, (500, 500))
    h, w = ref.shape[:2]
    assert tensor.dtype == np.float16 and tensor.shape == (3, 500, 500)
    assert (500 - w, 500 - h) == (left + right, top + bottom) and abs(left - right) <= 1 and abs(top - bottom) <= 1
    assert (sx, sy) == pytest.approx(tuple(scale_factor[:2]), rel=1e-6)
    inner = tensor[:, top:top + h, left:left + w].astype(np.float32)
    np.testing.assert_allclose(inner, ref.transpose(2, 0, 1), atol=2e-3, rtol=1e-3)  # float16 rounding only
    assert not tensor[:, :top].any() and not tensor[:, top + h:].any()  # zero padding, centred


def test_postprocess_crops_exactly_the_recorded_padding():
    seg = np.full((500, 500), 7, np.int32)
    seg[:10], seg[-11:], seg[:, :3], seg[:, -4:] = 1, 2, 3, 4  # padding holds other classes
    entry = ManifestEntry(stem="x", source="x.jpg", file="x.bin", orig_size=(493, 479), scale=1.0,
                          pad=(3, 10, 4, 11), image_id=0)
    out = tool.postprocess([seg], entry, "ascend")
    assert out.shape == (479, 493) and out.dtype == np.uint8 and (out == 7).all()
    with pytest.raises(ToolError, match="1 output"):
        tool.postprocess([seg, seg], entry, "ascend")


def test_oracle_through_the_pipeline_gives_miou_100(tmp_path):
    """Sizes that scale to the 129x128 canvas by whole factors (2, 2, 3), so nearest resizing loses nothing."""
    from tests.toolhelpers import canvas

    root = make_mini_voc(tmp_path / "voc", n_images=3, sizes=[(64, 64), (32, 64), (43, 32)], seed=3)
    with canvas(tool, 129, 128):
        prep = tmp_path / "prep"
        manifest = pipeline.preprocess_dataset(tool, root, prep)
        assert any(e.pad[1] != e.pad[3] for e in manifest.entries)  # the odd canvas height pads unevenly
        results = tmp_path / "results"
        results.mkdir()
        for entry, image in zip(manifest.entries, VocDataset.open(root).images):
            (seg,) = tool.oracle_outputs(read_label_png(image.label_path), entry, "ascend")
            seg.tofile(results / f"{entry.stem}_0.bin")
        report = pipeline.evaluate(tool, prep, results, tmp_path / "eval", target="ascend",
                                   provenance=provenance("onnxruntime", 1, "cpu"))
    assert report.metrics["mIoU"] == 100.0 and report.metrics["aAcc"] == 100.0
    assert {f.value for f in report.published if f.metric == "mIoU"} == {76.18, 76.778}


def test_random_weights_end_to_end_through_onnxruntime(export_small, tmp_path):
    from common.results import read_results
    from tests.toolhelpers import canvas

    onnx_path, _ = export_small(1)
    root = make_mini_voc(tmp_path / "voc", n_images=3, seed=4)
    with canvas(tool, 129, 128):
        prep = tmp_path / "prep"
        manifest = pipeline.preprocess_dataset(tool, root, prep)
        result_dir = pipeline.run_inference(tool.SPEC, onnx_path, prep, tmp_path / "infer",
                                            backend="onnxruntime", batch=1)
        report = pipeline.evaluate(tool, prep, result_dir, tmp_path / "eval", target="ascend",
                                   provenance=provenance("onnxruntime", 1, "cpu", onnx_path))
        maps = read_results(result_dir, [e.stem for e in manifest.entries], tool.SPEC.outputs_for("ascend"))
        first = manifest.entries[0]
        x = read_tensor(prep / first.file, "float16", (3, 129, 128))
    from common.parity import run_onnx

    np.testing.assert_array_equal(maps[first.stem][0], run_onnx(onnx_path, {"input": x[None]})["seg"][0])
    assert 0.0 <= report.metrics["mIoU"] <= 100.0 and "IoU.aeroplane" in report.metrics
    assert report.dataset.num_images == 3 and (tmp_path / "eval" / "report.md").is_file()
