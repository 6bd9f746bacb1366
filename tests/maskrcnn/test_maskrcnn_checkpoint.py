"""The model-zoo .pkl format, the strict key check and the detectron2 install route."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.contract import TARGETS
from common.envs import UNPACK_LINE, unpack_file
from common.errors import ToolError
from tests.makehelpers import REPO
from tools.maskrcnn import checkpoint as ck
from tools.maskrcnn import d2, tool


def test_data_file_matches_detectron2_config():
    cfg = d2.config()
    assert list(tool.SPEC.input.mean) == list(cfg.MODEL.PIXEL_MEAN) and list(tool.SPEC.input.std) == [1.0] * 3
    assert cfg.INPUT.FORMAT == "BGR" and tool.SPEC.input.color == "BGR"
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (tool.SHORT_EDGE, tool.MAX_SIZE) == (800, 1333)
    assert cfg.MODEL.RESNETS.DEPTH == 101 and cfg.MODEL.MASK_ON
    assert (cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST, cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST, cfg.TEST.DETECTIONS_PER_IMAGE,
            cfg.MODEL.RPN.NMS_THRESH, cfg.MODEL.RPN.PRE_NMS_TOPK_TEST, cfg.MODEL.RPN.POST_NMS_TOPK_TEST) == (
        0.05, 0.5, 100, 0.7, 1000, 1000)
    for target in TARGETS:
        assert [(o.name, o.dtype, o.shape) for o in tool.SPEC.outputs_for(target)] == [
            ("boxes", "float32", (100, 4)), ("scores", "float32", (100,)), ("classes", "int64", (100,)),
            ("masks", "float32", (100, 28, 28))]


def test_random_checkpoint_has_the_model_zoo_layout(checkpoint):
    with open(checkpoint, "rb") as f:
        raw = pickle.load(f)
    assert set(raw) == {"model", "__author__"} and raw["__author__"] == "Detectron2 Model Zoo"
    assert all(isinstance(v, np.ndarray) for v in raw["model"].values())
    assert set(raw["model"]) == set(tool.build_detector().state_dict())
    assert "backbone.bottom_up.res5.2.conv3.norm.running_var" in raw["model"]


def test_detectron2_own_checkpointer_reads_it(checkpoint):
    """detectron2's DetectionCheckpointer takes the file as a model-zoo file (the format is right)."""
    from detectron2.checkpoint import DetectionCheckpointer

    model = tool.build_detector()
    DetectionCheckpointer(model).load(str(checkpoint))
    ours = tool.load_model(checkpoint).state_dict()
    for key, value in model.state_dict().items():
        assert (value == ours[key]).all(), key


def _rewrite(src: Path, dst: Path, edit) -> Path:
    with open(src, "rb") as f:
        raw = pickle.load(f)
    edit(raw["model"])
    with open(dst, "wb") as f:
        pickle.dump(raw, f)
    return dst


def test_missing_and_unexpected_keys_are_named(checkpoint, tmp_path):
    def edit(model):
        del model["roi_heads.mask_head.predictor.bias"]
        model["roi_heads.keypoint_head.score_lowres.weight"] = np.zeros(3, np.float32)

    bad = _rewrite(checkpoint, tmp_path / "other.pkl", edit)
    with pytest.raises(ToolError, match=r"1 missing: roi_heads\.mask_head\.predictor\.bias; "
                                        r"1 unexpected: roi_heads\.keypoint_head\.score_lowres\.weight"):
        tool.load_model(bad)


def test_saved_pixel_mean_must_match_the_config(checkpoint, tmp_path):
    ok = _rewrite(checkpoint, tmp_path / "old.pkl", lambda m: m.update(
        pixel_mean=np.array([[[103.53]], [[116.28]], [[123.675]]], np.float32), pixel_std=np.ones((3, 1, 1))))
    tool.load_model(ok)  # older zoo files saved these buffers: accepted when they agree
    bad = _rewrite(checkpoint, tmp_path / "rgb.pkl", lambda m: m.update(pixel_mean=np.array([123.675, 116.28, 103.53])))
    with pytest.raises(ToolError, match="pixel_mean .* another input normalisation"):
        tool.load_model(bad)


def test_a_pickle_carrying_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"x": Evil()}, "__author__": "Detectron2 Model Zoo"}))
    with pytest.raises(ToolError, match="refusing to load global builtins.print"):
        ck.read_pkl(path)


def test_cli_without_weights_names_the_manual_download(tmp_path):
    """No checksum is published for the zoo file, so it is never fetched unverified."""
    env = {"ASCEND_VISION_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "tools.maskrcnn", "export", "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "model_final_a3ec72.pkl must be downloaded by hand" in proc.stderr


def test_the_unpacked_detectron2_is_the_pinned_sdist():
    """The venv route: detectron2 came from the sha256-pinned sdist (requirements-unpack.txt), and
    the missing compiled extension is a stand-in that names the op instead of crashing on import."""
    (requirement, sha256, package), = UNPACK_LINE.findall(unpack_file("maskrcnn").read_text())
    assert (requirement, package) == ("detectron2-cdo==0.5", "detectron2") and re.fullmatch("[0-9a-f]{64}", sha256)
    if d2.route() == "compiled":
        pytest.skip("compiled detectron2 (image route): no stand-in")
    d2.import_detectron2()
    import detectron2
    import detectron2.layers  # imports deform_conv etc., which import _C at module level
    from detectron2 import _C

    assert detectron2.__version__ == "0.5"
    with pytest.raises(d2.MissingExtensionError, match="deform_conv_forward is a compiled detectron2 op"):
        _C.deform_conv_forward  # noqa: B018  (the attribute access itself must raise)
