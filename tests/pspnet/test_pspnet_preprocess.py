"""PSPNet preprocessing is recipe-exact (mmsegmentation_voc2012_preprocess.py: floored sides, float16
mean/std), bit for bit, on awkward sizes; with the upstream rules (round, float32 mean/std) it is
mmseg 0.16's own transforms built from the config in the mmseg wheel, exact up to the float16
cast; EXIF-rotated JPEGs are turned as the recipe's mmcv.imread turns them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common import pipeline
from common.dataset import read_image_bgr
from common.demovoc import make_mini_voc
from common.tensors import read_tensor
from tests.letterboxcases import (
    CANDIDATE_SIZES,
    assert_awkward,
    assert_equals_recipe,
    assert_rules_change_the_input,
    awkward_sizes,
    exif_rotated_jpeg,
    input_rules,
    photo,
    recipe_letterbox,
)
from tools.pspnet import tool

# the constants of the recipe's script (not the data file's), so a wrong model.toml is caught
RECIPE_MEAN = (123.675, 116.28, 103.53)
RECIPE_STD = (58.395, 57.12, 57.375)
CASES = awkward_sizes(500, 500)
UPSTREAM = {"resize_rounding": "round", "norm_dtype": "float32"}


def _recipe(img: np.ndarray) -> np.ndarray:
    return recipe_letterbox(img, 500, 500, RECIPE_MEAN, RECIPE_STD, held_dtype=np.float16, to_rgb=True,
                            out_dtype=np.float16)


def test_the_size_set_holds_every_awkward_case_for_the_pspnet_canvas():
    assert_awkward(CASES, {"portrait", "landscape", "odd width", "floor != round"})
    assert any({"floor != round", "portrait"} <= k for k in CASES.values())
    assert any({"floor != round", "landscape"} <= k for k in CASES.values())


@pytest.mark.parametrize("h, w", CANDIDATE_SIZES)
def test_preprocess_is_the_recipes_script_bit_for_bit(h, w):
    img = photo(h, w, seed=h + w)
    assert_equals_recipe(tool, img, _recipe(img))
    assert tool.SPEC.input.dtype == "float16"


def _mmseg_config():
    """mmseg's own config for this model, from the installed wheel (not from the tool)."""
    import mmseg
    from mmcv import Config

    return Config.fromfile(str(Path(mmseg.__file__).parent / ".mim" / "configs" / tool.CONFIG))


def _mmseg_normalize_step() -> dict:
    (aug,) = [s for s in _mmseg_config().data.test.pipeline if s["type"] == "MultiScaleFlipAug"]
    (norm,) = [s for s in aug["transforms"] if s["type"] == "Normalize"]
    return dict(norm)


def test_the_data_file_has_mmsegs_config_values():
    norm = _mmseg_normalize_step()
    spec = tool.SPEC.input
    assert norm["to_rgb"] is True and spec.color == "RGB"
    assert tuple(norm["mean"]) == spec.mean and tuple(norm["std"]) == spec.std


def _mmseg_transforms(path: Path, norm: dict):
    """mmseg 0.16's LoadImageFromFile -> keep-ratio Resize into 500x500 -> the config's Normalize."""
    from mmseg.datasets.pipelines import LoadImageFromFile, Normalize, Resize

    results = LoadImageFromFile()({"img_prefix": None, "img_info": {"filename": str(path)}})
    results = Resize(img_scale=(500, 500), keep_ratio=True)(results)
    norm = {k: v for k, v in norm.items() if k != "type"}
    return Normalize(**norm)(results)


@pytest.mark.parametrize("h, w", CANDIDATE_SIZES)
def test_upstream_rules_are_mmsegs_transforms_exact_up_to_float16(tmp_path, h, w):
    import cv2

    path = tmp_path / "img.png"  # lossless: both sides decode the same pixels
    cv2.imwrite(str(path), photo(h, w, seed=h * w))
    with input_rules(tool, **UPSTREAM):
        tensor, (sx, sy), (left, top, right, bottom) = tool.preprocess(read_image_bgr(path, exif=True))
    results = _mmseg_transforms(path, _mmseg_normalize_step())
    ref = results["img"].transpose(2, 0, 1)
    new_h, new_w = ref.shape[1:]
    assert (500 - left - right, 500 - top - bottom) == (new_w, new_h)
    assert (sx, sy) == pytest.approx(tuple(results["scale_factor"][:2]), rel=1e-6)
    assert np.array_equal(tensor[:, top:top + new_h, left:left + new_w], ref.astype(np.float16))
    assert not tensor[:, :top].any() and not tensor[:, top + new_h:].any()
    assert not tensor[:, :, :left].any() and not tensor[:, :, left + new_w:].any()


@pytest.mark.parametrize("h, w", [s for s, kinds in CASES.items() if "floor != round" in kinds][:3])
def test_where_floor_and_round_differ_the_recipe_and_mmseg_inputs_differ(h, w):
    assert_rules_change_the_input(tool, h, w, **UPSTREAM)


def test_the_data_file_states_the_recipe_rules():
    """The recipe's script floors the resized sides, holds mean/std in float16 and reads with cv2 (EXIF applied)."""
    spec = tool.SPEC.input
    assert (spec.resize_rounding, spec.norm_dtype, spec.exif_orientation) == ("floor", "float16", "apply")


def test_exif_rotated_jpeg_is_turned_as_the_recipe_reads_it(tmp_path):
    """The recipe reads with mmcv.imread(backend='cv2') = cv2.imread(IMREAD_COLOR), which applies EXIF
    orientation (so does mmseg's LoadImageFromFile); the data step does the same."""
    import mmcv

    root = make_mini_voc(tmp_path / "voc", n_images=1, sizes=[(300, 520)])
    jpeg = next((root / "JPEGImages").glob("*.jpg"))
    exif_rotated_jpeg(jpeg, photo(300, 520, seed=4), orientation=8)
    recipe_read = mmcv.imread(str(jpeg), backend="cv2")
    assert recipe_read.shape == (520, 300, 3)  # the file really is turned when read the recipe's way
    manifest = pipeline.preprocess_dataset(tool, root, tmp_path / "prep")
    (entry,) = manifest.entries
    assert tuple(entry.orig_size) == (300, 520)
    got = read_tensor(tmp_path / "prep" / entry.file, "float16", (3, 500, 500))
    assert np.array_equal(got, _recipe(recipe_read))
