"""A failed export leaves no model file under its final name (``make M-all`` keeps any file it finds).

In-process through the CLI's entry point, with the tool's export hook replaced by one that writes a
real ONNX file and reports parity as the hook under test decides.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from onnx import TensorProto, helper, save

from common import cli, contract
from common.spec import load_spec


def _write_onnx(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["out"])], "g", [x], [y])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), str(path))


@pytest.fixture
def fake_tool(monkeypatch):
    """EfficientDet's data file with an export whose parity verdict the test sets."""
    tool = SimpleNamespace(SPEC=load_spec("efficientdet"), parity_ok=False, written=[])

    def export(weights, out_path, *, batch, target):
        _write_onnx(out_path)
        tool.written.append(out_path)
        diff = 0.0 if tool.parity_ok else 0.5
        return {"ok": tool.parity_ok, "rows": [{"name": "class_p3", "shape": [1, 810, 64, 64],
                                                  "max_abs_diff": diff, "max_rel_diff": diff,
                                                  "atol": 1e-3, "rtol": 1e-3, "ok": tool.parity_ok}]}

    tool.export = export
    monkeypatch.setattr(contract, "load_tool", lambda model: tool)
    return tool


def run_cli(monkeypatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["python -m tools.efficientdet", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main_for("efficientdet")
    return exit_info.value.code


def test_parity_failure_leaves_no_model_under_the_final_name(fake_tool, monkeypatch, tmp_path, capsys):
    weights = tmp_path / "mine.pth"
    weights.write_bytes(np.arange(16, dtype=np.uint8).tobytes())
    out = tmp_path / "out" / "efficientdet" / "onnx"
    final = out / "efficientdet_ascend_bs1.onnx"
    args = ("export", "--out", str(out), "--weights", str(weights), "--no-verify")

    assert run_cli(monkeypatch, *args) == 2
    assert not final.exists()
    assert fake_tool.written and fake_tool.written[0] != final  # the hook wrote elsewhere
    assert sorted(p.name for p in out.iterdir()) == ["efficientdet_ascend_bs1.parity-failed.json"]
    err = capsys.readouterr().err
    assert "error: efficientdet_ascend_bs1.onnx: ONNX Runtime outputs differ from PyTorch" in err
    assert json.loads((out / "efficientdet_ascend_bs1.parity-failed.json").read_text())["ok"] is False

    # what `make efficientdet-all` does next: the step's output is missing, so it runs again
    fake_tool.parity_ok = True
    assert run_cli(monkeypatch, *args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["efficientdet_ascend_bs1.onnx",
                                                     "efficientdet_ascend_bs1.parity.json"]
    record = json.loads((out / "efficientdet_ascend_bs1.parity.json").read_text())
    assert record["ok"] is True and record["weights"]["verified"] is False


def test_failed_reexport_keeps_the_previous_good_model(fake_tool, monkeypatch, tmp_path, capsys):
    """--force with a failing parity: the earlier model and its parity report stay as they were."""
    weights = tmp_path / "mine.pth"
    weights.write_bytes(b"checkpoint")
    out = tmp_path / "onnx"
    args = ("export", "--out", str(out), "--weights", str(weights), "--no-verify")
    fake_tool.parity_ok = True
    assert run_cli(monkeypatch, *args) == 0
    good = {p.name: p.read_bytes() for p in out.iterdir()}
    fake_tool.parity_ok = False
    assert run_cli(monkeypatch, *args, "--force") == 2
    assert {p.name: p.read_bytes() for p in out.iterdir() if "failed" not in p.name} == good
    assert "differ from PyTorch" in capsys.readouterr().err
