from __future__ import annotations

import os

import numpy as np
import pytest

from common import fsutil, tensors
from common.errors import ToolError


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(RuntimeError):
        with fsutil.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_names_the_path_and_leaves_nothing(tmp_path):
    """Writes really fail with ENOSPC: the temporary file's name is a link to /dev/full."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full (Linux)")
    target = tmp_path / "sub" / "img.bin"
    target.parent.mkdir()
    os.symlink("/dev/full", fsutil.temp_path(target))
    with pytest.raises(ToolError, match=rf"cannot write {target}: No space left on device: free space"):
        tensors.write_tensor(target, np.zeros(1 << 16, np.float32))
    assert list((tmp_path / "sub").iterdir()) == []


def test_atomic_writes_get_the_umask_and_leave_no_temporary(tmp_path):
    old = os.umask(0o027)
    fsutil.process_umask.cache_clear()
    try:
        tensors.write_tensor(tmp_path / "x.bin", np.zeros(4, np.uint8))
        fsutil.write_json_atomic(tmp_path / "x.json", {})
    finally:
        os.umask(old)
        fsutil.process_umask.cache_clear()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin", "x.json"]
    assert {oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {oct(0o640)}


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "out"
    fsutil.ensure_fresh_output(out, force=False)  # absent: fine
    out.mkdir()
    fsutil.ensure_fresh_output(out, force=False)  # empty: fine
    (out / "report.json").write_text("{}")
    with pytest.raises(ToolError, match="--force"):
        fsutil.ensure_fresh_output(out, force=False)
    assert fsutil.ensure_fresh_output(out, force=True) == out
