"""`make clean` removes only an output folder the tools made: never ~, /, the checkout or a user's files.

Every case runs `make clean` through bash as a user types it (so `~` is the shell's), with HOME set
to a scratch home holding a sentinel file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import ToolError

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")


def make_clean(out: str, home: Path) -> subprocess.CompletedProcess:
    """`make clean OUT=<out>` typed in bash, `out` unquoted so that `~` expands as it would."""
    env = {**os.environ, "HOME": str(home)}
    return subprocess.run(["bash", "-c", f"make --no-print-directory HOSTPY={sys.executable} RUNNER=venv "
                           f"CHIP=310P3 clean OUT={out}"], cwd=REPO, capture_output=True, text=True, env=env)


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "home"
    (home / "projects").mkdir(parents=True)
    (home / "projects" / "thesis.tex").write_text("years of work")
    (home / ".bashrc").write_text("# mine")
    return home


def tool_made_out(root: Path) -> Path:
    """An OUT tree as the make targets and `make demo` leave it."""
    for sub in ("fcos/onnx", "fcos/data", "efficientdet/infer/efficientdet_onnxruntime_bs1",
                "demo/efficientdet/mini_coco/val2017", "demo/efficientdet/eval",
                # M-stream, INPUT=uint8 (the _uint8 step folders), SHARD=I/N and M-merge
                "pspnet/stream", "fcos/data_uint8", "fcos/stream_uint8", "fcos/shards/0/data", "fcos/merge"):
        (root / sub).mkdir(parents=True)
    (root / "fcos" / "onnx" / "fcos_ascend_bs1.onnx").write_bytes(b"onnx")
    (root / "demo" / "efficientdet" / "random_checkpoint.pth").write_bytes(b"pth")
    return root


def test_clean_refuses_the_home_folder(home):
    proc = make_clean("~", home)
    assert proc.returncode == 2, proc.stderr
    assert f"error: refusing to remove OUT={home}: it is your home folder" in proc.stderr
    assert (home / "projects" / "thesis.tex").read_text() == "years of work"
    assert (home / ".bashrc").exists()


def test_clean_refuses_a_folder_holding_anything_the_tools_did_not_make(home, tmp_path):
    out = tool_made_out(tmp_path / "out")
    (out / "fcos" / "notes.txt").write_text("mine")
    proc = make_clean(str(out), home)
    assert proc.returncode == 2, proc.stderr
    assert "holds 1 thing(s) the tools did not make (fcos/notes.txt)" in proc.stderr
    assert (out / "fcos" / "notes.txt").exists() and (out / "fcos" / "onnx" / "fcos_ascend_bs1.onnx").exists()


def test_clean_removes_a_tool_made_out_and_accepts_a_missing_one(home, tmp_path):
    out = tool_made_out(tmp_path / "out")
    proc = make_clean(str(out), home)
    assert proc.returncode == 0, proc.stderr
    assert not out.exists()
    again = make_clean(str(out), home)
    assert again.returncode == 0 and "nothing to clean" in again.stdout


@pytest.mark.parametrize("place", ["root", "repo", "above-repo", "home-parent"])
def test_clean_output_refuses_protected_places(tmp_path, monkeypatch, place):
    """The root, the checkout, any folder holding it, or home: refused even when empty of strangers."""
    from common.fsutil import clean_output

    repo, home = tmp_path / "work" / "repo", tmp_path / "users" / "me"
    repo.mkdir(parents=True)
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    target = {"root": Path("/"), "repo": repo, "above-repo": repo.parent, "home-parent": home.parent}[place]
    with pytest.raises(ToolError, match="refusing to remove OUT="):
        clean_output(target, repo)
    assert repo.is_dir() and home.is_dir()
