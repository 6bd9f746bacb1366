"""The eval report as a user reads it: the real CLI in a subprocess on FCOS outputs.

A measured figure far above the published one is flagged, never a pass: FCOS evaluated on outputs
that are the ground truth itself (mAP 100, published 35.9) used to read "within tol: yes (higher)".
The report also shows the parity check of the export behind --model, and its path is printed last.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.demococo import make_mini_coco
from common.manifest import Manifest
from common.report import compare

REPO = Path(__file__).resolve().parents[2]
SUSPICIOUS = "SUSPICIOUS (far above published)"


def tool_cli(model: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"tools.{model}", *args], cwd=REPO, capture_output=True,
                          text=True)


@pytest.fixture(scope="module")
def fcos_oracle(tmp_path_factory):
    """FCOS data + result files that are the ground truth itself (what a perfect model would output)."""
    from tools.fcos import tool as fcos

    root = tmp_path_factory.mktemp("fcos")
    coco = make_mini_coco(root / "coco", n_images=3, seed=5)
    prep = root / "prep"
    assert tool_cli("fcos", "data", "--data", str(coco), "--out", str(prep)).returncode == 0
    doc = json.loads((coco / "annotations" / "instances_val2017.json").read_text())
    results = root / "infer" / "fcos_onnxruntime_bs1"
    results.mkdir(parents=True)
    for entry in Manifest.load(prep).entries:
        anns = [a for a in doc["annotations"] if a["image_id"] == entry.image_id]
        for k, array in enumerate(fcos.oracle_outputs(anns, entry, "ascend")):
            array.tofile(results / f"{entry.stem}_{k}.bin")
    return prep, results


def test_fcos_ground_truth_outputs_are_flagged_suspicious_in_json_and_markdown(fcos_oracle, tmp_path):
    prep, results = fcos_oracle
    proc = tool_cli("fcos", "eval", "--prep", str(prep), "--results", str(results), "--out", str(tmp_path / "eval"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["metrics"]["bbox_mAP"] == pytest.approx(100.0)
    measured = [c for c in report["comparisons"] if c["measured_here"]]
    assert {c["published"] for c in measured} >= {35.9}
    for c in measured:
        assert c["suspicious"] is True and c["within_tolerance"] is False and c["verdict"] == SUSPICIOUS
    assert report["all_within_tolerance"] is False
    rows = [line for line in (tmp_path / "eval" / "report.md").read_text().splitlines()
            if line.startswith("| bbox_mAP |")]
    assert rows and all(row.endswith(f"| {SUSPICIOUS} |") for row in rows)
    assert not any("yes" in row for row in rows)


def test_suspicious_margin_boundary():
    """Up to SUSPICIOUS_ABOVE_REL above published passes as "higher"; beyond it is flagged."""
    from common.report import SUSPICIOUS_ABOVE_REL

    published = 35.9
    edge = compare(published * (1 + SUSPICIOUS_ABOVE_REL) * (1 - 1e-9), published)
    assert edge["within_tolerance"] is True and edge["higher"] is True and edge["suspicious"] is False
    above = compare(published * (1 + SUSPICIOUS_ABOVE_REL) * (1 + 1e-6), published)
    assert above["within_tolerance"] is False and above["suspicious"] is True
    assert compare(100.0, published)["suspicious"] is True
    assert compare(float("nan"), published)["suspicious"] is None


def test_eval_reports_the_exports_parity_and_prints_the_report_path_last(fcos_oracle, tmp_path):
    """`make M-eval` passes --model: the parity record beside that .onnx goes into the report."""
    prep, results = fcos_oracle
    model = tmp_path / "onnx" / "fcos_ascend_bs1.onnx"
    model.parent.mkdir()
    model.write_bytes(b"not read by eval")
    row = {"name": "dets", "shape": [1, 100, 5], "max_abs_diff": 0.0123, "max_rel_diff": 0.5, "atol": 0.05,
           "rtol": 0.001, "ok": False, "matched": 97}
    record = {"ok": False, "rows": [row],
              "weights": {"file": "/w/fcos.pth", "sha256": "ab" * 32, "verified": True}}
    model.with_suffix(".parity.json").write_text(json.dumps(record))
    out = tmp_path / "eval"
    proc = tool_cli("fcos", "eval", "--prep", str(prep), "--results", str(results), "--out", str(out),
                    "--model", str(model))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip("\n").splitlines()[-1] == f"report: {out / 'report.md'} (and {out / 'report.json'})"
    parity = json.loads((out / "report.json").read_text())["provenance"]["parity"]
    assert parity == {"ok": False, "rows": [{k: v for k, v in row.items() if k != "matched"}]}
    md = (out / "report.md").read_text()
    assert "Verdict: **FAIL**" in md and "| dets | [1, 100, 5] | 0.0123 | 0.5 | 0.05 | 0.001 | NO |" in md
