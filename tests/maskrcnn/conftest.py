"""Session fixtures: one random-weight checkpoint and the two exports the tests share.

Mask R-CNN R101 at 1344x1344 takes minutes per forward pass on 2 cores, so the default tests
run the same code on a small square canvas (``small_canvas``: shortest edge = longest edge =
canvas side, so a square image fills the canvas exactly and detectron2's own inference sees the
same picture); the full-size export is a ``slow`` test.
"""

from __future__ import annotations

import contextlib

import pytest

from tests import toolhelpers
from tools.maskrcnn import tool

SMALL = 256


@contextlib.contextmanager
def canvas(side: int):
    """The tool at a side x side canvas whose resize rule fills it (short edge = max size = side)."""
    saved = tool.SHORT_EDGE, tool.MAX_SIZE
    tool.SHORT_EDGE = tool.MAX_SIZE = side
    try:
        with toolhelpers.canvas(tool, side, side) as spec:
            yield spec
    finally:
        tool.SHORT_EDGE, tool.MAX_SIZE = saved


@pytest.fixture
def small_canvas():
    with canvas(SMALL) as spec:
        yield spec


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("maskrcnn-ckpt") / "model_final_random.pkl"
    return tool.random_checkpoint(path, seed=0)


def _export(tmp_path_factory, checkpoint, target: str):
    out = tmp_path_factory.mktemp(f"maskrcnn-{target}") / f"maskrcnn_{target}_bs1.onnx"
    with canvas(SMALL):
        report = tool.export(checkpoint, out, batch=1, target=target)
    return out, report


@pytest.fixture(scope="session")
def onnx_export(tmp_path_factory, checkpoint):
    return _export(tmp_path_factory, checkpoint, "onnx")


@pytest.fixture(scope="session")
def ascend_export(tmp_path_factory, checkpoint):
    return _export(tmp_path_factory, checkpoint, "ascend")
