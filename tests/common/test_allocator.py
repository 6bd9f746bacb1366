"""common.allocator: freed image buffers are reused instead of coming back as fresh, faulting pages."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from common import allocator

REPO = Path(__file__).resolve().parents[2]

#: a fresh PIL image resized per iteration, as the data step does per image; prints page faults per image
_RESIZES = """
import resource, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from PIL import Image
if sys.argv[2] == "reuse":
    from common.allocator import reuse_freed_buffers
    assert reuse_freed_buffers() and reuse_freed_buffers()  # idempotent
image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)
for _ in range(5):
    Image.fromarray(image).resize((512, 384), Image.BILINEAR)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    Image.fromarray(image).resize((512, 384), Image.BILINEAR)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 40)
"""


def _faults_per_image(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", _RESIZES, str(REPO), mode], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return float(done.stdout)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_reused_buffers_take_no_page_faults_per_image():
    default, reused = _faults_per_image("default"), _faults_per_image("reuse")
    assert reused < 5, f"{reused} page faults per image with reuse_freed_buffers (without: {default})"
    assert default > 10 * max(reused, 1), f"the check sees no difference: {default} vs {reused}"


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", False)
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert allocator.reuse_freed_buffers() is False
