"""FCOS preprocessing is recipe-exact (fcos_pth_preprocess.py, floored sides), bit for bit, on awkward sizes;
with ``resize_rounding = "round"`` it is mmdet's own test pipeline, bit for bit; EXIF-rotated JPEGs
are turned as the recipe's mmcv.imread turns them."""

from __future__ import annotations

import numpy as np
import pytest

from common import pipeline
from common.demococo import make_mini_coco
from common.tensors import read_tensor
from tests.fcos.test_fcos_data import _mmdet_test_pipeline
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
from tools.fcos import tool

# the constants of the recipe's script (not the data file's), so a wrong model.toml is caught
RECIPE_MEAN = (102.9801, 115.9465, 122.7717)
RECIPE_STD = (1.0, 1.0, 1.0)
CASES = awkward_sizes(800, 1333)


def _recipe(img: np.ndarray) -> np.ndarray:
    return recipe_letterbox(img, 800, 1333, RECIPE_MEAN, RECIPE_STD, held_dtype=np.float32, to_rgb=False,
                            out_dtype=np.float32)


def test_the_size_set_holds_every_awkward_case_for_the_fcos_canvas():
    assert_awkward(CASES, {"portrait", "landscape", "odd width", "width-limited", "height-limited",
                           "floor != round"})
    # floor and round differ on both kinds of limit, so both orientations are exercised
    assert any({"floor != round", "portrait"} <= k for k in CASES.values())
    assert any({"floor != round", "width-limited"} <= k for k in CASES.values())


@pytest.mark.parametrize("h, w", CANDIDATE_SIZES)
def test_preprocess_is_the_recipes_script_bit_for_bit(h, w):
    img = photo(h, w, seed=h + w)
    assert_equals_recipe(tool, img, _recipe(img))
    assert tool.SPEC.input.dtype == "float32"


UPSTREAM_SIZES = [s for s, kinds in CASES.items() if "landscape" in kinds]  # mmdet's canvas differs for portrait


def test_upstream_sizes_include_floor_round_differences():
    assert any("floor != round" in CASES[s] for s in UPSTREAM_SIZES)
    assert any("width-limited" in CASES[s] for s in UPSTREAM_SIZES)


@pytest.mark.parametrize("h, w", UPSTREAM_SIZES)
def test_round_rule_is_mmdets_test_pipeline_bit_for_bit(h, w):
    img = photo(h, w, seed=h * w)
    with input_rules(tool, resize_rounding="round"):
        tensor, (sx, sy), (left, top, right, bottom) = tool.preprocess(img)
    ref, meta = _mmdet_test_pipeline(img)
    new_h, new_w = meta["img_shape"][:2]
    assert (1333 - left - right, 800 - top - bottom) == (new_w, new_h)
    assert (sx, sy) == pytest.approx(tuple(meta["scale_factor"][:2]), rel=1e-6)
    assert np.array_equal(tensor[:, top:top + new_h, left:left + new_w], ref[:, :new_h, :new_w])


@pytest.mark.parametrize("h, w", [s for s, kinds in CASES.items() if "floor != round" in kinds][:3])
def test_where_floor_and_round_differ_the_recipe_and_mmdet_inputs_differ(h, w):
    assert_rules_change_the_input(tool, h, w, resize_rounding="round")


def test_the_data_file_states_the_recipe_rules():
    """fcos_pth_preprocess.py floors the resized sides, normalises in float32 and reads with cv2 (EXIF applied)."""
    spec = tool.SPEC.input
    assert (spec.resize_rounding, spec.norm_dtype, spec.exif_orientation) == ("floor", "float32", "apply")


def test_exif_rotated_jpeg_is_turned_as_the_recipe_reads_it(tmp_path):
    """The recipe reads with mmcv.imread(backend='cv2') = cv2.imread(IMREAD_COLOR), which applies EXIF
    orientation (so does mmdet's LoadImageFromFile); the data step does the same."""
    import mmcv

    root = make_mini_coco(tmp_path / "coco", n_images=1, seed=5)
    jpeg = next((root / "val2017").glob("*.jpg"))
    stored = photo(300, 520, seed=9)
    exif_rotated_jpeg(jpeg, stored, orientation=6)
    recipe_read = mmcv.imread(str(jpeg), backend="cv2")
    assert recipe_read.shape == (520, 300, 3)  # the file really is turned when read the recipe's way
    manifest = pipeline.preprocess_dataset(tool, root, tmp_path / "prep")
    (entry,) = manifest.entries
    assert tuple(entry.orig_size) == (300, 520)  # width, height of the turned image
    got = read_tensor(tmp_path / "prep" / entry.file, "float32", (3, 800, 1333))
    assert np.array_equal(got, _recipe(recipe_read))
