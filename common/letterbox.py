"""The Ascend recipes' centred letterbox: keep-ratio resize into a fixed canvas, zero padding around it.

FCOS and PSPNet preprocess this way (mmdet/mmseg would pad bottom-right); the data file's input
section (shape, color, mean, std, dtype) says everything else.
"""

from __future__ import annotations

import numpy as np

from common.errors import ToolError
from common.spec import InputSpec
from common.tensors import np_dtype


def centred_letterbox(height: int, width: int, canvas_h: int, canvas_w: int) -> tuple[int, int, int, int]:
    """(new_h, new_w, top, left) of an image fitted into the canvas, keeping its aspect ratio.

    scale = min(canvas_w / w, canvas_h / h); sides round as mmcv.rescale_size (``int(x + 0.5)``);
    the image is centred, as the Ascend recipes pad (mmdet/mmseg pad bottom-right).
    """
    scale = min(canvas_w / width, canvas_h / height)
    new_w = min(max(int(width * scale + 0.5), 1), canvas_w)
    new_h = min(max(int(height * scale + 0.5), 1), canvas_h)
    return new_h, new_w, (canvas_h - new_h) // 2, (canvas_w - new_w) // 2


def letterbox_tensor(image_bgr: np.ndarray, spec: InputSpec):
    """BGR uint8 image -> (CHW canvas in ``spec.dtype``, (scale_x, scale_y), (left, top, right, bottom)).

    cv2 bilinear resize (mmcv.imresize), channels swapped when ``spec.color`` is RGB,
    ``(pixel - mean) / std``, zeros around the centred image (zero after normalisation).
    """
    import cv2

    img = np.asarray(image_bgr)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or 0 in img.shape:
        raise ToolError(f"preprocess wants a BGR uint8 image (H, W, 3), got {img.dtype} {list(img.shape)}")
    c, canvas_h, canvas_w = spec.shape
    height, width = img.shape[:2]
    new_h, new_w, top, left = centred_letterbox(height, width, canvas_h, canvas_w)
    resized = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    if spec.color == "RGB":
        resized = resized[:, :, ::-1]
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    canvas = np.zeros((canvas_h, canvas_w, c), np.float32)
    canvas[top:top + new_h, left:left + new_w] = (resized.astype(np.float32) - mean) / std
    tensor = np.ascontiguousarray(canvas.transpose(2, 0, 1)).astype(np_dtype(spec.dtype), copy=False)
    pad = (left, top, canvas_w - new_w - left, canvas_h - new_h - top)
    return tensor, (new_w / width, new_h / height), pad
