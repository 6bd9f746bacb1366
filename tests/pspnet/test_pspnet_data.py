"""Postprocessing, and the oracle through the generic pipeline against an mIoU computed independently
(preprocessing: test_pspnet_preprocess.py)."""

from __future__ import annotations

import numpy as np
import pytest

from common import pipeline
from common.cli import provenance
from common.dataset import VocDataset, read_label_png
from common.demovoc import make_mini_voc
from common.errors import ToolError
from common.tensors import ManifestEntry, read_tensor
from tools.pspnet import tool


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


def _source_index(n_out: int, n_in: int) -> np.ndarray:
    """OpenCV's INTER_NEAREST rule written out: output position x reads input position
    min(floor(x * (1 / (n_out / n_in))), n_in - 1)."""
    return np.minimum(np.floor(np.arange(n_out) * (1.0 / (n_out / n_in))).astype(np.int64), n_in - 1)


def _best_round_trip(label: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """What a perfect model's map of the (new_h, new_w) content region gives back at the original size:
    original pixels that the postprocess reads from one canvas pixel all get the class of the last
    labelled pixel among them (raster order), background when none is labelled."""
    h, w = label.shape
    key = _source_index(h, new_h)[:, None] * new_w + _source_index(w, new_w)[None, :]
    flat_key, flat_label = key.ravel(), label.ravel()
    value = {}
    for k, v in zip(flat_key.tolist(), flat_label.tolist()):
        if v != 255:
            value[k] = v
    return np.array([value.get(k, 0) for k in flat_key.tolist()], np.uint8).reshape(h, w)


def _expected_oracle_miou(pairs) -> float:
    """mIoU of the perfect model from (label, pad) pairs, per-class intersection and union counted with
    boolean masks over the non-ignored pixels of all images (not common.metrics, not the postprocess)."""
    inter, union = np.zeros(21), np.zeros(21)
    for label, (left, top, right, bottom) in pairs:
        back = _best_round_trip(label, 500 - top - bottom, 500 - left - right)
        valid = label != 255
        for c in range(21):
            pred, gt = (back == c) & valid, (label == c) & valid
            inter[c] += np.sum(pred & gt)
            union[c] += np.sum(pred | gt)
    defined = union > 0
    return float(np.mean(inter[defined] / union[defined]) * 100.0)


def _oracle_report(tmp_path, sizes, seed, band):
    """(report, expected mIoU, scales): oracle class maps of a mini VOC set through the generic pipeline."""
    root = make_mini_voc(tmp_path / "voc", n_images=len(sizes), sizes=sizes, seed=seed, band=band)
    prep = tmp_path / "prep"
    manifest = pipeline.preprocess_dataset(tool, root, prep)
    labels = {im.path.stem: read_label_png(im.label_path) for im in VocDataset.open(root).images}
    results = tmp_path / "results"
    results.mkdir()
    for entry in manifest.entries:
        (seg,) = tool.oracle_outputs(labels[entry.stem], entry, "ascend")
        seg.tofile(results / f"{entry.stem}_0.bin")
    report = pipeline.evaluate(tool, prep, results, tmp_path / "eval", target="ascend",
                               provenance=provenance("onnxruntime", 1, "cpu"))
    expected = _expected_oracle_miou([(labels[e.stem], e.pad) for e in manifest.entries])
    return report, expected, [e.scale[0] for e in manifest.entries]


def test_oracle_of_enlarged_images_at_non_integer_scales_is_exact(tmp_path):
    """Photo-like sizes enlarged by 1.56, 1.32, 1.25 and 1.17 into the 500x500 canvas: every original
    pixel has a canvas pixel of its own, so the oracle comes back exactly (the nearest-resized label
    the oracle used to write lost rows and columns here)."""
    report, expected, scales = _oracle_report(tmp_path, [(213, 320), (377, 211), (400, 299), (333, 427)],
                                            seed=7, band=1)
    assert all(s > 1 and s != int(s) for s in scales)
    assert expected == 100.0 and report.metrics["mIoU"] == 100.0 and report.metrics["aAcc"] == 100.0


def test_oracle_at_non_integer_scales_gives_the_independently_computed_miou(tmp_path):
    """Sizes shrunk by 0.78, 0.61 and 0.5 x 0.499 lose pixels at class borders in the round trip (several
    original pixels share one canvas pixel; no "ignore" band here), so the oracle is below 100, by
    exactly the amount computed above."""
    report, expected, scales = _oracle_report(tmp_path, [(427, 640), (613, 817), (1000, 301)],
                                            seed=6, band=0)
    assert not any(s == int(s) or 1 / s == int(1 / s) for s in scales)  # no whole up- or down-scale factor
    assert 90.0 < expected < 100.0  # the round trip really loses pixels at these scales
    assert report.metrics["mIoU"] == pytest.approx(expected, rel=1e-12, abs=0)


def test_random_weights_end_to_end_through_onnxruntime(export_small, tmp_path):
    from common.resultfiles import read_results
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
