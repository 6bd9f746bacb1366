"""Session fixtures: one random-weight checkpoint and the exports the tests share.

FCOS at 800x1333 takes seconds per image on 2 cores, so the default tests run the same code on a
reduced 256x416 canvas (``small_canvas``); the full-size export is a ``slow`` test.
"""

from __future__ import annotations

import pytest

from tests import toolhelpers
from tools.fcos import tool

SMALL_HW = (256, 416)


def canvas(height: int, width: int):
    """The FCOS tool at another input size (see tests.toolhelpers.canvas)."""
    return toolhelpers.canvas(tool, height, width)


@pytest.fixture(scope="session")
def canvas_cm():
    """The :func:`canvas` context manager and the small size, for tests that switch size themselves."""
    return canvas, SMALL_HW


@pytest.fixture
def small_canvas():
    with canvas(*SMALL_HW) as spec:
        yield spec


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("fcos-ckpt") / "fcos_r50_caffe_fpn_1x_4gpu-random.pth"
    return tool.random_checkpoint(path, seed=0)


@pytest.fixture(scope="session")
def export_small(checkpoint, tmp_path_factory):
    """``export_small(target, batch, dynamic_batch=False)`` -> (onnx path, parity dict), cached."""
    cache: dict = {}
    root = tmp_path_factory.mktemp("fcos-onnx")

    def get(target: str, batch: int, dynamic_batch: bool = False):
        key = (target, batch, dynamic_batch)
        if key not in cache:
            path = root / f"fcos_{target}_bs{batch}{'_dyn' if dynamic_batch else ''}.onnx"
            with canvas(*SMALL_HW):
                cache[key] = (path, tool.export(checkpoint, path, batch=batch, target=target,
                                                dynamic_batch=dynamic_batch))
        return cache[key]

    return get
