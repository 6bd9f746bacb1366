"""A small synthetic VOC2012-layout segmentation set, for pipeline demonstrations and tests.

Like :mod:`common.demococo`: coloured rectangles of random classes on a background, written as
JPEGs with exact palette-PNG label maps, including VOC's 255 "ignore" band around each object.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from common.fsutil import write_text_atomic

IGNORE = 255


def voc_palette() -> list[int]:
    """VOC's colour map (class i's RGB from the bits of i, spread over the high bits), 256 x RGB."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def make_mini_voc(root: str | os.PathLike, *, n_images: int = 4, seed: int = 0,
                  size_range: tuple[int, int] = (160, 320), max_objects: int = 3, num_classes: int = 21,
                  band: int = 2, sizes: list[tuple[int, int]] | None = None, photo_like: bool = False) -> Path:
    """Write ``root/JPEGImages``, ``root/SegmentationClass`` and ``root/ImageSets/Segmentation/val.txt``.

    ``sizes`` ((height, width) per image, cycled) replaces random sizes from ``size_range``.
    ``photo_like``: JPEGs that compress and decode like photos, for speed measurements
    (:func:`common.demococo.photo_texture`, quality 90).
    """
    import cv2
    from PIL import Image

    from common.demococo import PHOTO_JPEG_QUALITY, on_texture, photo_texture

    rng = np.random.default_rng(seed)
    root = Path(root)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n_images):
        name = f"2007_{i:06d}"
        h, w = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
        if sizes:
            h, w = sizes[i % len(sizes)]
        img = np.full((h, w, 3), rng.integers(0, 256, size=3), dtype=np.uint8)
        label = np.zeros((h, w), dtype=np.uint8)
        for _ in range(int(rng.integers(1, max_objects + 1))):
            bw, bh = int(rng.integers(w // 6, w // 2)), int(rng.integers(h // 6, h // 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            img[y:y + bh, x:x + bw] = rng.integers(0, 256, size=3)
            label[max(y - band, 0):y + bh + band, max(x - band, 0):x + bw + band] = IGNORE
            label[y + band:y + bh - band, x + band:x + bw - band] = int(rng.integers(1, num_classes))
        if photo_like:
            img = on_texture(img, photo_texture(h, w, rng))
        quality = PHOTO_JPEG_QUALITY if photo_like else 95
        cv2.imwrite(str(root / "JPEGImages" / f"{name}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        png = Image.fromarray(label, mode="P")
        png.putpalette(voc_palette())
        png.save(root / "SegmentationClass" / f"{name}.png")
        names.append(name)
    write_text_atomic(root / "ImageSets" / "Segmentation" / "val.txt", "\n".join(names) + "\n")
    return root
