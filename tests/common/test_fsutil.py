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


def test_disk_full_names_the_path_and_leaves_nothing(tmp_path, monkeypatch):
    """Writes really fail with ENOSPC: the temporary file is a link to /dev/full."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full (Linux)")

    def mkstemp_on_full_disk(prefix="", suffix="", dir=None):
        link = os.path.join(dir, prefix + "x" + suffix)
        os.symlink("/dev/full", link)
        return os.open(link, os.O_WRONLY), link

    monkeypatch.setattr(fsutil.tempfile, "mkstemp", mkstemp_on_full_disk)
    target = tmp_path / "sub" / "img.bin"
    with pytest.raises(ToolError, match=rf"cannot write {target}: No space left on device: free space"):
        tensors.write_tensor(target, np.zeros(1 << 16, np.float32))
    assert list((tmp_path / "sub").iterdir()) == []


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "out"
    fsutil.ensure_fresh_output(out, force=False)  # absent: fine
    out.mkdir()
    fsutil.ensure_fresh_output(out, force=False)  # empty: fine
    (out / "report.json").write_text("{}")
    with pytest.raises(ToolError, match="--force"):
        fsutil.ensure_fresh_output(out, force=False)
    assert fsutil.ensure_fresh_output(out, force=True) == out
