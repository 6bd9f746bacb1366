"""Reading result directories in ais_bench's layout, and refusing inconsistent ones."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import ToolError
from common.resultfiles import find_result_dir, read_results
from common.spec import OutputSpec

OUTPUTS = (OutputSpec("boxes", "float32", (3, 4)), OutputSpec("labels", "int64", (3,)))


def _write_results(directory, stems, seed=0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    expected = {}
    for stem in stems:
        boxes = rng.random((3, 4), dtype=np.float32)
        labels = rng.integers(0, 80, size=3, dtype=np.int64)
        boxes.tofile(directory / f"{stem}_0.bin")
        labels.tofile(directory / f"{stem}_1.bin")
        expected[stem] = [boxes, labels]
    return expected


def test_reads_every_output_with_its_dtype_and_shape(tmp_path):
    stems = ["000000000139", "img10", "img2"]
    expected = _write_results(tmp_path / "res", stems)
    (tmp_path / "res" / "sumary.json").write_text("{}")  # left there by the old ais_infer: ignored
    results = read_results(tmp_path / "res", stems, OUTPUTS)
    assert list(results) == stems and len(results) == 3
    for stem in stems:
        boxes, labels = results[stem]
        assert boxes.dtype == np.float32 and boxes.shape == (3, 4)
        assert labels.dtype == np.int64 and labels.shape == (3,)
        np.testing.assert_array_equal(boxes, expected[stem][0])
        np.testing.assert_array_equal(labels, expected[stem][1])
    assert set(results.load_all()) == set(stems)
    with pytest.raises(KeyError):
        results["not_a_stem"]


def test_missing_files_are_listed(tmp_path):
    _write_results(tmp_path, ["a", "b", "c"])
    (tmp_path / "b_1.bin").unlink()
    (tmp_path / "c_0.bin").unlink()
    with pytest.raises(ToolError, match=r"2 missing file\(s\), first: b_1.bin") as err:
        read_results(tmp_path, ["a", "b", "c"], OUTPUTS)
    assert err.value.detail.splitlines() == ["missing: b_1.bin", "missing: c_0.bin"]


def test_unexpected_stems_and_output_indices_are_listed(tmp_path):
    _write_results(tmp_path, ["a", "b", "stray"])
    np.zeros(3, np.float32).tofile(tmp_path / "a_2.bin")  # a third output the model does not have
    with pytest.raises(ToolError, match=r"3 unexpected") as err:
        read_results(tmp_path, ["a", "b"], OUTPUTS)
    assert err.value.detail.splitlines() == ["unexpected: a_2.bin", "unexpected: stray_0.bin",
                                             "unexpected: stray_1.bin"]


def test_wrong_sizes_name_output_and_expected_bytes(tmp_path):
    _write_results(tmp_path, ["a", "b"])
    np.zeros(10, np.float32).tofile(tmp_path / "b_0.bin")
    np.zeros(3, np.int32).tofile(tmp_path / "a_1.bin")  # int32 labels from another export
    with pytest.raises(ToolError, match="2 wrongly sized") as err:
        read_results(tmp_path, ["a", "b"], OUTPUTS)
    assert err.value.detail.splitlines() == [
        "wrong size: a_1.bin: 12 bytes, expected 24 (labels int64 [3])",
        "wrong size: b_0.bin: 40 bytes, expected 48 (boxes float32 [3, 4])",
    ]


def test_old_benchmark_one_based_names_get_a_hint(tmp_path):
    for stem in ("a", "b"):
        np.zeros((3, 4), np.float32).tofile(tmp_path / f"{stem}_1.bin")
        np.zeros(3, np.int64).tofile(tmp_path / f"{stem}_2.bin")
    with pytest.raises(ToolError, match="1-based"):
        read_results(tmp_path, ["a", "b"], OUTPUTS)


def test_npy_outputs_get_an_outfmt_hint(tmp_path):
    _write_results(tmp_path, ["a"])
    (tmp_path / "a_0.bin").rename(tmp_path / "a_0.npy")
    with pytest.raises(ToolError, match="--outfmt BIN"):
        read_results(tmp_path, ["a"], OUTPUTS)


def test_bad_arguments(tmp_path):
    with pytest.raises(ToolError, match="not found: run the infer step"):
        read_results(tmp_path / "nope", ["a"], OUTPUTS)
    with pytest.raises(ToolError, match="occur twice"):
        read_results(tmp_path, ["a", "a"], OUTPUTS)
    with pytest.raises(ToolError, match="lists none"):
        read_results(tmp_path, [], OUTPUTS)


def test_long_problem_lists_are_capped(tmp_path):
    stems = [f"img{i}" for i in range(150)]
    with pytest.raises(ToolError, match="300 missing") as err:
        read_results(tmp_path, stems, OUTPUTS)
    lines = err.value.detail.splitlines()
    assert len(lines) == 201 and lines[-1] == "... and 100 more"


def test_find_result_dir(tmp_path):
    out = tmp_path / "out"
    _write_results(out / "fcos_onnxruntime_bs1", ["a"])
    (out / "fcos_onnxruntime_bs1_summary.json").write_text("{}")
    (out / "logs").mkdir()
    (out / ".fcos_bs4.x1y2.part").mkdir()  # an interrupted run's staging directory
    np.zeros(1).tofile(out / ".fcos_bs4.x1y2.part" / "a_0.bin")
    assert find_result_dir(out) == out / "fcos_onnxruntime_bs1"
    assert find_result_dir(out / "fcos_onnxruntime_bs1") == out / "fcos_onnxruntime_bs1"
    _write_results(out / "fcos_ais_bench_bs1", ["a"])
    several = "several result directories.*fcos_ais_bench_bs1, fcos_onnxruntime_bs1"
    with pytest.raises(ToolError, match=several):
        find_result_dir(out)
    assert find_result_dir(out, "fcos_ais_bench_bs1") == out / "fcos_ais_bench_bs1"
    with pytest.raises(ToolError, match="holds no result files"):
        find_result_dir(out, "logs")
    with pytest.raises(ToolError, match="no result directory"):
        find_result_dir(out / "logs")
    with pytest.raises(ToolError, match="not found"):
        find_result_dir(tmp_path / "missing")
