from __future__ import annotations

import json

import numpy as np
import pytest

from common.errors import ToolError
from common.manifest import Manifest, ManifestEntry
from common.tensors import read_tensor, write_tensor


@pytest.mark.parametrize("dtype", ["float32", "float16", "uint8"])
def test_tensor_roundtrip_is_raw_c_order(tmp_path, dtype):
    arr = (np.arange(2 * 3 * 4) % 200).reshape(2, 3, 4).astype(dtype)
    path = tmp_path / "x.bin"
    write_tensor(path, arr)
    assert path.stat().st_size == arr.nbytes  # no header: what ais_bench reads
    assert np.array_equal(np.fromfile(path, dtype=dtype), arr.ravel())
    assert np.array_equal(read_tensor(path, dtype, (2, 3, 4)), arr)
    assert not list(tmp_path.glob("*.part"))


def test_wrong_size_names_expected_and_actual_bytes(tmp_path):
    path = tmp_path / "x.bin"
    write_tensor(path, np.zeros((3, 4), np.float32))
    with pytest.raises(ToolError, match=r"has 48 bytes, expected 24"):
        read_tensor(path, "float16", (3, 4))


def test_manifest_roundtrip(tmp_path):
    m = Manifest(model="fcos", input_name="input", dtype="float32", shape=(3, 800, 1333),
                 entries=[ManifestEntry("a", "/d/a.jpg", "a.bin", (640, 480), 1.66, (0, 1, 2, 3), image_id=7)],
                 skipped=[{"source": "/d/b.jpg", "reason": "corrupt"}])
    m.save(tmp_path)
    back = Manifest.load(tmp_path)
    assert back == m and back.partial
    assert back.by_stem()["a"].pad == (0, 1, 2, 3)
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["entries"][0]["orig_size"] == [640, 480]


def test_manifest_missing_or_malformed(tmp_path):
    with pytest.raises(ToolError, match="run the model's data step"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text('{"model": "x"}')
    with pytest.raises(ToolError, match="malformed"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ToolError, match="not valid JSON"):
        Manifest.load(tmp_path)
