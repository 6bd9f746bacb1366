"""The 1% acceptance rule, report files and throughput tables."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from common.errors import ToolError
from common.report import (
    DatasetInfo,
    Provenance,
    PublishedFigure,
    Report,
    ThroughputRow,
    collect_versions,
    compare,
    published_from_spec,
    read_report,
    render_markdown,
    throughput_table,
    write_report,
)

# --------------------------------------------------------------------------- compare

def test_compare_exact_boundary_passes_and_just_below_fails():
    on_edge = compare(99.0, 100.0)
    assert on_edge["within_tolerance"] is True and on_edge["higher"] is False
    assert on_edge["delta"] == pytest.approx(-1.0) and on_edge["relative"] == pytest.approx(-0.01)
    assert compare(98.99, 100.0)["within_tolerance"] is False
    # a boundary that float rounding would otherwise fail: 32.739 * 0.99 = 32.41161
    assert compare(32.41161, 32.739)["within_tolerance"] is True
    assert compare(32.4116, 32.739)["within_tolerance"] is False


def test_compare_slightly_higher_passes_and_is_recorded():
    c = compare(104.0, 100.0)
    assert c["within_tolerance"] is True and c["higher"] is True and c["suspicious"] is False
    assert c["relative"] == pytest.approx(0.04)
    equal = compare(33.4, 33.4)
    assert equal["within_tolerance"] is True and equal["higher"] is False and equal["delta"] == 0.0


def test_compare_tolerance_argument():
    assert compare(95.0, 100.0, tolerance_rel=0.05)["within_tolerance"] is True
    assert compare(94.9, 100.0, tolerance_rel=0.05)["within_tolerance"] is False
    assert compare(99.999, 100.0, tolerance_rel=0.0)["within_tolerance"] is False
    assert compare(np.float32(100.0), np.float64(100.0), tolerance_rel=0.0)["within_tolerance"] is True
    for bad in (-0.01, 1.0, 2):
        with pytest.raises(ToolError, match="tolerance_rel"):
            compare(1.0, 1.0, tolerance_rel=bad)


def test_compare_undefined_measurement_and_bad_published():
    c = compare(float("nan"), 30.0)
    assert c["within_tolerance"] is None and c["higher"] is None and c["delta"] is None
    for bad in (0, -3.0, float("nan"), float("inf"), "33.4x", None):
        with pytest.raises(ToolError, match="published figure"):
            compare(1.0, bad)
    with pytest.raises(ToolError, match="not a number"):
        compare("abc", 1.0)


# --------------------------------------------------------------------------- report files

def _report(**over) -> Report:
    fields = dict(
        model="efficientdet", task="detection",
        metrics={"bbox_mAP": 33.2, "bbox_AP50": 52.1, "bbox_APs": float("nan")},
        provenance=Provenance(command="effdet-tool eval --backend onnx out/", backend="onnxruntime",
                              device="cpu (2 cores)", batch_size=4,
                              versions={"python": "3.9.18", "numpy": "1.23.5", "mmdet": None},
                              timestamp="2026-11-20T10:00:00+00:00"),
        dataset=DatasetInfo(path="/data/coco/val2017", num_images=498,
                            skipped=["a.jpg", {"source": "b|c.jpg", "reason": "corrupt JPEG"}]),
        published=[PublishedFigure("bbox_mAP", 33.4, "seed 001 §6.1", backend="om", device="Ascend 310P"),
                   PublishedFigure("bbox_mAP", 33.6, "seed 001 §6.2", backend="pth"),
                   PublishedFigure("segm_mAP", 30.0, "some README")],
        throughput=[ThroughputRow("onnxruntime", "cpu", 4, 3.21)],
        published_throughput=[ThroughputRow("", "Ascend 310P", 4, 135.378, "seed 001 §7.3"),
                              ThroughputRow("", "Ascend 310P", 1, 67.074, "seed 001 §7.3")],
    )
    fields.update(over)
    return Report(**fields)


def _strict_json(path):
    def reject(token):
        raise AssertionError(f"invalid JSON token {token}")
    return json.loads(path.read_text(), parse_constant=reject)


def test_write_report_json_content(tmp_path):
    json_path, md_path = write_report(_report(), tmp_path / "run1")
    assert json_path.name == "report.json" and md_path.name == "report.md"
    data = _strict_json(json_path)
    assert data["metrics"]["bbox_mAP"] == 33.2 and data["metrics"]["bbox_APs"] is None
    assert [p["label"] for p in data["published"]] == [
        "published (om on Ascend 310P)", "published (pth)", "published"]
    assert all(p["source"] for p in data["published"])
    by_value = {c["published"]: c for c in data["comparisons"]}
    assert by_value[33.4]["within_tolerance"] is True  # 33.2 >= 33.4 * 0.99
    assert by_value[33.6]["within_tolerance"] is False  # 33.2 < 33.264
    assert by_value[30.0]["measured_here"] is False and by_value[30.0]["within_tolerance"] is None
    assert data["all_within_tolerance"] is False
    prov = data["provenance"]
    assert prov["command"].startswith("effdet-tool eval") and prov["batch_size"] == 4
    assert prov["backend"] == "onnxruntime" and prov["versions"]["mmdet"] is None
    assert data["dataset"] == {"path": "/data/coco/val2017", "num_images": 498, "partial": True,
                               "skipped": ["a.jpg", {"source": "b|c.jpg", "reason": "corrupt JPEG"}]}
    assert data["published_throughput"][0]["fps"] == 135.378
    # no temporary file left behind
    assert sorted(p.name for p in (tmp_path / "run1").iterdir()) == ["report.json", "report.md"]


def test_write_report_markdown_content(tmp_path):
    _, md_path = write_report(_report(), tmp_path)
    md = md_path.read_text()
    assert "| metric | measured | published | delta | within tol (1%) |" in md
    rows = [line for line in md.splitlines() if line.startswith("| bbox_mAP |")]
    assert len(rows) == 2
    assert "33.200" in rows[0] and "33.400 [1]" in rows[0] and "-0.200" in rows[0]
    assert rows[0].endswith("| yes |")
    assert "33.600 [2]" in rows[1] and rows[1].endswith("| NO |")
    assert "| bbox_AP50 | 52.100 | — | — | — |" in md
    assert "| bbox_APs | n/a |" in md
    assert "| segm_mAP | not measured | 30.000 [3]" in md
    assert "1. published (om on Ascend 310P): seed 001 §6.1" in md
    assert "**Partial run**" in md and "`a.jpg`, `b|c.jpg` (corrupt JPEG)" in md
    assert "- batch size: 4" in md and "numpy 1.23.5" in md and "mmdet" not in md
    # throughput table: batch 1 published first, then batch 4 measured before published
    table = [line for line in md.splitlines() if line.startswith("| 1 ") or line.startswith("| 4 ")]
    assert table[0].startswith("| 1 | published") and table[1].startswith("| 4 | measured")
    assert table[2].startswith("| 4 | published") and "135.38" in table[2]


def test_higher_is_marked_in_markdown():
    md = render_markdown(_report(metrics={"bbox_mAP": 34.0},
                                 published=[PublishedFigure("bbox_mAP", 33.4, "s")]))
    assert "| yes (higher) |" in md and "+0.600 (+1.80%)" in md


def test_write_report_refuses_to_overwrite(tmp_path):
    write_report(_report(), tmp_path)
    before = (tmp_path / "report.json").read_bytes()
    with pytest.raises(ToolError, match="report.json already exists.*--force"):
        write_report(_report(metrics={"bbox_mAP": 1.0}), tmp_path)
    assert (tmp_path / "report.json").read_bytes() == before
    write_report(_report(metrics={"bbox_mAP": 1.0}), tmp_path, force=True)
    assert _strict_json(tmp_path / "report.json")["metrics"] == {"bbox_mAP": 1.0}

    only_md = tmp_path / "other"
    only_md.mkdir()
    (only_md / "report.md").write_text("old")
    with pytest.raises(ToolError, match="report.md already exists"):
        write_report(_report(), only_md)
    assert not (only_md / "report.json").exists()


def test_write_report_into_a_file_path_fails(tmp_path):
    target = tmp_path / "afile"
    target.write_text("x")
    with pytest.raises(ToolError, match="is a file"):
        write_report(_report(), target)


def test_read_report_round_trip(tmp_path):
    original = _report()
    json_path, _ = write_report(original, tmp_path)
    again = read_report(json_path)
    assert again.dataset == original.dataset and again.provenance == original.provenance
    assert again.published == original.published and again.throughput == original.throughput
    assert math.isnan(again.metrics["bbox_APs"]) and again.metrics["bbox_mAP"] == 33.2
    (tmp_path / "bad.json").write_text(json.dumps({"model": "x"}))
    with pytest.raises(ToolError, match="bad.json"):
        read_report(tmp_path / "bad.json")


def test_undefined_measurement_and_long_skip_list_in_markdown():
    skipped = [f"img{i}.jpg" for i in range(25)]
    md = render_markdown(_report(metrics={"bbox_APs": float("nan")},
                                 published=[PublishedFigure("bbox_APs", 15.0, "s")],
                                 dataset=DatasetInfo("d", 5, skipped=skipped)))
    assert "| bbox_APs | n/a | 15.000 [1] | n/a | n/a (undefined) |" in md
    assert "`img19.jpg` and 5 more (all listed in report.json)" in md and "img20.jpg" not in md


def test_dataset_info_partial_flag():
    assert DatasetInfo("d", 10).partial is False
    assert DatasetInfo("d", 10, partial=True).partial is True  # a --limit run
    assert DatasetInfo("d", 10, skipped=["x.jpg"]).partial is True


def test_provenance_capture_and_versions():
    prov = Provenance.capture("om", "Ascend310P3", 8, argv=["tool", "eval", "my dir"])
    assert prov.command == "tool eval 'my dir'" and prov.batch_size == 8
    assert prov.timestamp.endswith("+00:00")
    versions = collect_versions(extra=["surely-not-a-real-package-xyz"])
    assert versions["numpy"] == np.__version__
    assert versions["python"].count(".") == 2
    assert versions["surely-not-a-real-package-xyz"] is None


# --------------------------------------------------------------------------- throughput

def test_throughput_table_sorting_and_dict_rows():
    table = throughput_table(
        [{"backend": "onnxruntime", "device": "cpu", "batch": 8, "fps": 2.0},
         ThroughputRow("onnxruntime", "cpu", 1, 1.234)],
        [{"device": "Ascend 310P", "batch": 1, "fps": 67.074, "source": "seed 001"}])
    lines = table.strip().splitlines()
    assert lines[0] == "| batch | kind | backend | device | fps | source |"
    assert lines[2] == "| 1 | measured | onnxruntime | cpu | 1.23 | measured |"
    assert lines[3] == "| 1 | published | — | Ascend 310P | 67.07 | seed 001 |"
    assert lines[4].startswith("| 8 | measured")
    assert throughput_table([], []) == "_no throughput figures_\n"


@pytest.mark.parametrize("row, fragment", [
    ({"device": "cpu", "fps": 1.0}, "'batch'"),
    ({"device": "cpu", "batch": "x", "fps": 1.0}, "integer"),
    ({"device": "cpu", "batch": 0, "fps": 1.0}, "batch must be >= 1"),
    ({"device": "cpu", "batch": 1, "fps": float("nan")}, "fps"),
])
def test_throughput_table_bad_rows(row, fragment):
    with pytest.raises(ToolError, match="throughput row") as err:
        throughput_table([row])
    assert fragment in str(err.value)


def test_published_from_spec():
    table = {
        "tolerance_rel": 0.02,
        "accuracy": [{"metric": "bbox_mAP", "value": 33.4, "backend": "om", "device": "Ascend 310P",
                      "source": "seed 001 §6.1"}],
        "throughput": [{"device": "Ascend 310P", "source": "seed 001 §7.3",
                        "fps": {"1": 67.074, "4": 135.378}},
                       {"device": "NVIDIA T4", "source": "seed 001 §7.3", "fps": {"1": 9.945}}],
    }
    figures, rows, tol = published_from_spec(table)
    assert tol == 0.02
    assert figures == [PublishedFigure("bbox_mAP", 33.4, "seed 001 §6.1", "om", "Ascend 310P")]
    assert [(r.device, r.batch, r.fps) for r in rows] == [
        ("Ascend 310P", 1, 67.074), ("Ascend 310P", 4, 135.378), ("NVIDIA T4", 1, 9.945)]
    with pytest.raises(ToolError, match="tools/x/model.toml.*'source'"):
        published_from_spec({"accuracy": [{"metric": "m", "value": 1.0}]}, where="tools/x/model.toml")
    with pytest.raises(ToolError, match="malformed"):
        published_from_spec({"throughput": [{"device": "d", "source": "s", "fps": {"one": 1.0}}]})
