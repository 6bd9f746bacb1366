"""The upstream checkpoint format: what the random stand-in holds, what loads, and what is refused."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from common.errors import ToolError
from tests.makehelpers import REPO
from tests.retinamask.test_retinamask_keys import upstream_keys
from tools.retinamask import tool

CLI = [sys.executable, "-m", "tools.retinamask"]


def test_random_checkpoint_has_the_upstream_file_layout(checkpoint):
    data = torch.load(str(checkpoint))
    assert set(data) == {"model", "optimizer", "scheduler", "iteration"} and data["iteration"] == 20001
    keys = list(data["model"])
    assert all(k.startswith("module.") for k in keys)  # saved from 8-NPU DistributedDataParallel
    assert [(k[len("module."):], tuple(v.shape)) for k, v in data["model"].items()] == upstream_keys()


def test_load_model_takes_prefixed_and_plain_keys(checkpoint, tmp_path):
    model = tool.load_model(checkpoint)
    state = torch.load(str(checkpoint))["model"]
    weight = state["module.rpn.head.cls_logits.weight"]
    assert torch.equal(model.rpn.head.cls_logits.weight, weight) and not model.training
    plain = tmp_path / "plain.pth"
    torch.save({k[len("module."):]: v for k, v in state.items()}, str(plain))
    assert torch.equal(tool.load_model(plain).rpn.head.cls_logits.weight, weight)


def test_other_anchors_are_refused(checkpoint, tmp_path):
    data = torch.load(str(checkpoint))
    data["model"]["module.rpn.anchor_generator.cell_anchors.0"] *= 2  # e.g. another ANCHOR_SIZES
    changed = tmp_path / "anchors.pth"
    torch.save(data, str(changed))
    with pytest.raises(ToolError, match="level-0 anchors"):
        tool.load_model(changed)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=REPO, capture_output=True, text=True)


def test_export_needs_weights_from_the_manual_download(tmp_path):
    proc = _cli("export", "--out", str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "must be downloaded by hand" in proc.stderr and "WEIGHTS=<path>" in proc.stderr


def test_export_refuses_a_checkpoint_of_another_model_listing_keys(tmp_path):
    bad = tmp_path / "maskrcnn.pth"
    torch.save({"model": {"module.backbone.body.stem.conv1.weight": torch.zeros(64, 3, 7, 7),
                          "module.roi_heads.box.predictor.cls_score.weight": torch.zeros(81, 1024)}}, str(bad))
    proc = _cli("export", "--out", str(tmp_path), "--weights", str(bad))
    assert proc.returncode == 2 and "no checksum is published" in proc.stderr and "--no-verify" in proc.stderr
    proc = _cli("export", "--out", str(tmp_path), "--weights", str(bad), "--no-verify")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "317 missing: backbone.body.layer1.0.bn1.bias" in line
    assert "1 unexpected: roi_heads.box.predictor.cls_score.weight" in line
    assert not list(tmp_path.rglob("*.onnx"))
