"""The letterbox rules a data file states (resize rounding, mean/std precision, EXIF orientation)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from common.dataset import read_image_bgr
from common.errors import ToolError
from common.letterbox import centred_letterbox, letterbox_tensor, normalize
from common.spec import REPO_ROOT, load_spec
from tests.letterboxcases import (
    assert_awkward,
    awkward_sizes,
    exif_rotated_jpeg,
    floor_px,
    geometry,
    photo,
    round_px,
)

CANVASES = [(800, 1333), (500, 500)]  # FCOS, PSPNet


@pytest.mark.parametrize("canvas_h, canvas_w", CANVASES)
@pytest.mark.parametrize("rounding, to_pixels", [("floor", floor_px), ("round", round_px)])
def test_geometry_follows_the_stated_rounding_on_awkward_sizes(canvas_h, canvas_w, rounding, to_pixels):
    cases = awkward_sizes(canvas_h, canvas_w)
    assert_awkward(cases, {"portrait", "landscape", "odd width", "floor != round"})
    for h, w in cases:
        new_h, new_w, top, left = centred_letterbox(h, w, canvas_h, canvas_w, rounding)
        assert (new_h, new_w) == geometry(h, w, canvas_h, canvas_w, to_pixels), (h, w)
        assert (top, left) == ((canvas_h - new_h) // 2, (canvas_w - new_w) // 2)


def test_floor_and_round_place_an_image_differently():
    """640x480 (w x h) into 1333x800: 1066.67 px wide -> 1066 (recipe) or 1067 (mmdet)."""
    assert centred_letterbox(480, 640, 800, 1333, "floor") == (800, 1066, 0, 133)
    assert centred_letterbox(480, 640, 800, 1333, "round") == (800, 1067, 0, 133)
    with pytest.raises(ToolError, match="resize_rounding"):
        centred_letterbox(480, 640, 800, 1333, "ceil")


@pytest.mark.parametrize("held", ["float32", "float16"])
def test_normalize_is_bit_equal_to_opencvs_arithmetic_as_mmcv_calls_it(held):
    """mmcv.imnormalize: float32 image, cv2.subtract(mean as float64), cv2.multiply(1 / std as float64)."""
    import cv2

    spec = dataclasses.replace(load_spec("pspnet").input, norm_dtype=held)
    pixels = photo(61, 97, seed=3)[:, :, ::-1]
    ref = pixels.astype(np.float32)
    mean = np.asarray(spec.mean, held).astype(np.float64).reshape(1, -1)
    inv_std = 1 / np.asarray(spec.std, held).astype(np.float64).reshape(1, -1)
    cv2.subtract(ref, mean, ref)
    cv2.multiply(ref, inv_std, ref)
    got = normalize(pixels, spec)
    assert got.dtype == np.float32 and np.array_equal(got, ref)


def test_float16_mean_std_change_the_pspnet_tensor():
    """The recipe's float16 mean/std (123.6875 for 123.675, 116.25 for 116.28, 58.40625 for 58.395, ...)
    shift normalised values by up to ~1e-3 before the float16 cast, which moves many float16
    inputs by one or two units (measured in the README)."""
    spec = load_spec("pspnet").input
    img = photo(375, 500, seed=1)
    recipe, _, _ = letterbox_tensor(img, dataclasses.replace(spec, norm_dtype="float16"))
    mmseg, _, _ = letterbox_tensor(img, dataclasses.replace(spec, norm_dtype="float32"))
    differ = recipe != mmseg
    assert differ.any()
    step = np.abs(recipe.astype(np.float32) - mmseg.astype(np.float32))[differ]
    bound = 1e-3 + np.abs(np.spacing(recipe[differ])).astype(np.float32)  # the shift, plus one float16 unit
    assert (step <= bound).all()


def test_a_wrong_rule_in_a_data_file_is_a_clear_error(tmp_path):
    text = (REPO_ROOT / "tools" / "fcos" / "model.toml").read_text()
    bad = tmp_path / "model.toml"
    bad.write_text(text.replace('resize_rounding = "floor"', 'resize_rounding = "nearest"'))
    with pytest.raises(ToolError, match=r"model.toml: \[input\] resize_rounding = 'nearest' is not one of round, "
                                        r"floor: fix the data file"):
        load_spec(bad)


def test_exif_orientation_is_applied_only_when_asked(tmp_path):
    stored = photo(40, 64, seed=2)
    path = tmp_path / "phone.jpg"
    exif_rotated_jpeg(path, stored, orientation=6)
    kept = read_image_bgr(path)
    turned = read_image_bgr(path, exif=True)
    assert kept.shape == (40, 64, 3) and turned.shape == (64, 40, 3)
    # orientation 6 = shown turned 90 degrees clockwise; JPEG loss allows small differences only
    assert np.abs(turned.astype(int) - np.rot90(kept, k=-1).astype(int)).max() == 0
    import cv2

    assert np.array_equal(turned, cv2.imread(str(path), cv2.IMREAD_COLOR))  # what mmcv.imread (cv2) returns
