"""Random bytes fed to every reader of user files: only our one-line ToolError may come out."""

from __future__ import annotations

import numpy as np
import pytest

from common.dataset import read_image_bgr
from common.errors import ToolError
from common.infofile import read_info
from common.manifest import Manifest
from common.tensors import read_tensor

SEEDS = range(25)


def _random_bytes(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 4096))
    data = rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
    if seed % 5 == 0:
        data = b"\xff\xd8\xff\xe0" + data  # a JPEG magic number on garbage
    if seed % 5 == 1:
        data = b'{"model": "x", "entries": [' + data  # JSON-looking garbage
    return data


@pytest.mark.parametrize("seed", SEEDS)
def test_readers_only_raise_tool_errors(tmp_path, seed):
    blob = tmp_path / "blob"
    blob.write_bytes(_random_bytes(seed))
    with pytest.raises(ToolError):
        read_image_bgr(blob)
    with pytest.raises(ToolError):
        read_tensor(blob, "float32", (3, 17, 19))  # never this size by construction: 3876 bytes
    (tmp_path / "manifest.json").write_bytes(blob.read_bytes())
    with pytest.raises(ToolError):
        Manifest.load(tmp_path)
    try:
        read_info(blob)
    except ToolError:
        pass  # garbage may by chance parse as an empty info file; anything else must be ours
