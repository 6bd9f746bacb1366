"""Session fixtures: one random-weight checkpoint and small-canvas exports shared by the tests.

PSPNet R50-D8 at 500x500 takes ~25 s to export and check on 2 cores, so the default tests run the
same code on a 129x128 canvas (its 17x16 feature map still has pyramid bins, 3 and 6, that do
not divide it, and an odd height gives uneven padding); the full-size export is a slow test.
"""

from __future__ import annotations

import pytest

from tests import toolhelpers
from tools.pspnet import tool

SMALL_HW = (129, 128)


@pytest.fixture
def small_canvas():
    with toolhelpers.canvas(tool, *SMALL_HW) as spec:
        yield spec


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("pspnet-ckpt") / "pspnet_r50-d8-random.pth"
    return tool.random_checkpoint(path, seed=0)


@pytest.fixture(scope="session")
def export_small(checkpoint, tmp_path_factory):
    """``export_small(batch)`` -> (onnx path, parity dict) at the small canvas, cached."""
    cache: dict = {}
    root = tmp_path_factory.mktemp("pspnet-onnx")

    def get(batch: int, target: str = "ascend"):
        if (batch, target) not in cache:
            path = root / f"pspnet_{target}_bs{batch}.onnx"
            with toolhelpers.canvas(tool, *SMALL_HW):
                cache[batch, target] = (path, tool.export(checkpoint, path, batch=batch, target=target))
        return cache[batch, target]

    return get
