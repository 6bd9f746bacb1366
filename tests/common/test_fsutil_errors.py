"""The one-line OS error messages of common.fsutil, for the cases the CLI tests cannot stage."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from common import fsutil
from common.errors import ToolError


def test_a_temporary_name_is_reported_as_the_final_file(tmp_path):
    final = tmp_path / "report.json"
    with pytest.raises(ToolError) as info:
        with fsutil.atomic_path(final) as tmp:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp))
    assert str(info.value) == (f"cannot access {final}: Permission denied: you lack permission there: "
                               "fix its permissions or choose another OUT")
    assert list(tmp_path.iterdir()) == []


def test_another_files_error_inside_a_write_keeps_its_own_name(tmp_path):
    other = tmp_path / "weights.pth"
    with pytest.raises(ToolError, match=f"cannot access {other}: No such file or directory"):
        with fsutil.atomic_path(tmp_path / "model.onnx"):
            other.read_bytes()


def test_numpy_short_write_on_a_full_disk_is_named_as_such(tmp_path):
    """numpy's tofile keeps no errno; /dev/full makes it fail the way a full filesystem does."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full (Linux)")
    with pytest.raises(OSError) as info:
        np.zeros(1 << 16, np.float32).tofile("/dev/full")
    line = fsutil.os_error_message(info.value, tmp_path / "out")
    assert line.startswith(f"cannot write {tmp_path / 'out'}: No space left on device")
    assert line.endswith("free space on that filesystem (or choose another OUT) and rerun")


def test_an_unlisted_error_still_names_the_path():
    err = OSError(errno.EIO, os.strerror(errno.EIO))
    assert fsutil.os_error_message(err, Path("/data/x.bin")) == (
        "cannot access /data/x.bin: Input/output error: check the path and rerun")


def test_process_umask_reads_without_changing_it():
    fsutil.process_umask.cache_clear()
    old = os.umask(0o027)
    try:
        assert fsutil.process_umask() == 0o027
        assert os.umask(0o027) == 0o027  # still what it was
    finally:
        os.umask(old)
        fsutil.process_umask.cache_clear()
