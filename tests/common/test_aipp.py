"""uint8 inputs + AIPP (common/aipp.py): the generated ATC config, read back from its text, does the
float path's normalisation by AIPP's documented arithmetic; the ONNX prologue does the same in
onnxruntime; the data step writes uint8 canvases and the om step passes ATC the config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common import aipp, atc
from common.errors import ToolError
from common.letterbox import letterbox_pixels, letterbox_tensor
from common.spec import MODELS, REPO_ROOT, load_spec

UINT8_MODELS = [m for m in MODELS if load_spec(m).capabilities.uint8_input]
#: awkward sizes: portrait, odd widths, a scale where floor and round differ
SIZES = [(480, 640), (640, 427), (333, 501), (1001, 97)]


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth BGR image with texture (what resizing sees in a photo), uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 128 + 90 * np.sin(x[..., None] / 17.0 + np.arange(3)) * np.cos(y[..., None] / 23.0)
    return np.clip(base + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)


def test_uint8_is_declared_somewhere_and_only_by_ready_tools():
    assert UINT8_MODELS, "no tool declares [capabilities] uint8_input: the tests below would check nothing"
    assert all(load_spec(m).status == "ready" for m in UINT8_MODELS)


@pytest.mark.parametrize("model", UINT8_MODELS)
def test_config_text_reads_back_as_the_data_files_normalisation(model):
    spec = load_spec(model)
    params = aipp.aipp_params(spec.input)
    text = aipp.aipp_config(params)
    assert aipp.parse_aipp_config(text) == params
    assert "aipp_mode : static" in text and "input_format : RGB888_U8" in text
    assert f"rbuv_swap_switch : {'true' if spec.input.color == 'RGB' else 'false'}" in text
    mean, std = aipp.pixel_mean_std(spec.input)
    back = aipp.parse_aipp_config(text)
    np.testing.assert_allclose(np.add(back.mean_chn, back.min_chn), mean, rtol=0, atol=1e-9)
    np.testing.assert_allclose(1.0 / np.asarray(back.var_reci_chn), std, rtol=1e-12)
    assert all(isinstance(m, int) and 0 <= m <= 255 for m in back.mean_chn)  # AIPP's mean_chn is an integer
    assert all(0 <= f < 1 for f in back.min_chn)


@pytest.mark.parametrize("model", [m for m in UINT8_MODELS if load_spec(m).input.placement == "center"])
@pytest.mark.parametrize("size", SIZES)
def test_aipp_on_the_uint8_canvas_equals_the_float_path_inside_the_image(model, size):
    """Letterbox tools: exact geometry; inside the image the values agree to float rounding, the padding
    differs by (round(mean) - mean) / std (the float path pads 0 after normalising, stated in common/aipp.py)."""
    spec = load_spec(model).input
    image = _photo(*size)
    tensor, scale, pad = letterbox_tensor(image, spec)
    canvas, scale8, pad8 = letterbox_pixels(image, spec)
    assert (scale8, pad8) == (scale, pad)
    assert canvas.dtype == np.uint8 and canvas.shape == (spec.height, spec.width, 3)
    params = aipp.parse_aipp_config(aipp.aipp_config(aipp.aipp_params(spec)))
    got = aipp.reference_aipp(canvas[None], params)[0]
    want = tensor.astype(np.float32)
    left, top, right, bottom = pad
    inside = (slice(None), slice(top, spec.height - bottom), slice(left, spec.width - right))
    tol = 2e-3 if spec.dtype == "float16" else 1e-4  # the float path's own rounding (float16 tensors)
    np.testing.assert_allclose(got[inside], want[inside], rtol=0, atol=tol * np.abs(want[inside]).max())
    border = np.ones(want.shape[1:], bool)
    border[inside[1:]] = False
    if border.any():
        mean, std = aipp.pixel_mean_std(spec)
        expected = (np.floor(mean + 0.5) - mean) / std
        np.testing.assert_allclose(got[:, border], np.broadcast_to(expected[:, None], got[:, border].shape),
                                   rtol=0, atol=1e-5)
        assert np.all(np.abs(expected) <= 0.5 / std + 1e-12)
        assert np.all(want[:, border] == 0)


def test_the_prologue_runs_the_same_arithmetic_in_onnxruntime(tmp_path):
    """A float NCHW model with the prologue, fed uint8 NHWC, equals that model fed reference_aipp(x)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    spec = load_spec("efficientdet").input  # RGB: exercises the channel swap
    params = aipp.aipp_params(spec)
    h, w = spec.height, spec.width
    weights = np.arange(3, dtype=np.float32).reshape(1, 3, 1, 1) + 1.0
    body = helper.make_graph(
        [helper.make_node("Mul", ["input", "w"], ["y"])], "scale_channels",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, h, w])],
        [numpy_helper.from_array(weights, "w")])
    model = helper.make_model(body, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    with_prologue = aipp.add_uint8_prologue(model, params)
    onnx.checker.check_model(with_prologue)
    x = _photo(h, w, seed=3)[None]
    session = ort.InferenceSession(with_prologue.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x})
    np.testing.assert_allclose(got, aipp.reference_aipp(x, params) * weights, rtol=1e-6, atol=1e-5)
    with pytest.raises(ToolError, match="already uint8"):
        aipp.add_uint8_prologue(with_prologue, params)


def test_reference_refuses_a_canvas_of_the_wrong_size():
    params = aipp.aipp_params(load_spec("fcos").input)
    with pytest.raises(ToolError, match="uint8"):
        aipp.reference_aipp(np.zeros((1, 8, 8, 3), np.uint8), params)


@pytest.mark.parametrize("model", UINT8_MODELS)
def test_om_step_passes_the_config_and_names_the_uint8_model(model, tmp_path):
    spec = load_spec(model)
    job = atc.build_atc(spec, tmp_path / "m.onnx", tmp_path, chip="310P3", batch=1, input_format="uint8")
    conf = [a for a in job.argv if a.startswith("--insert_op_conf=")]
    assert len(conf) == 1
    path = Path(conf[0].split("=", 1)[1])
    assert aipp.parse_aipp_config(job.side_files[path]) == aipp.aipp_params(spec.input)
    assert job.output.name == f"{model}_ascend_bs1_uint8_Ascend310P3.om"
    assert not any(a.startswith("--input_fp16_nodes") for a in job.argv)  # the AIPP input is uint8
    plain = atc.build_atc(spec, tmp_path / "m.onnx", tmp_path, chip="310P3", batch=1)
    assert not any(a.startswith("--insert_op_conf") for a in plain.argv)
    assert plain.output.name == f"{model}_ascend_bs1_Ascend310P3.om"


def _cli(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_prints_the_config_and_refuses_unknown_input_formats(tmp_path):
    done = _cli("-m", "common.aipp", "config", "--model", "fcos")
    assert done.returncode == 0, done.stderr
    assert aipp.parse_aipp_config(done.stdout) == aipp.aipp_params(load_spec("fcos").input)
    bad = _cli("-m", "common.atc", "--model", "fcos", "--onnx", str(tmp_path / "x.onnx"), "--out", str(tmp_path),
               "--chip", "310P3", "--input", "int8")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[0] == "error: unknown INPUT 'int8' (valid: float, uint8)"
    assert "Traceback" not in bad.stderr


def test_cli_writes_the_uint8_onnx_once(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    spec = load_spec("pspnet").input
    shape = [1, *spec.shape]
    g = helper.make_graph([helper.make_node("Identity", ["input"], ["seg"])], "id",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("seg", TensorProto.FLOAT, shape)])
    src = tmp_path / "pspnet_ascend_bs1.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)]), src)
    done = _cli("-m", "common.aipp", "onnx", "--model", "pspnet", "--onnx", str(src))
    assert done.returncode == 0, done.stderr
    out = tmp_path / "pspnet_ascend_bs1_uint8.onnx"
    assert done.stdout.strip() == str(out)
    model = onnx.load(out)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    again = _cli("-m", "common.aipp", "onnx", "--model", "pspnet", "--onnx", str(src))
    assert again.returncode == 2 and "already exists: pass --force" in again.stderr


def test_data_step_refuses_uint8_for_a_tool_that_does_not_declare_it(tmp_path):
    import dataclasses
    from types import SimpleNamespace

    from common import pipeline
    from common.spec import Capabilities

    spec = dataclasses.replace(load_spec("fcos"), capabilities=Capabilities())
    with pytest.raises(ToolError, match=r"no uint8 input .*uint8_input\): use INPUT=float"):
        pipeline.preprocess_dataset(SimpleNamespace(SPEC=spec), tmp_path / "coco", tmp_path / "out",
                                    input_format="uint8")
    assert not (tmp_path / "out").exists()
