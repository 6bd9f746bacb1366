"""Random checkpoints in the release file's format, and safe, strict loading."""

from __future__ import annotations

import collections

import pytest
import torch
from effdet import create_model, get_efficientdet_config

from common.errors import ToolError
from tools.efficientdet import tool


def test_data_file_matches_upstream_config():
    """The numbers the host-side code reads from model.toml are effdet's own for this model."""
    cfg = get_efficientdet_config(tool.ARCH)
    assert tool.ARCH == "tf_efficientdet_d0"
    assert tool.NUM_CLASSES == cfg.num_classes
    a = tool.SPEC.raw["anchors"]
    assert (a["min_level"], a["max_level"], a["num_scales"], a["anchor_scale"]) == (
        cfg.min_level, cfg.max_level, cfg.num_scales, cfg.anchor_scale)
    assert [tuple(r) for r in a["aspect_ratios"]] == [tuple(r) for r in cfg.aspect_ratios]
    p = tool.SPEC.raw["postprocess"]
    assert p["max_detection_points"] == cfg.max_detection_points
    assert p["max_det_per_image"] == cfg.max_det_per_image
    assert list(tool.SPEC.input.shape[1:]) == list(cfg.image_size)
    assert tool.SPEC.outputs_for("ascend") == tool.SPEC.outputs_for("onnx")  # one graph for both targets


def test_random_checkpoint_is_a_flat_state_dict_of_the_upstream_model(checkpoint):
    state = torch.load(checkpoint, map_location="cpu")
    assert isinstance(state, collections.OrderedDict)
    upstream = create_model("tf_efficientdet_d0", bench_task="", pretrained=False, pretrained_backbone=False)
    ref = upstream.state_dict()
    assert list(state) == list(ref)
    assert all(state[k].shape == ref[k].shape and state[k].dtype == ref[k].dtype for k in ref)
    upstream.load_state_dict(state)  # strict, as the recipe's pth2onnx.py loads d0.pth


def test_random_checkpoint_is_deterministic_per_seed(checkpoint, tmp_path):
    same = torch.load(tool.random_checkpoint(tmp_path / "a.pth", seed=0))
    other = torch.load(tool.random_checkpoint(tmp_path / "b.pth", seed=1))
    ref = torch.load(checkpoint)
    key = "fpn.cell.0.fnode.0.after_combine.conv.bn.running_var"
    assert torch.equal(same[key], ref[key]) and not torch.equal(other[key], ref[key])
    assert not torch.equal(ref[key], torch.ones_like(ref[key]))  # batch-norm stats are randomised


def test_load_model_accepts_files_without_batch_counters(checkpoint, tmp_path):
    state = torch.load(checkpoint)
    key = "class_net.predict.conv_pw.weight"
    trimmed = collections.OrderedDict((k, v) for k, v in state.items() if "num_batches_tracked" not in k)
    torch.save({"state_dict": trimmed}, tmp_path / "wrapped.pth")
    model = tool.load_model(tmp_path / "wrapped.pth")
    assert not model.training
    assert torch.equal(model.state_dict()[key], state[key])


def test_load_model_names_efficientdet_d0_weights(tmp_path):
    """The PyTorch-trained efficientdet_d0 file lacks the head biases: refused with the reason."""
    other = create_model("efficientdet_d0", bench_task="", pretrained=False, pretrained_backbone=False)
    torch.save(other.state_dict(), tmp_path / "efficientdet_d0.pth")
    with pytest.raises(ToolError, match="efficientdet_d0 .*tf_efficientdet_d0-d92fd44f.pth"):
        tool.load_model(tmp_path / "efficientdet_d0.pth")


def test_load_model_refuses_foreign_keys_and_shapes(checkpoint, tmp_path):
    state = torch.load(checkpoint)
    extra = collections.OrderedDict(state, **{"head.fc.weight": torch.zeros(2)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ToolError, match="1 unexpected: head.fc.weight"):
        tool.load_model(tmp_path / "extra.pth")
    state["box_net.predict.conv_pw.weight"] = torch.zeros(4, 64, 1, 1)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(ToolError, match=r"box_net.predict.conv_pw.weight \[4, 64, 1, 1\] \(model \[36, 64, 1, 1\]\)"):
        tool.load_model(tmp_path / "shape.pth")
