"""Session fixtures: one random-weight checkpoint and one batch-1 export shared by all tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from effdet import get_efficientdet_config
from effdet.anchors import Anchors
from effdet.bench import _batch_detection, _post_process
from effdet.data.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, transforms_coco_eval
from PIL import Image

from tools.efficientdet import tool


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("effdet-ckpt") / "tf_efficientdet_d0-random.pth"
    return tool.random_checkpoint(path, seed=0)


@pytest.fixture(scope="session")
def exported_bs1(checkpoint, tmp_path_factory):
    """(onnx path, parity report) of the batch-1 Ascend export (about 20 s on 2 cores)."""
    path = tmp_path_factory.mktemp("effdet-onnx") / "efficientdet_ascend_bs1.onnx"
    report = tool.export(checkpoint, path, batch=1, target="ascend")
    return path, report


def _upstream_tensor(path):
    """What the recipe's preprocess.py writes: effdet's loader path for tf_efficientdet_d0.

    transforms_coco_eval (ResizePad bilinear, fill 'mean', ImageToNumpy) as create_loader builds it,
    then PrefetchLoader's normalisation (x.float() - 255*mean) / (255*std), done here on the CPU
    because PrefetchLoader itself needs CUDA.
    """
    transform = transforms_coco_eval(512, interpolation="bilinear", use_prefetcher=True, fill_color="mean",
                                     mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
    img, anno = transform(Image.open(path).convert("RGB"), {})
    mean = torch.tensor([x * 255 for x in IMAGENET_DEFAULT_MEAN]).view(1, 3, 1, 1)
    std = torch.tensor([x * 255 for x in IMAGENET_DEFAULT_STD]).view(1, 3, 1, 1)
    x = torch.from_numpy(img)[None].float().sub_(mean).div_(std)
    return x[0].numpy(), anno["img_scale"]


@pytest.fixture(scope="session")
def upstream_tensor():
    """effdet's own preprocessing of an image file: (CHW float32 tensor, img_scale)."""
    return _upstream_tensor


def _upstream_detections(outputs, img_scale, img_size):
    """effdet's DetBenchPredict.forward after the network: (100, 6) x1 y1 x2 y2 score class+1."""
    cfg = get_efficientdet_config(tool.ARCH)
    cls = [torch.from_numpy(o[None]) for o in outputs[:5]]
    box = [torch.from_numpy(o[None]) for o in outputs[5:]]
    c, b, idx, classes = _post_process(cls, box, num_levels=cfg.num_levels, num_classes=cfg.num_classes,
                                       max_detection_points=cfg.max_detection_points)
    det = _batch_detection(1, c, b, Anchors.from_config(cfg).boxes, idx, classes,
                           torch.tensor([img_scale], dtype=torch.float32),
                           torch.tensor([list(img_size)], dtype=torch.int32),
                           max_det_per_image=cfg.max_det_per_image, soft_nms=False)
    return det[0].numpy()


@pytest.fixture(scope="session")
def upstream_detections():
    """effdet's own detection generation on raw outputs (list of 10 CHW maps)."""
    return _upstream_detections


def _assert_same_detections(got, ref, box_atol=1e-3, score_rtol=1e-6):
    """Rows (x1, y1, x2, y2, score, class) equal up to float noise, as a one-to-one matching.

    Not in order (equal scores may come in either order) and not by IoU (clipping leaves
    zero-area boxes, which have none).
    """
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    free = np.ones(len(got), dtype=bool)
    for row in ref:
        close = (free & (got[:, 5] == row[5]) & (np.abs(got[:, :4] - row[:4]).max(axis=1) <= box_atol)
                 & (np.abs(got[:, 4] - row[4]) <= score_rtol * abs(row[4]) + 1e-9))
        assert close.any(), f"no match for upstream row {row.tolist()}"
        free[np.flatnonzero(close)[0]] = False


@pytest.fixture(scope="session")
def assert_same_detections():
    return _assert_same_detections
