"""Made-up raw maps (the 10 per-image outputs) with objects, for postprocess tests."""

from __future__ import annotations

import numpy as np

from tools.efficientdet import tool

SPECS = tool.SPEC.outputs_for("ascend")


def object_maps(seed, objects, *, background, box_std, levels, classes, object_logits):
    """Maps where each object fires on every anchor of a 3x3 cell block of one class, so NMS works.

    Background logits are N(background, 1), box codes N(0, box_std); objects sit on one of the
    first ``levels`` levels with a class below ``classes``; ``object_logits(i, rng)`` gives object
    i's logits on one anchor's 3x3 cells (a scalar for one shared value).
    """
    rng = np.random.default_rng(seed)
    cls = [(rng.standard_normal(s.shape) + background).astype(np.float32) for s in SPECS[:5]]
    box = [(rng.standard_normal(s.shape) * box_std).astype(np.float32) for s in SPECS[5:]]
    for i in range(objects):
        level = int(rng.integers(0, levels))
        size = SPECS[level].shape[1]
        y, x = (int(v) for v in rng.integers(1, size - 1, 2))
        c = int(rng.integers(0, classes))
        for a in range(tool.ANCHORS_PER_CELL):
            cls[level][a * tool.NUM_CLASSES + c, y - 1:y + 2, x - 1:x + 2] = object_logits(i, rng)
    return cls + box
