"""Exactly tied scores: our defined order, and a comparison with effdet that holds for ANY tie order.

effdet sorts NMS candidates by float32 score with an unstable torch.sort, so among equal scores
its order (and so which of two tied, overlapping boxes survives) is not defined; which one a
machine gets varies. Ours is defined: higher logit first, equal logits by lower flat index.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.efficientdet.rawmaps import SPECS, object_maps
from tools.efficientdet import tool

SIZE = (640, 427)
IMG_SCALE = 1.0 / min(512 / SIZE[1], 512 / SIZE[0])
TIED_LOGITS = (1.0, 0.5, -1.0)


def tied_outputs(seed, objects=40):
    """Maps full of exact ties, like the earlier random checkpoint gave on every image.

    Each object fires on all 9 anchors of a 3x3 cell block (81 overlapping boxes); most share one
    of three logit values (with each other and with other objects of their class: tie groups of
    hundreds), every eighth has a logit of its own per box. The background is far below the threshold.
    """
    def object_logits(i, rng):
        return TIED_LOGITS[i % 3] if i % 8 else rng.uniform(-1.5, 1.5, (3, 3))

    return object_maps(seed, objects, background=-14, box_std=0.3, levels=3, classes=3, object_logits=object_logits)


def detected(rows):
    return rows[rows[:, 4] > 0]  # effdet pads to 100 rows with zeros


def as_set(rows):
    return frozenset(map(tuple, np.round(np.asarray(rows, np.float64), 3).tolist()))


def test_ours_is_effdet_with_lower_flat_index_first_and_the_order_matters(upstream_detections,
                                                                         assert_same_detections):
    outputs = tied_outputs(1)
    ours = tool.detect(outputs, img_scale=IMG_SCALE, img_size=SIZE)
    tied = np.isin(ours[:, 4], 1 / (1 + np.exp(-np.float32(TIED_LOGITS))))
    assert len(ours) == 100 and tied.sum() > 50  # the data is what it claims: mostly tied rows
    by_index = upstream_detections(outputs, IMG_SCALE, SIZE, tie_rank=lambda scores, flat: flat)
    assert_same_detections(ours, detected(by_index))
    reverse = upstream_detections(outputs, IMG_SCALE, SIZE, tie_rank=lambda scores, flat: -flat)
    assert as_set(detected(reverse)) != as_set(ours)  # another tie order keeps other boxes


@pytest.mark.parametrize("seed", [1, 2])
def test_comparison_passes_whatever_order_effdet_gives_tied_candidates(upstream_detections,
                                                                       assert_upstream_could_give, seed):
    """Tied candidates permuted on purpose: every effdet result is accepted, so is ours."""
    outputs = tied_outputs(seed)
    rng = np.random.default_rng(seed)
    results = set()
    for _ in range(4):
        permuted = detected(upstream_detections(outputs, IMG_SCALE, SIZE,
                                                tie_rank=rng.permutation(tool.SPEC.raw["postprocess"]
                                                                         ["max_detection_points"])))
        assert_upstream_could_give(permuted, outputs, IMG_SCALE, SIZE)
        results.add(as_set(permuted))
    assert len(results) > 1  # the permutations really changed effdet's output
    assert_upstream_could_give(detected(upstream_detections(outputs, IMG_SCALE, SIZE)), outputs, IMG_SCALE, SIZE)
    assert_upstream_could_give(tool.detect(outputs, img_scale=IMG_SCALE, img_size=SIZE), outputs, IMG_SCALE, SIZE)


def iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def test_comparison_fails_on_a_real_difference(upstream_candidate_rows, assert_upstream_could_give):
    outputs = tied_outputs(1)
    ours = tool.detect(outputs, img_scale=IMG_SCALE, img_size=SIZE).astype(np.float64)
    scores = ours[:, 4]
    untied = [i for i in range(len(ours)) if (scores == scores[i]).sum() == 1]
    assert untied
    i = untied[len(untied) // 2]
    for column, change in ((4, 1e-3 * scores[i]), (0, 2.0), (3, -2.0)):  # a score, a box side: untied rows
        wrong = ours.copy()
        wrong[i, column] += change
        with pytest.raises(AssertionError, match="no match"):
            assert_upstream_could_give(wrong, outputs, IMG_SCALE, SIZE)
    with pytest.raises(AssertionError):  # a row missing
        assert_upstream_could_give(ours[:-1], outputs, IMG_SCALE, SIZE)
    # inside a tie group: a tied candidate that overlaps a kept one of its group (IoU > 0.5, same
    # class) can never be kept beside it, whatever the order
    candidates = upstream_candidate_rows(outputs, IMG_SCALE, SIZE).astype(np.float64)
    suppressed = [c for c in candidates for r in ours
                  if r[5] == c[5] and np.isclose(r[4], c[4], rtol=1e-6) and 0.5 < iou(r, c) < 0.99]
    assert suppressed
    both = np.vstack([ours[:-1], suppressed[0]])
    with pytest.raises(AssertionError, match="no match"):
        assert_upstream_could_give(both, outputs, IMG_SCALE, SIZE)


def test_equal_logits_at_the_top_k_cut_go_to_the_lowest_flat_index():
    """4.4M equal logits: the 5000 candidates and their NMS order follow effdet's flat index.

    Box codes 0 make every box its anchor: flat indices below 5000 are anchors 0..55, the first
    cells of level 3's top row (centre y 4, x 4..52), and anchor 0 comes first with classes 1..90.
    """
    outputs = [np.zeros(s.shape, np.float32) for s in SPECS]
    dets = tool.detect(outputs)
    assert len(dets) == 100
    np.testing.assert_array_equal(dets[:90, 5], np.arange(1, 91))
    np.testing.assert_array_equal(dets[:90, :4], np.repeat(tool.anchor_boxes()[:1, [1, 0, 3, 2]], 90, axis=0))
    centre_x, centre_y = (dets[:, 0] + dets[:, 2]) / 2, (dets[:, 1] + dets[:, 3]) / 2
    assert (centre_y == 4).all() and (centre_x <= 52).all()
