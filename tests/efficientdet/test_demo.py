"""`make demo` for EfficientDet: the whole pipeline, labelled, writing nothing outside OUT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _snapshot(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def test_demo_runs_end_to_end_and_writes_only_under_out(tmp_path):
    work, out = tmp_path / "cwd", tmp_path / "cwd" / "out"
    work.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    before = _snapshot(tmp_path)
    env = {**os.environ, "HOME": str(home), "ASCEND_VISION_CACHE": str(home / "cache"),
           "XDG_CACHE_HOME": str(home / "xdg"), "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1",
           "TMPDIR": str(out / "tmp"), "ASCEND_TOOLKIT_HOME": str(tmp_path / "no-cann"),
           "PATH": os.path.dirname(sys.executable) + ":/usr/bin:/bin"}
    (out / "tmp").mkdir(parents=True)
    proc = subprocess.run([sys.executable, "-m", "tools.efficientdet", "demo", "--out", str(out), "--images", "2",
                           "--force"], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PIPELINE DEMONSTRATION" in proc.stdout and "atc --framework=5" in proc.stderr

    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["model"] == "efficientdet" and any("PIPELINE DEMONSTRATION" in n for n in report["notes"])
    assert report["provenance"]["backend"] == "onnxruntime" and report["dataset"]["num_images"] == 2
    assert "random_checkpoint.pth" in report["provenance"]["weights"]
    assert "NOT verified against the published checksum" in report["provenance"]["weights"]
    assert "bbox_mAP" in report["metrics"]
    assert len(list((out / "infer").rglob("*_0.bin"))) == 2

    created = {p for p in _snapshot(tmp_path) - before if out not in p.parents and p != out}
    assert created <= {out.parent}, f"written outside OUT: {sorted(map(str, created))}"
