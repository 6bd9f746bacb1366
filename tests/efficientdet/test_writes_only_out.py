"""No command writes outside OUT: every step a user runs, traced over the whole filesystem.

The repo checkout, HOME and /tmp are where stray files would go (a log beside the model, a
temporary file left in /tmp, a cache under HOME); the trace sees writes anywhere. Allowed besides
OUT: the environments' own cache (venvs, verified weights), Python's bytecode caches and /dev.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from common import envs
from common.demococo import make_mini_coco
from tests import fswatch
from tests.makehelpers import fake_cann

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not fswatch.available(), reason="strace is not installed")


def allowed(path: Path, out: Path) -> bool:
    if path == out or out in path.parents:
        return True
    if "__pycache__" in path.parts or path.parts[:2] == ("/", "dev"):
        return True  # the interpreter's bytecode caches; /dev/null, /dev/shm
    cache = envs.cache_root().resolve()
    return path == cache or cache in path.parents


def left_outside(changed: set[Path], out: Path) -> list[str]:
    """Changed paths outside OUT that are still there (temporary files removed again are fine)."""
    return sorted(str(p) for p in changed if not allowed(p, out) and os.path.lexists(p))


def test_every_step_writes_only_under_out(tmp_path):
    scratch = tmp_path
    out, cwd = scratch / "out", scratch / "cwd"
    cwd.mkdir()
    coco = make_mini_coco(scratch / "coco", n_images=2)
    env = {**os.environ, "PYTHONPATH": str(REPO), "ASCEND_TOOLKIT_HOME": str(fake_cann(scratch / "cann")),
           "PATH": os.path.dirname(sys.executable) + ":/usr/bin:/bin"}
    env.pop("TMPDIR", None)  # the real /tmp, as a user has it
    tool = [sys.executable, "-m", "tools.efficientdet"]
    onnx = out / "onnx" / "efficientdet_ascend_bs1.onnx"
    steps = [
        tool + ["checkpoint", "--out", str(out / "random.pth")],
        tool + ["export", "--out", str(out / "onnx"), "--weights", str(out / "random.pth"), "--no-verify"],
        [sys.executable, "-m", "common.atc", "--model", "efficientdet", "--onnx", str(onnx), "--out", str(out / "om"),
         "--chip", "310P3"],
        tool + ["data", "--data", str(coco), "--out", str(out / "data"), "--workers", "2"],
        tool + ["infer", "--model", str(onnx), "--prep", str(out / "data"), "--out", str(out / "infer")],
        tool + ["eval", "--prep", str(out / "data"), "--results", str(out / "infer" / "efficientdet_onnxruntime_bs1"),
                "--out", str(out / "eval"), "--model", str(onnx)],
        tool + ["perf", "--model", str(onnx), "--out", str(out / "perf"), "--loop", "1"],
    ]
    for argv in steps:
        step = argv[argv.index("-m") + 1:][:2]
        proc, changed = fswatch.run_traced(argv, scratch / "trace", cwd=cwd, env=env, capture_output=True,
                                           text=True, timeout=900)
        assert proc.returncode == 0, (step, proc.stderr[-3000:])
        assert any(out in p.parents for p in changed), f"{step}: the trace saw no write under OUT"
        assert left_outside(changed, out) == [], f"{step} wrote outside OUT"
    assert (out / "eval" / "report.json").is_file()
    assert (out / "om" / "efficientdet_ascend_bs1_Ascend310P3.om").is_file()


def test_the_trace_sees_writes_anywhere(tmp_path):
    """The watcher itself: a stray file in HOME-like and /tmp-like places, by rename and by dirfd."""
    stray = tmp_path / "elsewhere"
    stray.mkdir()
    code = (f"import os, tempfile; open({str(stray / 'a.log')!r}, 'w').write('x');"
            f"fd = os.open({str(stray)!r}, os.O_RDONLY); os.mkdir('b', dir_fd=fd);"
            f"t = tempfile.mkstemp(dir={str(stray)!r})[1]; os.rename(t, {str(stray / 'c')!r});"
            "open('relative.txt', 'w').close(); open('/etc/hostname').read()")
    proc, changed = fswatch.run_traced([sys.executable, "-c", code], tmp_path / "trace", cwd=tmp_path)
    assert proc.returncode == 0
    assert left_outside(changed, tmp_path / "out") == sorted(
        str(p) for p in (stray / "a.log", stray / "b", stray / "c", tmp_path / "relative.txt"))
