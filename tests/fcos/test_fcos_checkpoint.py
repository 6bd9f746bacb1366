"""The published checkpoint format (mmdet v1) and its named upgrade to mmdet 2.13 names."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from common.contract import TARGETS
from common.errors import ToolError
from common.weights import load_state_dict, safe_load
from tools.fcos import checkpoint as ck
from tools.fcos import tool
from tools.fcos.config import IMG_NORM, TEST_CFG

V1_HEAD_KEYS = {f"bbox_head.{p}.{t}" for p in ("fcos_cls", "fcos_reg", "fcos_centerness")
                for t in ("weight", "bias")}


def test_data_file_matches_the_recipe_config():
    assert list(tool.SPEC.input.mean) == IMG_NORM["mean"] and list(tool.SPEC.input.std) == IMG_NORM["std"]
    assert tool.SPEC.input.color == "BGR" and not IMG_NORM["to_rgb"]
    assert tuple(tool.SPEC.input.shape) == (3, 800, 1333)
    assert tool.SPEC.input.placement == "center"
    assert (TEST_CFG["nms_pre"], TEST_CFG["score_thr"], TEST_CFG["nms"]["iou_threshold"],
            TEST_CFG["max_per_img"]) == (1000, 0.05, 0.5, 100)
    assert tool.SPEC.weights.sha256_prefix == tool.SPEC.weights.filename.rsplit("-", 1)[1].split(".")[0]
    for target in TARGETS:
        assert [(o.name, o.dtype, o.shape) for o in tool.SPEC.outputs_for(target)] == [
            ("dets", "float32", (100, 5)), ("labels", "int64", (100,))]


def test_random_checkpoint_has_the_v1_file_layout(checkpoint):
    raw = safe_load(checkpoint)  # plain tensors/containers only: loads without unpickling code
    assert set(raw) == {"meta", "state_dict"}
    assert raw["meta"]["mmdet_version"].startswith("1.")
    assert len(raw["meta"]["CLASSES"]) == 80
    keys = set(raw["state_dict"])
    assert V1_HEAD_KEYS <= keys
    assert not any(".conv_cls." in k or ".conv_reg." in k or ".conv_centerness." in k for k in keys)
    # everything else is named as mmdet 2.13's FCOS names it, one to one
    model_keys = set(tool.build_detector().state_dict())
    assert set(ck.upgrade_v1_keys(raw["state_dict"])) == model_keys
    assert not any(".gn." in k for k in keys)  # no GroupNorm head: the a7cac5ff file is the GN=N model


def test_upgrade_renames_exactly_the_three_prediction_convs():
    v1 = OrderedDict((k, i) for i, k in enumerate(sorted(V1_HEAD_KEYS) + ["bbox_head.cls_convs.0.conv.weight",
                                                                           "backbone.conv1.weight",
                                                                           "bbox_head.scales.0.scale"]))
    up = ck.upgrade_v1_keys(v1)
    assert list(up.values()) == list(v1.values())  # values and order untouched
    assert {k for k in up if k not in v1} == {k.replace("fcos_", "conv_") for k in V1_HEAD_KEYS}
    assert ck.is_v1(v1) and not ck.is_v1(up)
    assert ck.upgrade_v1_keys(up) == up  # a 2.x dict passes unchanged
    assert ck.downgrade_to_v1_keys(up) == v1


def test_load_model_loads_every_tensor_of_the_v1_file(checkpoint):
    state = load_state_dict(checkpoint)
    model = tool.load_model(checkpoint)
    assert not model.training
    got = model.state_dict()
    assert torch.equal(got["bbox_head.conv_cls.bias"], state["bbox_head.fcos_cls.bias"])
    assert torch.equal(got["bbox_head.conv_centerness.weight"], state["bbox_head.fcos_centerness.weight"])
    assert torch.equal(got["backbone.layer3.2.bn3.running_var"], state["backbone.layer3.2.bn3.running_var"])


def test_load_model_accepts_2x_names_and_files_without_bn_counters(checkpoint, tmp_path):
    state = ck.upgrade_v1_keys(load_state_dict(checkpoint))
    no_counters = OrderedDict((k, v) for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert len(no_counters) < len(state)
    path = tmp_path / "v2.pth"
    torch.save({"state_dict": no_counters}, str(path))
    model = tool.load_model(path)
    assert torch.equal(model.state_dict()["bbox_head.conv_reg.bias"], state["bbox_head.conv_reg.bias"])


def _saved(tmp_path, state, name):
    path = tmp_path / name
    torch.save({"meta": {}, "state_dict": state}, str(path))
    return path


def test_load_model_refuses_partial_gn_and_wrong_shape_files(checkpoint, tmp_path):
    state = load_state_dict(checkpoint)
    partial = OrderedDict((k, v) for k, v in state.items() if k != "bbox_head.fcos_reg.bias")
    with pytest.raises(ToolError, match=r"missing: bbox_head\.conv_reg\.bias"):
        tool.load_model(_saved(tmp_path, partial, "partial.pth"))

    gn = OrderedDict(state)  # the GN-head file has no conv biases in the head, and gn.* affine tensors
    for i in range(4):
        for branch in ("cls_convs", "reg_convs"):
            del gn[f"bbox_head.{branch}.{i}.conv.bias"]
            gn[f"bbox_head.{branch}.{i}.gn.weight"] = torch.ones(256)
            gn[f"bbox_head.{branch}.{i}.gn.bias"] = torch.zeros(256)
    with pytest.raises(ToolError, match=r"unexpected: .*gn\.") as err:
        tool.load_model(_saved(tmp_path, gn, "gn.pth"))
    assert "\n" not in str(err.value)

    wrong = OrderedDict(state)
    wrong["bbox_head.fcos_cls.weight"] = torch.zeros(81, 256, 3, 3)
    wrong["bbox_head.fcos_cls.bias"] = torch.zeros(81)
    with pytest.raises(ToolError, match=r"wrong shape.*conv_cls"):
        tool.load_model(_saved(tmp_path, wrong, "81.pth"))


def test_random_checkpoint_is_deterministic_per_seed(checkpoint, tmp_path):
    again = load_state_dict(tool.random_checkpoint(tmp_path / "again.pth", seed=0))
    other = load_state_dict(tool.random_checkpoint(tmp_path / "other.pth", seed=1))
    first = load_state_dict(checkpoint)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["bbox_head.fcos_cls.bias"], other["bbox_head.fcos_cls.bias"])
