"""Our preprocess (cv2 BGR in, numpy) against effdet's own eval transform (PIL RGB in, torch)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from effdet.data.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from PIL import Image

from common.dataset import read_image_bgr
from common.errors import ToolError
from tools.efficientdet import tool


def photo_like(h, w, seed):
    """Smooth random image: JPEG-compressible like a photo, with detail for the resampling filter."""
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (7, 7), 2)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
@pytest.mark.parametrize("h,w", [(480, 640), (640, 427), (333, 1000), (512, 512), (100, 80)])
def test_equals_upstream_transform_bit_for_bit(upstream_tensor, tmp_path, ext, h, w):
    path = tmp_path / f"img{ext}"
    cv2.imwrite(str(path), photo_like(h, w, seed=h + w))
    ours, scale, pad = tool.preprocess(read_image_bgr(path))
    ref, img_scale = upstream_tensor(path)
    assert ours.dtype == np.float32 and ours.shape == (3, 512, 512)
    np.testing.assert_array_equal(ours, ref)  # same decoder (libjpeg-turbo), same PIL resize, same fp32 ops
    assert scale == pytest.approx(1.0 / img_scale, rel=1e-12)
    nw, nh = int(w * scale), int(h * scale)
    assert pad == (0, 0, 512 - nw, 512 - nh)
    fill = (np.array([124, 116, 104], np.float32) - np.array(IMAGENET_DEFAULT_MEAN, np.float32) * 255)
    if nw < 512:  # padding carries the mean colour, i.e. ~0 after normalisation
        np.testing.assert_allclose(ours[:, 0, -1] * np.array(IMAGENET_DEFAULT_STD) * 255, fill, atol=1e-3)


def test_the_data_file_states_upstreams_exif_rule():
    """effdet reads with PIL, which never applies EXIF rotation (the data step follows model.toml)."""
    assert tool.SPEC.input.exif_orientation == "ignore"


def test_exif_orientation_is_ignored_like_upstream(upstream_tensor, tmp_path):
    """COCO boxes are in stored-pixel coordinates and upstream (PIL) never applies EXIF rotation.

    The recipe's preprocess is effdet's loader: Image.open(path).convert('RGB'), no exif_transpose.
    cv2.imdecode(IMREAD_COLOR) rotates by the EXIF tag unless IMREAD_IGNORE_ORIENTATION is set;
    this pins the pipeline's image reader to upstream's behaviour.
    """
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(photo_like(120, 200, seed=3)[:, :, ::-1]).save(path, exif=exif.tobytes())
    assert Image.open(path).getexif()[0x0112] == 6
    assert cv2.imread(str(path)).shape[:2] == (200, 120)  # the tag is real: a plain decoder rotates
    bgr = read_image_bgr(path)
    assert bgr.shape[:2] == (120, 200)
    tensor, scale, pad = tool.preprocess(bgr)
    ref, img_scale = upstream_tensor(path)
    np.testing.assert_array_equal(tensor, ref)
    assert scale == pytest.approx(1.0 / img_scale, rel=1e-12) and pad == (0, 0, 0, 512 - int(120 * scale))


@pytest.mark.parametrize("bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32),
                                 np.zeros((10, 10, 4), np.uint8), np.zeros((1, 2000, 3), np.uint8)])
def test_bad_images_are_one_line_errors(bad):
    with pytest.raises(ToolError) as err:
        tool.preprocess(bad)
    assert "\n" not in str(err.value)
