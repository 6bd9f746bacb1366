"""Preprocessing: the recipe's rule (shortest edge 800, longest <= 1333, int(x + 0.5), cv2 bilinear,
BGR mean, zeros bottom/right to 1344) and detectron2's ResizeShortestEdge on the same images."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from common.dataset import read_image_bgr
from tools.maskrcnn import d2, tool

#: (height, width): landscape / portrait, limited by the short edge (-> 800) or the long edge (-> 1333)
SIZES = {"landscape, short edge": (480, 640), "portrait, short edge": (640, 427),
         "landscape, long edge": (300, 1000), "portrait, long edge": (1200, 500),
         "square": (333, 333), "rounding at .5": (600, 1001)}


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _recipe_tensor(img: np.ndarray) -> np.ndarray:
    """The recipe's steps written out plainly (seed 000, maskrcnn_pth_preprocess_detectron2.py)."""
    h, w = img.shape[:2]
    scale = 800 / min(h, w)
    nh, nw = h * scale, w * scale
    if max(nh, nw) > 1333:
        nh, nw = nh * 1333 / max(nh, nw), nw * 1333 / max(nh, nw)
    resized = cv2.resize(img, (int(nw + 0.5), int(nh + 0.5)), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    resized -= np.array([103.53, 116.28, 123.675], np.float32)
    out = np.zeros((1344, 1344, 3), np.float32)
    out[: resized.shape[0], : resized.shape[1]] = resized
    return out.transpose(2, 0, 1)


@pytest.mark.parametrize("name", SIZES)
def test_preprocess_equals_the_recipe_and_detectron2_sizes(name):
    d2.import_detectron2()
    from detectron2.data.transforms import ResizeShortestEdge

    height, width = SIZES[name]
    img = _image(height, width)
    tensor, (sx, sy), pad = tool.preprocess(img)
    assert tensor.shape == (3, 1344, 1344) and tensor.dtype == np.float32
    np.testing.assert_allclose(tensor, _recipe_tensor(img), atol=1e-4, rtol=0)
    resize = ResizeShortestEdge(800, 1333).get_transform(img)
    assert (resize.new_h, resize.new_w) == tool.resized_size(height, width)
    assert min(resize.new_h, resize.new_w) == 800 or max(resize.new_h, resize.new_w) == 1333
    assert (sx, sy) == (resize.new_w / width, resize.new_h / height)
    assert pad == (0, 0, 1344 - resize.new_w, 1344 - resize.new_h)


def test_detectron2_resizes_with_pil_to_the_same_size():
    """detectron2 resizes uint8 images with PIL (antialiased); the recipe with cv2. Same geometry,
    pixels within a few grey levels on a smooth image (the README states the difference)."""
    d2.import_detectron2()
    from detectron2.data.transforms import ResizeShortestEdge

    yy, xx = np.mgrid[0:480, 0:640]
    img = np.stack([xx * 255 // 640, yy * 255 // 480, (xx + yy) * 255 // 1120], -1).astype(np.uint8)
    theirs = ResizeShortestEdge(800, 1333).get_transform(img).apply_image(img).astype(np.float32)
    ours, _, _ = tool.preprocess(img)
    ours = ours[:, : theirs.shape[0], : theirs.shape[1]].transpose(1, 2, 0) + np.array(tool.SPEC.input.mean, np.float32)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).mean() < 1.0


def test_exif_rotated_jpeg_is_turned_like_cv2_imread_and_detectron2(tmp_path):
    """The recipe reads with cv2.imread, which applies the EXIF orientation; detectron2's
    read_image does too. A JPEG stored 640x480 with orientation 6 (rotate 90) is a 480x640 image."""
    from PIL import Image

    d2.import_detectron2()
    from detectron2.data.detection_utils import read_image

    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_image(480, 640)).save(path, exif=exif.tobytes(), quality=95)
    assert tool.SPEC.input.exif_orientation == "apply"
    ours = read_image_bgr(path, exif=tool.SPEC.input.exif_orientation == "apply")
    assert ours.shape == (640, 480, 3)
    assert (ours == cv2.imread(str(path))).all()
    assert read_image(str(path), format="BGR").shape == ours.shape
    _, (sx, sy), pad = tool.preprocess(ours)
    assert tool.resized_size(640, 480) == (1067, 800) and pad == (0, 0, 1344 - 800, 1344 - 1067)
