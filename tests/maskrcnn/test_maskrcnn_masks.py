"""common.masks.paste_masks_detectron2 against detectron2's own paste_masks_in_image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.errors import ToolError
from common.masks import masks_to_rle, paste_masks_detectron2
from tools.maskrcnn import d2


def _random_case(seed: int, n: int, height: int, width: int):
    rng = np.random.default_rng(seed)
    masks = rng.random((n, 28, 28)).astype(np.float32)
    xy = np.stack([rng.uniform(-30, width - 10, n), rng.uniform(-30, height - 10, n)], 1)
    wh = np.concatenate([rng.uniform(0.3, 4, (n // 4, 2)), rng.uniform(4, 400, (n - n // 4, 2))])
    far = np.maximum(xy + wh, 0.5)  # boxes reach into the image (detectron2 refuses any other)
    return masks, np.concatenate([xy, far], 1).astype(np.float32)


@pytest.mark.parametrize("seed,height,width", [(0, 480, 640), (1, 333, 211)])
def test_paste_equals_detectron2(seed, height, width):
    d2.import_detectron2()
    from detectron2.layers.mask_ops import paste_masks_in_image
    from detectron2.structures import Boxes

    masks, boxes = _random_case(seed, 120, height, width)
    ours = paste_masks_detectron2(masks, boxes, height, width)
    theirs = paste_masks_in_image(torch.from_numpy(masks), Boxes(torch.from_numpy(boxes)), (height, width)).numpy()
    assert ours.dtype == bool and ours.shape == (120, height, width)
    assert ours.sum() > 10000  # the comparison covers real masks, not empty ones
    # float64 separable sums vs grid_sample's float32: a value exactly at the threshold may round
    # the other way (1 pixel in ~10^7 here), nothing more
    assert (ours != theirs).sum() <= ours.size * 1e-6


def test_mask_fades_half_a_cell_outside_its_box():
    """grid_sample's zero padding: a full mask covers its box and nothing beyond it at 0.5."""
    ones = np.ones((1, 28, 28), np.float32)
    pasted = paste_masks_detectron2(ones, np.array([[10, 20, 38, 76]], np.float32), 100, 100)[0]
    ys, xs = np.nonzero(pasted)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (10, 37, 20, 75)


def test_rle_round_trip():
    from pycocotools import mask as mask_utils

    masks, boxes = _random_case(2, 5, 90, 70)
    binary = paste_masks_detectron2(masks, boxes, 90, 70)
    rles = masks_to_rle(binary)
    assert all(isinstance(r["counts"], str) and r["size"] == [90, 70] for r in rles)
    decoded = np.stack([mask_utils.decode({"size": r["size"], "counts": r["counts"].encode()}) for r in rles])
    assert (decoded.astype(bool) == binary).all()


def test_mismatched_shapes_are_refused():
    with pytest.raises(ToolError, match=r"masks of shape \(3, 28, 28\) do not go with boxes of shape \(2, 4\)"):
        paste_masks_detectron2(np.zeros((3, 28, 28)), np.zeros((2, 4)), 10, 10)
