"""Preprocessing equals the recipe's RetinaMask_preprocess.py tensors, on photo-like awkward sizes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from common.dataset import read_image_bgr
from common.demococo import make_mini_coco
from common.errors import ToolError
from common.pipeline import preprocess_dataset
from common.tensors import Manifest
from tools.retinamask import tool

MEAN = [102.9801, 115.9465, 122.7717]


def recipe_tensor(path, fix_shape: int = 1344) -> np.ndarray:
    """What the recipe's script writes (its tools/utils.py build_transforms, restated step by step):
    PIL RGB image, long side to fix_shape with sides min(int(side * ratio), fix_shape), PIL
    bilinear; float32; cv2.cvtColor(BGR2RGB) on the RGB array (so BGR); minus MEAN; zero pad
    bottom/right; CHW."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    long_side = w if w > h else h
    ratio = fix_shape / long_side
    size = (min(int(ratio * w), fix_shape), min(int(h * ratio), fix_shape))
    array = np.float32(image.resize(size, Image.BILINEAR))
    array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    array -= MEAN
    canvas = np.zeros((fix_shape, fix_shape, 3), dtype=np.float32)
    canvas[:array.shape[0], :array.shape[1], :] = array
    return canvas.transpose(2, 0, 1)


def photo_like(path, width: int, height: int, seed: int) -> None:
    """A smooth, noisy JPEG (what a photo looks like to a resize filter)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    img = cv2.resize(base, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    img = np.clip(img + rng.integers(-20, 21, size=img.shape), 0, 255).astype(np.uint8)
    cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 92])


# portrait, landscape with a fractional side (427 * 2.1 = 896.7: truncated to 896, rounding gives
# 897), odd widths, a near-square image, a very thin one, and one larger than the canvas
SIZES = [(427, 640), (640, 427), (333, 500), (1001, 999), (97, 1500), (1920, 1080), (500, 375)]


@pytest.mark.parametrize("width, height", SIZES)
def test_tensor_equals_the_recipe_script(width, height, tmp_path):
    path = tmp_path / "photo.jpg"
    photo_like(path, width, height, seed=width * 7 + height)
    tensor, ratio, pad = tool.preprocess(read_image_bgr(path))
    expected = recipe_tensor(path)
    assert tensor.dtype == np.float32 and tensor.shape == (3, 1344, 1344)
    np.testing.assert_array_equal(tensor, expected)
    long_side = max(width, height)
    assert ratio == 1344 / long_side
    new_w, new_h = min(int(width * ratio), 1344), min(int(height * ratio), 1344)
    assert pad == (0, 0, 1344 - new_w, 1344 - new_h)
    assert not tensor[:, new_h:, :].any() and not tensor[:, :, new_w:].any()  # zero after the mean


def test_sides_are_truncated_not_rounded():
    ratio, new_h, new_w = tool.resized_size(427, 640)
    assert ratio == 2.1 and (new_h, new_w) == (896, 1344)
    assert round(427 * ratio) == 897  # what a rounding resize (maskrcnn_benchmark's own) would give


def test_refuses_an_image_too_thin_to_resize():
    with pytest.raises(ToolError, match="too thin"):
        tool.preprocess(np.zeros((1, 2000, 3), dtype=np.uint8))


def test_manifest_holds_the_ratio_and_bottom_right_padding(tmp_path, small):
    root = make_mini_coco(tmp_path / "coco", n_images=3, seed=4, size_range=(100, 300))
    preprocess_dataset(tool, root, tmp_path / "prep")
    manifest = Manifest.load(tmp_path / "prep")
    assert manifest.shape == (3, 192, 192) and len(manifest.entries) == 3
    for entry in manifest.entries:
        w, h = entry.orig_size
        assert entry.scale == 192 / max(w, h)
        assert entry.pad[:2] == (0, 0)
        assert entry.pad[2:] == (192 - min(int(w * entry.scale), 192), 192 - min(int(h * entry.scale), 192))
