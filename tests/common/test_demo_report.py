"""`make demo`'s console and report: the report's location is the last line, the export's parity is in it.

In-process with the tiny test tool (the real tools run the same ``run_demo`` in their own suites'
environments); its export writes a real ONNX file and reports its parity rows.
"""

from __future__ import annotations

import json

from common.demo import run_demo
from tests.common.test_pipeline_infer import _tiny_model

PARITY = {"ok": True, "rows": [{"name": "out", "shape": [1, 4], "max_abs_diff": 2.5e-7, "max_rel_diff": 1e-6,
                                "atol": 1e-3, "rtol": 1e-3, "ok": True, "kind": "array"}]}


def test_demo_ends_with_the_report_location_and_reports_parity(tiny_tool, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no atc: the demo prints the command instead
    monkeypatch.delenv("ASCEND_TOOLKIT_HOME", raising=False)

    def random_checkpoint(path, seed=0):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"random weights")
        return path

    def export(weights, path, *, batch, target):
        path.parent.mkdir(parents=True, exist_ok=True)
        _tiny_model(path, batch)
        return json.loads(json.dumps(PARITY))

    tiny_tool.random_checkpoint = random_checkpoint
    tiny_tool.export = export
    tiny_tool.postprocess = lambda outputs, entry, target: [
        {"image_id": entry.image_id, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.5}]
    out = tmp_path / "out" / "demo" / "tiny"
    run_demo(tiny_tool, out, weights=None, data=None, n_images=2)

    stdout = capsys.readouterr().out.rstrip("\n").splitlines()
    eval_dir = out / "eval"
    assert stdout[-1] == f"report: {eval_dir / 'report.md'} (and {eval_dir / 'report.json'})"
    assert "demo/demo" not in "\n".join(stdout)

    report = json.loads((eval_dir / "report.json").read_text())
    assert report["provenance"]["parity"] == {"ok": True, "rows": [
        {k: v for k, v in PARITY["rows"][0].items() if k != "kind"}]}
    md = (eval_dir / "report.md").read_text()
    assert "## Export parity (PyTorch vs ONNX Runtime)" in md and "Verdict: **OK**" in md
    assert "| out | [1, 4] | 2.5e-07 | 1e-06 | 0.001 | 0.001 | yes |" in md
    assert (out / "onnx" / "tiny_ascend_bs1.parity.json").is_file()
