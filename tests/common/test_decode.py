"""Pillow decodes plain JPEGs for speed (common.dataset.decode_jpeg_with_pil): the pixels must be cv2's,
bit for bit, and everything Pillow is not trusted with must still reach cv2 and its checks."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from common.dataset import decode_jpeg_with_pil, read_image_bgr
from common.demococo import photo_texture
from common.errors import ToolError

IGNORE = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.clip(photo_texture(height, width, np.random.default_rng(seed)) + 64, 0, 255).astype(np.uint8)


def _pil_jpeg(bgr: np.ndarray, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(bgr[:, :, ::-1]).save(out, "JPEG", **options)
    return out.getvalue()


def _flavours():
    """JPEGs as cameras and COCO have them: both encoders, three chroma samplings, progressive, greyscale,
    sizes that are no multiple of the 8 or 16 pixel blocks."""
    for height, width in ((480, 640), (333, 517), (641, 427), (17, 29)):
        bgr = _photo(height, width, seed=height)
        size = f"{width}x{height}"
        for quality in (75, 95):
            yield f"cv2-q{quality}-{size}", cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
        yield f"cv2-progressive-{size}", cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
        for subsampling in (0, 1, 2):  # 4:4:4, 4:2:2, 4:2:0
            yield f"pil-sub{subsampling}-{size}", _pil_jpeg(bgr, quality=90, subsampling=subsampling)
        yield f"pil-progressive-optimized-{size}", _pil_jpeg(bgr, quality=85, progressive=True, optimize=True)
        grey = io.BytesIO()
        Image.fromarray(bgr[:, :, 1]).save(grey, "JPEG")
        yield f"greyscale-{size}", grey.getvalue()


FLAVOURS = dict(_flavours())


@pytest.mark.parametrize("name", sorted(FLAVOURS))
def test_pillow_decodes_cv2s_pixels(name):
    raw = FLAVOURS[name]
    ours = decode_jpeg_with_pil(raw)
    assert ours is not None, "a plain JPEG must take the fast path"
    expected = cv2.imdecode(np.frombuffer(raw, np.uint8), IGNORE)
    assert ours.dtype == np.uint8 and ours.shape == expected.shape
    assert np.array_equal(ours, expected)


def _with_orientation(raw: bytes, orientation: int) -> bytes:
    """``raw`` re-saved by Pillow with an EXIF orientation tag."""
    image = Image.open(io.BytesIO(raw))
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


def test_a_rotated_jpeg_is_left_to_cv2_when_exif_applies(tmp_path):
    raw = _with_orientation(FLAVOURS["cv2-q95-517x333"], orientation=6)  # 90 degrees clockwise
    assert decode_jpeg_with_pil(raw, exif=True) is None
    path = tmp_path / "rotated.jpg"
    path.write_bytes(raw)
    turned = read_image_bgr(path, exif=True)
    assert turned.shape[:2] == (517, 333)  # cv2 turned it
    assert np.array_equal(turned, cv2.imread(str(path), cv2.IMREAD_COLOR))
    stored = read_image_bgr(path)  # orientation ignored: Pillow may decode it, stored pixels
    assert decode_jpeg_with_pil(raw) is not None
    assert np.array_equal(stored, cv2.imdecode(np.frombuffer(raw, np.uint8), IGNORE))


def test_orientation_one_still_takes_the_fast_path():
    raw = _with_orientation(FLAVOURS["cv2-q95-517x333"], orientation=1)
    ours = decode_jpeg_with_pil(raw, exif=True)
    assert ours is not None
    assert np.array_equal(ours, cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR))


def test_cmyk_and_non_jpegs_are_left_to_cv2():
    cmyk = io.BytesIO()
    Image.fromarray(_photo(32, 48)[:, :, ::-1]).convert("CMYK").save(cmyk, "JPEG")
    assert decode_jpeg_with_pil(cmyk.getvalue()) is None
    png = cv2.imencode(".png", _photo(32, 48))[1].tobytes()
    assert decode_jpeg_with_pil(png) is None
    assert decode_jpeg_with_pil(b"") is None


def test_a_truncated_jpeg_is_still_refused(tmp_path):
    raw = FLAVOURS["cv2-q95-640x480"]
    path = tmp_path / "cut.jpg"
    path.write_bytes(raw[: len(raw) * 2 // 3])
    assert decode_jpeg_with_pil(path.read_bytes()) is None
    with pytest.raises(ToolError, match="truncated"):
        read_image_bgr(path)


def test_a_jpeg_without_its_end_marker_is_refused_even_if_pillow_decodes_it(tmp_path):
    raw = FLAVOURS["cv2-q95-640x480"]
    assert raw.endswith(b"\xff\xd9")
    path = tmp_path / "no_eoi.jpg"
    path.write_bytes(raw[:-2])
    with pytest.raises(ToolError, match="truncated"):
        read_image_bgr(path)
