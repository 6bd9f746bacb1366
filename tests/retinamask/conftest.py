"""Session fixtures: one random-weight checkpoint in the upstream layout and the small exports.

At 1344x1344 with 1000 candidates one forward pass takes minutes on 2 cores (the mask head runs
on every candidate), so the default tests run the same code on a 192x192 canvas with 64
candidates (``small``); the full-size export is a ``slow`` test.
"""

from __future__ import annotations

import pytest

from common.exportrecord import export_checked
from tests import toolhelpers
from tools.retinamask import tool

SMALL_SIZE = 192
SMALL_TOP_K = 64


def reduced(size: int = SMALL_SIZE, top_k: int = SMALL_TOP_K):
    """The tool with a size x size canvas and ``top_k`` candidates per image (its SPEC swapped)."""
    shapes = {o.name: (top_k, *o.shape[1:]) for o in tool.SPEC.outputs_for("ascend")}
    return toolhelpers.canvas(tool, size, size, output_shapes=shapes)


@pytest.fixture
def small():
    with reduced() as spec:
        yield spec


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("retinamask-ckpt") / "npu_8P_model_0020001-random.pth"
    return tool.random_checkpoint(path, seed=0)


@pytest.fixture(scope="session")
def export_small(checkpoint, tmp_path_factory):
    """``export_small(target)`` -> (onnx path, parity dict) of the batch-1 small export, cached; through
    the CLI's export step (common.exportrecord), so the .parity.json with the checkpoint's sha256 is
    written beside the model as for a user."""
    cache: dict = {}
    root = tmp_path_factory.mktemp("retinamask-onnx")

    def get(target: str):
        if target not in cache:
            path = root / f"retinamask_{target}_bs1.onnx"
            with reduced():
                cache[target] = (path, export_checked(tool, checkpoint, path, verified=False, batch=1,
                                                      target=target))
        return cache[target]

    return get
