"""Mask pasting (28x28 mask -> image mask) for 100 detections: our vectorised NumPy paste
(common.masks.paste_masks_detectron2) vs a recipe-style per-detection loop, same process.

The recipe's postprocess imports torchvision's ``paste_masks_in_image``, which loops over the
detections in Python, resizing each mask with ``F.interpolate`` and copying it into the image
(the "recipe-style loop" here); detectron2's own ``paste_masks_in_image`` (grid_sample, one mask per
chunk on CPU) is printed too. Ratios are ours / baseline (lower is better).

    $(python3 -m common.envs ensure maskrcnn) bench/bench_mask_paste.py [--repeat 3] [--size 480x640]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.masks import paste_masks_detectron2  # noqa: E402


def _inputs(n: int, height: int, width: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    masks = rng.random((n, 28, 28)).astype(np.float32)
    xy = np.stack([rng.uniform(0, width - 20, n), rng.uniform(0, height - 20, n)], 1)
    wh = rng.uniform(16, min(height, width) / 2, (n, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, [width, height])], 1).astype(np.float32)
    return masks, boxes


def recipe_loop(masks, boxes, height, width):
    """Per detection: resize its mask to the box with F.interpolate (bilinear), threshold, copy in."""
    import torch
    import torch.nn.functional as F

    out = torch.zeros((len(masks), height, width), dtype=torch.bool)
    for k, (mask, box) in enumerate(zip(torch.from_numpy(masks), boxes)):
        x0, y0 = int(box[0]), int(box[1])
        w, h = max(int(box[2] - box[0] + 0.5), 1), max(int(box[3] - box[1] + 0.5), 1)
        resized = F.interpolate(mask[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        region = resized[: height - y0, : width - x0] >= 0.5
        out[k, y0:y0 + region.shape[0], x0:x0 + region.shape[1]] = region
    return out


def detectron2_paste(masks, boxes, height, width):
    import torch

    from tools.maskrcnn import d2

    d2.import_detectron2()
    from detectron2.layers.mask_ops import paste_masks_in_image
    from detectron2.structures import Boxes

    return paste_masks_in_image(torch.from_numpy(masks), Boxes(torch.from_numpy(boxes)), (height, width))


def _best(fn, repeat: int, *args) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", default="480x640", help="image HxW")
    parser.add_argument("--detections", type=int, default=100)
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    data = (*_inputs(args.detections, height, width), height, width)
    ours = _best(paste_masks_detectron2, args.repeat, *data)
    loop = _best(recipe_loop, args.repeat, *data)
    d2 = _best(detectron2_paste, args.repeat, *data)
    print(f"{args.detections} masks into {width}x{height}, best of {args.repeat}:")
    print(f"  ours (NumPy, separable)        {ours * 1000:8.1f} ms")
    print(f"  recipe-style loop (interpolate) {loop * 1000:8.1f} ms   ratio ours/loop {ours / loop:.2f}")
    print(f"  detectron2 paste_masks_in_image {d2 * 1000:8.1f} ms   ratio ours/detectron2 {ours / d2:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
