"""Tests for common.parity: array and detection comparisons, the report, and running ONNX models."""

from __future__ import annotations

import json
import os
import sys
import types

import numpy as np
import pytest

from common import parity
from common.errors import ToolError

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- arrays

def test_compare_arrays_exact_near_far():
    ref = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    exact = parity.compare_arrays("x", ref, ref.copy())
    assert exact.ok and exact.max_abs == 0 and exact.max_rel == 0 and exact.shape == (2, 3, 4)

    noise = np.full_like(ref, 2e-6)
    near = parity.compare_arrays("x", ref, ref + noise, atol=1e-5, rtol=0)
    assert near.ok and near.max_abs == pytest.approx(2e-6, rel=0.1)

    far_got = ref.copy()
    far_got[1, 2, 3] += 0.5
    far = parity.compare_arrays("x", ref, far_got, atol=1e-4, rtol=1e-3)
    assert not far.ok
    assert far.max_abs == pytest.approx(0.5, rel=1e-4)
    assert far.mismatch == pytest.approx(1 / ref.size)


def test_compare_arrays_rtol_scales_with_reference():
    ref = np.array([1000.0, 1.0])
    assert parity.compare_arrays("r", ref, ref + [0.5, 0.0], atol=1e-4, rtol=1e-3).ok
    assert not parity.compare_arrays("r", ref, ref + [0.0, 0.5], atol=1e-4, rtol=1e-3).ok


def test_compare_arrays_shape_nan_inf():
    bad_shape = parity.compare_arrays("s", np.zeros((1, 4)), np.zeros((1, 5)))
    assert not bad_shape.ok and "shape [1, 4] vs [1, 5]" in bad_shape.note

    ref = np.array([1.0, np.nan, -np.inf])
    assert parity.compare_arrays("n", ref, ref.copy()).ok
    one_sided = parity.compare_arrays("n", ref, np.array([1.0, 2.0, -np.inf]))
    assert not one_sided.ok and "only one" in one_sided.note
    assert not parity.compare_arrays("n", ref, np.array([1.0, np.nan, np.inf])).ok


def test_compare_arrays_mismatch_tolerance_for_label_maps():
    ref = np.zeros((10, 10), np.int64)
    got = ref.copy()
    got[0, 0] = 7  # one flipped pixel of 100
    assert not parity.compare_arrays("seg", ref, got, atol=0, rtol=0).ok
    allowed = parity.compare_arrays("seg", ref, got, atol=0, rtol=0, mismatch_tol=0.01)
    assert allowed.ok and allowed.mismatch == pytest.approx(0.01)
    assert not parity.compare_arrays("seg", ref, got, atol=0, rtol=0, mismatch_tol=0.005).ok


def test_compare_arrays_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    t = torch.arange(6, dtype=torch.float32, requires_grad=True).reshape(2, 3)
    res = parity.compare_arrays("t", t * 1, t.detach().numpy() + 1)
    assert not res.ok and res.max_abs == 1.0 and res.dtype == "float32"


# --------------------------------------------------------------------------- detections

BOXES = np.array([[10, 10, 50, 60], [12, 11, 48, 62], [100, 100, 140, 180], [0, 0, 5, 5]], np.float32)
SCORES = np.array([0.9, 0.9, 0.7, 0.3], np.float32)
LABELS = np.array([1, 1, 2, 0], np.int64)


def test_detections_permuted_equal_scores_ok():
    perm = [1, 3, 0, 2]  # swaps the two equal-score boxes of label 1 too
    res = parity.compare_detections(BOXES, SCORES, LABELS, BOXES[perm], SCORES[perm], LABELS[perm])
    assert res.ok and res.matched == 4 and res.unmatched_ref == res.unmatched_got == 0
    assert res.max_box_diff == 0 and res.max_score_diff == 0


def test_detections_small_noise_within_tolerance():
    got_b = BOXES + 0.01
    got_s = SCORES + 1e-4
    res = parity.compare_detections(BOXES, SCORES, LABELS, got_b, got_s, LABELS.astype(np.float32))
    assert res.ok and res.max_box_diff == pytest.approx(0.01, abs=1e-5)
    assert res.max_score_diff == pytest.approx(1e-4, abs=1e-6)


def test_detections_moved_box_fails():
    moved = BOXES.copy()
    moved[2] += [30, 0, 30, 0]
    res = parity.compare_detections(BOXES, SCORES, LABELS, moved, SCORES, LABELS)
    assert not res.ok and res.unmatched_ref == 1 and res.unmatched_got == 1 and res.matched == 3
    assert "highest unmatched score 0.7" in res.note
    tolerant = parity.compare_detections(BOXES, SCORES, LABELS, moved, SCORES, LABELS, max_unmatched=1)
    assert tolerant.ok


def test_detections_label_and_score_differences_fail():
    other_label = LABELS.copy()
    other_label[2] = 5
    assert parity.compare_detections(BOXES, SCORES, LABELS, BOXES, SCORES, other_label).unmatched_ref == 1
    off = SCORES.copy()
    off[0] -= 0.05
    res = parity.compare_detections(BOXES, SCORES, LABELS, BOXES, off, LABELS, score_atol=1e-3)
    assert not res.ok and res.matched == 4 and res.max_score_diff == pytest.approx(0.05, abs=1e-6)


def test_detections_padded_rows_ignored():
    pad = 6
    got_b = np.concatenate([BOXES[::-1], np.zeros((pad, 4), np.float32)])[None]  # (1, 10, 4) like NMS outputs
    got_s = np.concatenate([SCORES[::-1], np.zeros(pad, np.float32)])[None]
    got_l = np.concatenate([LABELS[::-1], np.zeros(pad, np.int64)]).astype(np.float32)[None]
    res = parity.compare_detections(BOXES, SCORES, LABELS, got_b, got_s, got_l)
    assert res.ok and res.got_count == 4

    # rows beyond nmsed_num are ignored even when they hold stale non-zero values
    junk = got_s.copy()
    junk[0, 4:] = 0.5
    by_count = parity.compare_detections(BOXES, SCORES, LABELS, got_b, junk, got_l, got_count=np.array([4]))
    assert by_count.ok and by_count.got_count == 4
    assert not parity.compare_detections(BOXES, SCORES, LABELS, got_b, junk, got_l).ok


def test_detections_bad_shapes():
    with pytest.raises(ToolError, match="same N boxes"):
        parity.compare_detections(BOXES, SCORES[:3], LABELS, BOXES, SCORES, LABELS)
    with pytest.raises(ToolError, match="one image at a time"):
        parity.compare_detections(np.stack([BOXES, BOXES]), SCORES, LABELS, BOXES, SCORES, LABELS)


# --------------------------------------------------------------------------- report

def test_check_parity_dicts_format_and_json(tmp_path):
    ref = {"scores": np.ones((1, 3), np.float32), "boxes": np.zeros((1, 3, 4), np.float32)}
    got = {"scores": np.ones((1, 3), np.float32), "boxes": np.full((1, 3, 4), 0.5, np.float32)}
    report = parity.check_parity(ref, got)
    assert not report.ok and report.failed == ["boxes"]
    lines = report.format().splitlines()
    assert lines[0].endswith("FAIL") and len(lines) == 3
    assert lines[1].split()[0] == "scores" and lines[1].rstrip().endswith("OK") and "1x3" in lines[1]
    assert lines[2].split()[0] == "boxes" and "FAIL" in lines[2] and "0.5" in lines[2]

    loose = parity.check_parity(ref, got, tolerances={"boxes": (0.6, 0.0)})
    assert loose.ok

    path = report.save(tmp_path / "m.parity.json")
    data = json.loads(path.read_text())
    assert data["ok"] is False and [r["name"] for r in data["rows"]] == ["scores", "boxes"]
    assert data["rows"][1]["max_abs_diff"] == 0.5
    assert parity.report_path(tmp_path / "m.onnx") == tmp_path / "m.parity.json"


def test_check_parity_nested_torch_outputs_use_onnx_names():
    cls = [np.full((1, 2), i, np.float32) for i in range(2)]
    box = [np.full((1, 4), 10 + i, np.float32) for i in range(2)]
    onnx_out = {"cls0": cls[0], "cls1": cls[1], "box0": box[0], "box1": box[1] + 1}
    report = parity.check_parity((cls, box), onnx_out)  # torch returns (list, list) like effdet
    assert [r.name for r in report.rows] == ["cls0", "cls1", "box0", "box1"]
    assert report.failed == ["box1"]


def test_check_parity_nan_json_and_detection_rows():
    report = parity.check_parity([np.array([np.nan])], [np.array([1.0])], names=["x"])
    report.add(parity.compare_detections(BOXES, SCORES, LABELS, BOXES, SCORES, LABELS, name="dets"))
    data = report.to_dict()
    json.dumps(data, allow_nan=False)  # NaN diffs must not produce invalid JSON
    assert data["failed"] == ["x"] and data["rows"][1]["kind"] == "detections" and data["rows"][1]["ok"]
    assert "dets" in report.format()


def test_check_parity_errors():
    with pytest.raises(ToolError, match="do not match ONNX outputs"):
        parity.check_parity({"a": np.zeros(1)}, {"b": np.zeros(1)})
    with pytest.raises(ToolError, match="2 outputs but 1 names"):
        parity.check_parity([np.zeros(1), np.zeros(1)], {"a": np.zeros(1)})
    with pytest.raises(ToolError, match="unknown output"):
        parity.check_parity({"a": np.zeros(1)}, {"a": np.zeros(1)}, tolerances={"z": (1, 1)})
    skipped = parity.check_parity({"a": np.zeros(1), "d": np.zeros(1)}, {"a": np.zeros(1), "d": np.ones(1)},
                                  skip=["d"])
    assert skipped.ok and [r.name for r in skipped.rows] == ["a"]
    assert not parity.ParityReport().ok  # nothing compared is not a pass


# --------------------------------------------------------------------------- run_onnx

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.rand(1, 3, 8, 8)
    path = tmp_path_factory.mktemp("onnx") / "net.onnx"
    torch.onnx.export(net, x, str(path), opset_version=11, input_names=["image"], output_names=["feat"])
    with torch.no_grad():
        ref = net(x)
    return path, x.numpy(), ref


def test_run_onnx_matches_torch(exported):
    import onnx

    path, x, ref = exported
    out = parity.run_onnx(path, {"image": x})
    assert list(out) == ["feat"]
    report = parity.check_parity([ref], out, atol=1e-5, rtol=1e-4)
    assert report.ok, report.format()
    from_proto = parity.run_onnx(onnx.load(str(path)), {"image": x})
    np.testing.assert_array_equal(from_proto["feat"], out["feat"])


def test_run_onnx_errors(exported, tmp_path):
    path, x, _ = exported
    with pytest.raises(ToolError, match="not found"):
        parity.run_onnx(tmp_path / "none.onnx", {"image": x})
    with pytest.raises(ToolError, match=r"feeds input do not match the inputs of .*\(image\)"):
        parity.run_onnx(path, {"input": x})
    with pytest.raises(ToolError, match="ONNX Runtime failed"):
        parity.run_onnx(path, {"image": x.astype(np.float64)})
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ToolError, match="junk.onnx"):
        parity.run_onnx(junk, {"image": x})


@pytest.fixture(autouse=True)
def fresh_sessions():
    """run_onnx keeps a file's session: each test here loads its own (some replace how it is made)."""
    parity._session_of_file.cache_clear()
    yield
    parity._session_of_file.cache_clear()


def test_run_onnx_keeps_a_files_session_until_the_file_changes(exported, monkeypatch):
    path, x, _ = exported
    loads = []
    real = parity._load_session
    monkeypatch.setattr(parity, "_load_session", lambda model, label: loads.append(model) or real(model, label))
    first = parity.run_onnx(path, {"image": x})["feat"]
    assert np.array_equal(parity.run_onnx(path, {"image": x})["feat"], first) and len(loads) == 1
    rewritten = path.with_name("copy.onnx")
    rewritten.write_bytes(path.read_bytes())
    os.replace(rewritten, path)  # a re-export in place: a new file, a new session
    parity.run_onnx(path, {"image": x})
    assert len(loads) == 2


def test_run_onnx_prefers_customops_session(exported, monkeypatch):
    path, x, _ = exported
    seen = []

    def fake_cpu_session(model):
        seen.append(model)
        return parity._plain_session(str(model))

    monkeypatch.setitem(sys.modules, "common.customops", types.SimpleNamespace(cpu_session=fake_cpu_session))
    out = parity.run_onnx(path, {"image": x})
    assert seen == [path] and out["feat"].shape == (1, 4, 8, 8)


def test_run_onnx_falls_back_without_customops(exported, monkeypatch):
    path, x, _ = exported
    monkeypatch.setitem(sys.modules, "common.customops", None)  # makes the import raise ImportError
    assert parity.run_onnx(path, {"image": x})["feat"].shape == (1, 4, 8, 8)


def test_run_onnx_falls_back_when_extensions_missing(exported, monkeypatch):
    path, x, _ = exported

    def cpu_session_without_extensions(model):
        raise ImportError("No module named 'onnxruntime_extensions'")

    fake = types.SimpleNamespace(cpu_session=cpu_session_without_extensions)
    monkeypatch.setitem(sys.modules, "common.customops", fake)
    assert parity.run_onnx(path, {"image": x})["feat"].shape == (1, 4, 8, 8)
