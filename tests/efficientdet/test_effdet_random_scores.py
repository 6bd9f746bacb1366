"""The random checkpoint behaves enough like a detector on photos: spread scores, few ties, detections.

The old checkpoint gave every photo the same top 100 at 0.89-0.96, hundreds of them exactly
tied, which made the comparison with effdet depend on the order of equal scores.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from common.dataset import read_image_bgr
from tools.efficientdet import tool


def natural_looking(h, w, seed):
    """A photo-like image: 1/f ("pink") noise, whose spectrum is that of natural scenes, plus soft-edged blobs."""
    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    falloff = np.hypot(fx, fy)
    falloff[0, 0] = 1.0
    img = np.stack([np.fft.irfft2((rng.standard_normal(falloff.shape) + 1j * rng.standard_normal(falloff.shape))
                                  / falloff, s=(h, w)) for _ in range(3)], axis=-1)
    img = (img - img.mean()) / img.std() * 40 + rng.uniform(80, 170, 3)
    for _ in range(int(rng.integers(3, 8))):
        layer = img.copy()
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(w // 16, w // 4)), int(rng.integers(h // 16, h // 4)))
        cv2.ellipse(layer, centre, axes, float(rng.uniform(0, 180)), 0, 360, tuple(rng.uniform(0, 255, 3)), -1)
        img = 0.3 * img + 0.7 * layer
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photo_detections(checkpoint, tmp_path_factory):
    """Detections of the random checkpoint on three natural-looking JPEGs of COCO-like sizes."""
    model = tool.load_model(checkpoint)
    folder = tmp_path_factory.mktemp("photos")
    dets = []
    for seed, (h, w) in enumerate([(480, 640), (640, 427), (375, 500)]):
        path = folder / f"{seed}.jpg"
        cv2.imwrite(str(path), natural_looking(h, w, seed), [cv2.IMWRITE_JPEG_QUALITY, 90])
        image = read_image_bgr(path)
        tensor, scale, _ = tool.preprocess(image)
        with torch.no_grad():
            cls, box = model(torch.from_numpy(tensor)[None])
        outputs = [t[0].numpy() for t in (*cls, *box)]
        dets.append(tool.detect(outputs, img_scale=1.0 / scale, img_size=(w, h), score_threshold=0.001))
    return dets


def test_scores_spread_out_without_ties_or_saturation(photo_detections):
    for dets in photo_detections:
        scores = dets[:, 4]
        _, tie_sizes = np.unique(scores, return_counts=True)
        assert len(dets) == 100  # a full top 100 above COCO's 0.001 threshold
        assert tie_sizes.max() <= 3 and len(tie_sizes) >= 95, f"top-100 scores tied: {sorted(tie_sizes)[-5:]}"
        assert scores.max() - scores.min() >= 0.1, f"top-100 scores within {scores.min()}..{scores.max()}"
        assert scores.max() < 0.99  # not saturated: float32 sigmoid ties every logit above ~17
        assert (scores >= 0.05).sum() >= 20  # a non-trivial number of confident detections


def test_detections_depend_on_the_image(photo_detections):
    a, b = (set(map(tuple, np.round(d[:, :5], 2).tolist())) for d in photo_detections[:2])
    assert len(a & b) < 50
