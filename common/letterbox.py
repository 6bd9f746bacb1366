"""The Ascend recipes' centred letterbox: keep-ratio resize into a fixed canvas, zero padding around it.

FCOS and PSPNet preprocess this way (mmdet/mmseg would pad bottom-right); the data file's input
section (shape, color, mean, std, dtype, and the two rules below) says everything else:

- ``resize_rounding``: the scaled sides become pixels by ``floor`` (the recipes' preprocessing
  scripts: ``int(np.floor(side * scale))``) or by ``round`` (``int(side * scale + 0.5)``, as
  mmcv.rescale_size in mmdet's/mmseg's Resize). They differ by one pixel whenever the fraction of
  ``side * scale`` is 0.5 or more, which moves and rescales the whole image in the canvas.
- ``norm_dtype``: the precision mean/std are held in before normalising (``float16`` in the
  PSPNet recipe's script, ``float32`` in mmcv's Normalize); normalisation itself is
  mmcv.imnormalize's arithmetic (float64 ``(pixel - mean) * (1 / std)`` rounded to float32), so
  either setting is bit-equal to the code it names.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from common.errors import ToolError
from common.spec import InputSpec
from common.tensors import np_dtype

#: scaled side (a float) -> pixels, per ``resize_rounding``
ROUNDINGS = {
    "floor": math.floor,
    "round": lambda x: int(x + 0.5),
}


def scaled_side(side: int, scale: float, rounding: str) -> int:
    """``side * scale`` as a whole number of pixels by the data file's rule."""
    try:
        to_pixels = ROUNDINGS[rounding]
    except KeyError:
        raise ToolError(f"unknown resize_rounding '{rounding}' (valid: {', '.join(ROUNDINGS)})") from None
    return int(to_pixels(side * scale))


def centred_letterbox(height: int, width: int, canvas_h: int, canvas_w: int,
                      rounding: str = "round") -> tuple[int, int, int, int]:
    """(new_h, new_w, top, left) of an image fitted into the canvas, keeping its aspect ratio.

    scale = min(canvas_w / w, canvas_h / h) (the recipes' rule, for portrait images too); sides
    become pixels by ``rounding`` (see the module docstring), at least 1 and at most the canvas;
    the image is centred, as the Ascend recipes pad (mmdet/mmseg pad bottom-right).
    """
    scale = min(canvas_w / width, canvas_h / height)
    new_w = min(max(scaled_side(width, scale, rounding), 1), canvas_w)
    new_h = min(max(scaled_side(height, scale, rounding), 1), canvas_h)
    return new_h, new_w, (canvas_h - new_h) // 2, (canvas_w - new_w) // 2


def normalize(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 HWC pixels (already in ``spec.color`` order) -> float32 ``(pixel - mean) / std``.

    Computed as mmcv.imnormalize does (mean and 1/std in float64, result rounded to float32), after
    holding mean/std in ``spec.norm_dtype``: bit-equal to the recipe's script or to mmcv's Normalize.
    """
    held = np_dtype(spec.norm_dtype)
    mean = np.asarray(spec.mean, held).astype(np.float64)
    inv_std = 1.0 / np.asarray(spec.std, held).astype(np.float64)
    return ((pixels.astype(np.float64) - mean) * inv_std).astype(np.float32)


def _placement(image_bgr: np.ndarray, spec: InputSpec):
    """(the checked image, (new_h, new_w, top, left)) of the centred letterbox."""
    img = np.asarray(image_bgr)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or 0 in img.shape:
        raise ToolError(f"preprocess wants a BGR uint8 image (H, W, 3), got {img.dtype} {list(img.shape)}")
    _, canvas_h, canvas_w = spec.shape
    height, width = img.shape[:2]
    return img, centred_letterbox(height, width, canvas_h, canvas_w, spec.resize_rounding)


def _resized_in_canvas(image_bgr: np.ndarray, spec: InputSpec):
    """(the image resized as the data file says, (new_h, new_w, top, left)) for the centred letterbox."""
    import cv2

    img, placed = _placement(image_bgr, spec)
    new_h, new_w, _, _ = placed
    return cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR), placed


def _geometry(image_bgr: np.ndarray, spec: InputSpec, placed: tuple[int, int, int, int]):
    """(scale_x, scale_y), (left, top, right, bottom) of a placed image, as the manifest records them."""
    height, width = np.shape(image_bgr)[:2]
    new_h, new_w, top, left = placed
    _, canvas_h, canvas_w = spec.shape
    return (new_w / width, new_h / height), (left, top, canvas_w - new_w - left, canvas_h - new_h - top)


def letterbox_tensor(image_bgr: np.ndarray, spec: InputSpec):
    """BGR uint8 image -> (CHW canvas in ``spec.dtype``, (scale_x, scale_y), (left, top, right, bottom)).

    cv2 bilinear resize (mmcv.imresize) to the size ``spec.resize_rounding`` gives, channels
    swapped when ``spec.color`` is RGB, :func:`normalize`, zeros around the centred image (zero
    after normalisation), then the cast to ``spec.dtype`` (the recipe casts the padded canvas).
    """
    resized, placed = _resized_in_canvas(image_bgr, spec)
    new_h, new_w, top, left = placed
    c, canvas_h, canvas_w = spec.shape
    if spec.color == "RGB":
        resized = resized[:, :, ::-1]
    canvas = np.zeros((canvas_h, canvas_w, c), np.float32)
    canvas[top:top + new_h, left:left + new_w] = normalize(resized, spec)
    tensor = np.ascontiguousarray(canvas.transpose(2, 0, 1)).astype(np_dtype(spec.dtype), copy=False)
    scale, pad = _geometry(image_bgr, spec, placed)
    return tensor, scale, pad


@functools.lru_cache(maxsize=8)
def filled_canvas(height: int, width: int, fill: tuple[int, int, int]) -> np.ndarray:
    """A read-only (height, width, 3) uint8 canvas filled with ``fill``, to be copied per image (a memcpy;
    broadcasting a 3-value fill into every pixel costs more than the resize)."""
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = fill
    canvas.setflags(write=False)
    return canvas


def mean_filled_canvas(spec: InputSpec) -> np.ndarray:
    """The read-only uint8 canvas of ``spec`` filled with the BGR pixel nearest the mean
    (:func:`common.aipp.fill_pixel_bgr`: zero after AIPP's normalisation, up to rounding)."""
    from common.aipp import fill_pixel_bgr

    _, canvas_h, canvas_w = spec.shape
    return filled_canvas(canvas_h, canvas_w, tuple(int(v) for v in fill_pixel_bgr(spec)))


def pixels_top_left(resized_bgr: np.ndarray, spec: InputSpec) -> np.ndarray:
    """``INPUT=uint8`` canvas of a model that pads bottom and right: the resized BGR pixels top-left on
    :func:`mean_filled_canvas` (Mask R-CNN, RetinaMask)."""
    canvas = mean_filled_canvas(spec).copy()
    canvas[:resized_bgr.shape[0], :resized_bgr.shape[1]] = resized_bgr
    return canvas


def letterbox_pixels(image_bgr: np.ndarray, spec: InputSpec):
    """BGR uint8 image -> (HWC uint8 BGR canvas, scale, padding): :func:`letterbox_tensor` before
    normalisation, for ``INPUT=uint8`` (the NPU's AIPP normalises; common.aipp). The canvas is
    filled with the pixel nearest the mean (zero after normalisation, up to rounding).

    cv2 resizes straight into the canvas (its ``dst`` may be a view) and only the four padding strips
    are copied from the filled canvas: each byte is written once, no resized copy is allocated.
    """
    import cv2

    img, placed = _placement(image_bgr, spec)
    new_h, new_w, top, left = placed
    filled = mean_filled_canvas(spec)
    canvas = np.empty_like(filled)
    bottom, right = top + new_h, left + new_w
    for strip in (np.s_[:top], np.s_[bottom:], np.s_[top:bottom, :left], np.s_[top:bottom, right:]):
        canvas[strip] = filled[strip]
    cv2.resize(img, (new_w, new_h), dst=canvas[top:bottom, left:right], interpolation=cv2.INTER_LINEAR)
    scale, pad = _geometry(image_bgr, spec, placed)
    return canvas, scale, pad
