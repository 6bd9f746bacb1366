"""Session fixtures: one random-weight checkpoint and one batch-1 export shared by all tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from effdet import anchors as effdet_anchors
from effdet import get_efficientdet_config
from effdet.anchors import Anchors
from effdet.bench import _batch_detection, _post_process
from effdet.data.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, transforms_coco_eval
from PIL import Image
from torchvision.ops.boxes import batched_nms

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


def _upstream_candidates(outputs):
    """effdet's _post_process on one image's 10 raw maps: its top-5000 (logits, box codes, anchors, classes)."""
    cfg = get_efficientdet_config(tool.ARCH)
    cls = [torch.from_numpy(o[None]) for o in outputs[:5]]
    box = [torch.from_numpy(o[None]) for o in outputs[5:]]
    c, b, idx, classes = _post_process(cls, box, num_levels=cfg.num_levels, num_classes=cfg.num_classes,
                                       max_detection_points=cfg.max_detection_points)
    return c[0], b[0], idx[0], classes[0]


def _presorted_nms(boxes, scores, idxs, iou_threshold):
    """torchvision's batched_nms on candidates already in the wanted order: ranks replace the scores.

    torchvision sorts by score with an unstable sort; with strictly decreasing ranks its order is
    the given one. Every other step (IoU, per-class offsets, suppression) is torchvision's own.
    """
    assert bool((scores[:-1] >= scores[1:]).all()), "candidates must come sorted by score"
    return batched_nms(boxes, torch.arange(len(scores), 0, -1, dtype=scores.dtype), idxs, iou_threshold)


def _keep_all(boxes, scores, idxs, iou_threshold):
    """An NMS that keeps every candidate, in the given order."""
    return torch.arange(len(scores))


def _generate(candidates, img_scale, img_size, order=None, nms=_presorted_nms, max_det=None):
    """effdet's generate_detections (decode, clip, sigmoid, NMS, top 100, scale) on candidates in ``order``."""
    cls, box, idx, classes = candidates
    if order is not None:
        cls, box, idx, classes = (t[torch.from_numpy(order)] for t in candidates)
    cfg = get_efficientdet_config(tool.ARCH)
    saved = effdet_anchors.batched_nms
    effdet_anchors.batched_nms = nms
    try:
        det = effdet_anchors.generate_detections(
            cls, box, Anchors.from_config(cfg).boxes, idx, classes,
            torch.tensor(img_scale, dtype=torch.float32), torch.tensor(list(img_size), dtype=torch.int32),
            max_det_per_image=max_det or cfg.max_det_per_image, soft_nms=False)
    finally:
        effdet_anchors.batched_nms = saved
    return det.numpy()


def _candidate_scores_and_flat(candidates):
    cls, _, idx, classes = candidates
    return cls.sigmoid().squeeze(1).float().numpy(), (idx * tool.NUM_CLASSES + classes).numpy()


def _upstream_detections(outputs, img_scale, img_size, tie_rank=None):
    """effdet's DetBenchPredict after the network: (100, 6) rows x1 y1 x2 y2 score class+1.

    ``tie_rank=None``: effdet as released (scripted _batch_detection), whose unstable torch.sort
    leaves the order of equal float32 scores undefined. ``tie_rank`` (one number per upstream
    candidate, or a function of (scores, flat indices) giving them): the same effdet code with a
    defined order among equal scores, lower rank first.
    """
    candidates = _upstream_candidates(outputs)
    if tie_rank is None:
        cfg = get_efficientdet_config(tool.ARCH)
        cls, box, idx, classes = (t[None] for t in candidates)
        det = _batch_detection(1, cls, box, Anchors.from_config(cfg).boxes, idx, classes,
                               torch.tensor([img_scale], dtype=torch.float32),
                               torch.tensor([list(img_size)], dtype=torch.int32),
                               max_det_per_image=cfg.max_det_per_image, soft_nms=False)
        return det[0].numpy()
    scores, flat = _candidate_scores_and_flat(candidates)
    rank = tie_rank(scores, flat) if callable(tie_rank) else np.asarray(tie_rank)
    return _generate(candidates, img_scale, img_size, order=np.lexsort((rank, -scores)))


@pytest.fixture(scope="session")
def upstream_detections():
    """effdet's own detection generation on raw outputs (list of 10 CHW maps)."""
    return _upstream_detections


def _close_rows(rows, row, box_atol, score_rtol):
    """Which of ``rows`` equal ``row`` (same class, box within box_atol, score within score_rtol)."""
    return ((rows[:, 5] == row[5]) & (np.abs(rows[:, :4] - row[:4]).max(axis=1) <= box_atol)
            & (np.abs(rows[:, 4] - row[4]) <= score_rtol * abs(row[4]) + 1e-9))


def _assert_same_detections(got, ref, box_atol=1e-3, score_rtol=1e-6):
    """Rows (x1, y1, x2, y2, score, class) equal up to float noise, as a one-to-one matching.

    Not in order (equal scores may come in either order) and not by IoU (clipping leaves
    zero-area boxes, which have none).
    """
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    free = np.ones(len(got), dtype=bool)
    for row in ref:
        close = free & _close_rows(got, row, box_atol, score_rtol)
        assert close.any(), f"no match for upstream row {row.tolist()}"
        free[np.flatnonzero(close)[0]] = False


@pytest.fixture(scope="session")
def assert_same_detections():
    return _assert_same_detections


def _upstream_candidate_rows(outputs, img_scale, img_size):
    """Each of effdet's top-5000 candidates as the row it becomes when kept (effdet's code, no NMS)."""
    candidates = _upstream_candidates(outputs)
    return _generate(candidates, img_scale, img_size, nms=_keep_all, max_det=len(candidates[0]))


@pytest.fixture(scope="session")
def upstream_candidate_rows():
    return _upstream_candidate_rows


def _assert_upstream_could_give(got, outputs, img_scale, img_size, keep=None, box_atol=1e-3, score_rtol=1e-6):
    """``got`` is what effdet outputs for these raw maps under SOME order of its equal-score candidates.

    effdet is exact except for one thing: the order of candidates with equal float32 scores
    (an unstable torch.sort), which decides which of two tied, overlapping boxes survives NMS.
    So the tie order is taken from ``got`` itself: within each group of equal scores, the
    candidates that ``got`` holds go first (then lower flat index). If any tie order gives
    ``got``, this one does: kept boxes never suppress each other, so moving them ahead of their
    tied, suppressed companions changes nothing else. effdet's own code then produces every row,
    and ``got`` must equal it row for row — exact wherever effdet's result is defined.
    ``keep``: the filter applied to effdet's rows before comparing (score threshold, COCO ids).
    """
    got = np.asarray(got, np.float64).reshape(-1, 6)
    rows = _upstream_candidate_rows(outputs, img_scale, img_size)
    held = np.zeros(len(rows), dtype=bool)
    for row in got:
        held |= _close_rows(rows, row, box_atol, score_rtol)

    def held_first(scores, flat):
        return np.lexsort((flat, ~held)).argsort()

    ref = _upstream_detections(outputs, img_scale, img_size, tie_rank=held_first)
    ref = ref[ref[:, 4] > 0]  # effdet pads to 100 rows with zeros
    if keep is not None:
        ref = keep(ref)
    _assert_same_detections(got, ref, box_atol, score_rtol)


@pytest.fixture(scope="session")
def assert_upstream_could_give():
    return _assert_upstream_could_give
