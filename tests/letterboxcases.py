"""Awkward image sizes for the centred-letterbox tools (FCOS, PSPNet), and the recipes' preprocessing
rewritten in plain steps, for bit-for-bit parity tests.

The reference below follows the steps of the two Ascend ModelZoo-PyTorch scripts (read, not copied):
``ACL_PyTorch/contrib/cv/detection/Fcos/fcos_pth_preprocess.py`` and
``ACL_PyTorch/contrib/cv/segmentation/PSPnet/mmsegmentation_voc2012_preprocess.py``:
scale = min(W / w, H / h); both sides ``floor(side * scale)``; ``mmcv.imresize`` (cv2 bilinear);
``mmcv.imnormalize`` with mean/std built as numpy arrays of the script's dtype (float32 for FCOS,
float16 for PSPNet) and ``to_rgb`` (False for FCOS, the default True for PSPNet); ``mmcv.impad``
with left = (W - w) // 2, top = (H - h) // 2 and zeros; PSPNet casts the canvas to float16; HWC -> CHW.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from types import ModuleType

import numpy as np

#: (height, width) of photos and dataset images of many shapes: COCO/VOC sizes, phone photos,
#: odd widths, extreme aspect ratios, sizes below and above the canvases
CANDIDATE_SIZES = [
    (480, 640), (427, 640), (640, 480), (333, 500), (500, 375), (375, 500), (281, 500), (500, 333),
    (612, 612), (366, 500), (1080, 1920), (1920, 1080), (1512, 2016), (2016, 1512), (300, 1000),
    (1000, 301), (77, 913), (913, 77), (599, 799), (801, 1335), (213, 320), (240, 427), (479, 641),
]


def geometry(h: int, w: int, canvas_h: int, canvas_w: int, to_pixels) -> tuple[int, int]:
    """(new_h, new_w) by the recipes' scale with the given side rounding (written out independently)."""
    scale = min(canvas_w / w, canvas_h / h)
    return to_pixels(h * scale), to_pixels(w * scale)


def floor_px(x: float) -> int:
    return int(math.floor(x))


def round_px(x: float) -> int:
    return int(x + 0.5)


def classify(h: int, w: int, canvas_h: int, canvas_w: int) -> set[str]:
    """The awkward properties of one size in one canvas."""
    kinds = {"portrait" if h > w else "landscape"}
    if w % 2:
        kinds.add("odd width")
    kinds.add("width-limited" if canvas_w / w <= canvas_h / h else "height-limited")
    if geometry(h, w, canvas_h, canvas_w, floor_px) != geometry(h, w, canvas_h, canvas_w, round_px):
        kinds.add("floor != round")
    return kinds


def awkward_sizes(canvas_h: int, canvas_w: int) -> dict[tuple[int, int], set[str]]:
    """Every candidate size with its properties for this canvas."""
    return {size: classify(*size, canvas_h, canvas_w) for size in CANDIDATE_SIZES}


def assert_awkward(cases: dict[tuple[int, int], set[str]], wanted: set[str]) -> None:
    """The size set really holds each wanted property (so a parity test over it cannot pass vacuously)."""
    seen = set().union(*cases.values())
    assert wanted <= seen, f"the size set lacks {wanted - seen}"


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A BGR uint8 image with gradients, edges and noise, so resizing has something to blend."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.int32)
    img = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) * 7) % 256], -1)
    img = img + rng.integers(-20, 21, size=(h, w, 3))
    img[h // 4: h // 2, w // 3: w // 2] = (10, 200, 90)
    return np.clip(img, 0, 255).astype(np.uint8)


def recipe_letterbox(bgr: np.ndarray, canvas_h: int, canvas_w: int, mean, std, *, held_dtype,
                     to_rgb: bool, out_dtype) -> np.ndarray:
    """The recipes' preprocessing of one decoded image, step by step (see the module docstring)."""
    import mmcv

    h, w = bgr.shape[:2]
    new_h, new_w = geometry(h, w, canvas_h, canvas_w, floor_px)
    img = mmcv.imresize(bgr, (new_w, new_h), backend="cv2")
    img = mmcv.imnormalize(img, np.array(mean, dtype=held_dtype), np.array(std, dtype=held_dtype), to_rgb=to_rgb)
    left, top = (canvas_w - new_w) // 2, (canvas_h - new_h) // 2
    img = mmcv.impad(img, padding=(left, top, canvas_w - left - new_w, canvas_h - top - new_h), pad_val=0)
    return img.astype(out_dtype).transpose(2, 0, 1)


@contextlib.contextmanager
def input_rules(tool: ModuleType, **changes):
    """Run with ``tool.SPEC.input`` changed (e.g. ``resize_rounding="round"``, the upstream rule)."""
    original = tool.SPEC
    tool.SPEC = dataclasses.replace(original, input=dataclasses.replace(original.input, **changes))
    try:
        yield tool.SPEC
    finally:
        tool.SPEC = original


def assert_equals_recipe(tool: ModuleType, img: np.ndarray, ref: np.ndarray) -> None:
    """``tool.preprocess(img)`` is ``ref`` bit for bit, and its scale is the content size over the image size."""
    tensor, (sx, sy), (left, top, right, bottom) = tool.preprocess(img)
    _, canvas_h, canvas_w = tool.SPEC.input.shape
    assert tensor.dtype == ref.dtype and tensor.shape == ref.shape == (3, canvas_h, canvas_w)
    assert np.array_equal(tensor, ref), f"{int((tensor != ref).sum())} values differ"
    h, w = img.shape[:2]
    assert (sx, sy) == ((canvas_w - left - right) / w, (canvas_h - top - bottom) / h)


def assert_rules_change_the_input(tool: ModuleType, h: int, w: int, **upstream) -> None:
    """On a size where floor and round differ, the recipe's and the upstream rules place the image
    differently and give different tensors (so the stated choice matters for this size)."""
    img = photo(h, w)
    recipe, _, pad_recipe = tool.preprocess(img)
    with input_rules(tool, **upstream):
        other, _, pad_other = tool.preprocess(img)
    assert pad_recipe != pad_other and not np.array_equal(recipe, other)


def exif_rotated_jpeg(path, bgr: np.ndarray, orientation: int = 6) -> None:
    """Write ``bgr`` as a JPEG whose EXIF says to turn it (6: 90 degrees clockwise), as phones do."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(bgr[:, :, ::-1]).save(str(path), quality=95, exif=exif.tobytes())
