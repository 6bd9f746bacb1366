"""A small synthetic COCO-format dataset, for pipeline demonstrations and tests.

Real COCO cannot be downloaded on our build machines, so tests and ``make demo`` generate
images with coloured shapes and exact annotations (boxes + polygons) in the val2017 layout.
Flat shapes compress to a few KB and decode 2x faster per pixel than a photo; the benchmarks ask for
``photo_like`` images, textured so that they compress and decode like COCO's photos.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from common.fsutil import write_text_atomic

#: the 80 COCO category ids (1..90 with gaps); contiguous class index i <-> COCO_IDS[i]
COCO_IDS = (list(range(1, 12)) + list(range(13, 26)) + [27, 28] + list(range(31, 45))
            + list(range(46, 66)) + [67, 70] + list(range(72, 83)) + list(range(84, 91)))


def make_mini_coco(root: str | os.PathLike, *, n_images: int = 4, seed: int = 0,
                   size_range: tuple[int, int] = (160, 320), max_objects: int = 3,
                   categories: tuple[int, ...] = (1, 3, 18, 44, 62), photo_like: bool = False) -> Path:
    """Write ``root/val2017/*.jpg`` and ``root/annotations/instances_val2017.json``.

    ``photo_like``: shapes on a :func:`photo_texture` background, saved at JPEG quality 90 (about 0.5
    bytes per pixel as COCO's val2017: ~160 KB per ~640x480 photo), for speed measurements."""
    import cv2

    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "val2017").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(n_images):
        image_id = 1000 + i
        h, w = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
        img = np.full((h, w, 3), rng.integers(0, 256, size=3), dtype=np.uint8)
        texture = photo_texture(h, w, rng) if photo_like else None
        for _ in range(int(rng.integers(1, max_objects + 1))):
            bw, bh = int(rng.integers(w // 6, w // 2)), int(rng.integers(h // 6, h // 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            img[y:y + bh, x:x + bw] = rng.integers(0, 256, size=3)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": int(rng.choice(categories)),
                "bbox": [x, y, bw, bh], "area": float(bw * bh), "iscrowd": 0,
                "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]],
            })
        if texture is not None:
            img = on_texture(img, texture)
        name = f"{image_id:012d}.jpg"
        quality = PHOTO_JPEG_QUALITY if photo_like else 95
        cv2.imwrite(str(root / "val2017" / name), img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
    doc = {
        "info": {"description": "synthetic mini COCO (common.demococo) - not real data"},
        "images": images, "annotations": annotations,
        "categories": [{"id": c, "name": f"class_{c}", "supercategory": "demo"} for c in COCO_IDS],
    }
    write_text_atomic(root / "annotations" / "instances_val2017.json", json.dumps(doc))
    return root


#: JPEG quality of ``photo_like`` images: with :func:`photo_texture`, about COCO's 0.5 bytes per pixel
PHOTO_JPEG_QUALITY = 90


def on_texture(image: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """``image`` (uint8) at half contrast over ``texture`` (:func:`photo_texture`), as uint8."""
    return np.clip(image.astype(np.int16) // 2 + texture, 0, 255).astype(np.uint8)


def photo_texture(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """int16 (height, width, 3) detail around 64 for a photo-like JPEG: brightness grain plus noise at four
    scales (coarse to fine, each weaker), colour varying more smoothly than brightness as in photos.
    Calibrated by JPEG size (about 0.5 bytes per pixel at quality 90, as COCO's val2017) and decode cost
    per megapixel (bench/bench_uint8.py prints it beside that of a real photo)."""
    import cv2

    luma = rng.normal(0, 14, (height, width, 1)).astype(np.float32)
    colour = np.zeros((height, width, 3), np.float32)
    for cells, amplitude in ((4, 30), (16, 20), (64, 12), (256, 8)):
        coarse = rng.normal(0, 1, (max(2, height * cells // 640), max(2, width * cells // 640), 3))
        smooth = amplitude * cv2.resize(coarse.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
        luma += smooth[:, :, :1]
        colour += 0.6 * smooth
    return (luma + colour + 64).astype(np.int16)
