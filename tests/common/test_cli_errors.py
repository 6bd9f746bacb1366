"""OS errors and file modes as a user meets them: the real CLI in a subprocess, on real filesystems.

A read-only OUT is a read-only tmpfs (root ignores chmod 0555); a full disk is a tiny tmpfs. Both
are mounted in a private mount namespace of the command alone (``unshare``), so nothing leaks.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from common.demococo import make_mini_coco

REPO = Path(__file__).resolve().parents[2]
MOUNT = 'mount -t tmpfs -o "$1" tmpfs "$2" && shift 2 && exec "$@"'


def _unshare_prefix() -> list[str] | None:
    """``unshare`` options that give the command a private mount namespace where it may mount tmpfs."""
    if shutil.which("unshare") is None:
        return None
    for options in (["-m"], ["-r", "-m"]):  # root; an unprivileged user namespace otherwise
        probe = subprocess.run(["unshare", *options, "sh", "-c", MOUNT, "sh", "size=64k", "/mnt", "true"],
                               capture_output=True)
        if probe.returncode == 0:
            return ["unshare", *options]
    return None


UNSHARE = _unshare_prefix()
needs_mounts = pytest.mark.skipif(UNSHARE is None, reason="cannot mount a private tmpfs here (no unshare/"
                                  "mount namespace): the read-only and full-disk cases need a real filesystem")


def tool_cli(model: str, *args: str, mount: tuple[str, Path] | None = None, umask: int | None = None,
             ) -> subprocess.CompletedProcess:
    """``python -m tools.<model> ARGS``; ``mount`` = (tmpfs options, mount point) just for this command."""
    cmd = [sys.executable, "-m", f"tools.{model}", *args]
    if mount is not None:
        cmd = [*UNSHARE, "sh", "-c", MOUNT, "sh", mount[0], str(mount[1]), *cmd]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          preexec_fn=None if umask is None else (lambda: os.umask(umask)))


def assert_one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2 with exactly one ``error:`` line on stderr, no traceback; returns that line."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_mini_coco(tmp_path_factory.mktemp("coco") / "coco", n_images=2, seed=3)


@pytest.fixture(scope="module")
def prep(coco, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "prep"
    proc = tool_cli("efficientdet", "data", "--data", str(coco), "--out", str(out), "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    return out


def identity_onnx(path: Path) -> Path:
    """A model taking EfficientDet's input and returning it: 3 MiB of results per image."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 512, 512])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 512, 512])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["out"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return path


def modes(root: Path) -> dict[str, set[int]]:
    """Permission bits of every file and folder under ``root`` (``root`` included)."""
    found: dict[str, set[int]] = {"files": set(), "dirs": {stat.S_IMODE(root.stat().st_mode)}}
    for path in root.rglob("*"):
        found["dirs" if path.is_dir() else "files"].add(stat.S_IMODE(path.stat().st_mode))
    return found


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_the_users_umask(coco, tmp_path, umask):
    """data and infer outputs: 0666/0777 less the umask, not mkstemp's 0600 / mkdtemp's 0700."""
    prep, infer = tmp_path / "prep", tmp_path / "infer"
    proc = tool_cli("efficientdet", "data", "--data", str(coco), "--out", str(prep), umask=umask)
    assert proc.returncode == 0, proc.stderr
    model = identity_onnx(tmp_path / "identity.onnx")
    proc = tool_cli("efficientdet", "infer", "--model", str(model), "--prep", str(prep), "--out", str(infer),
                    umask=umask)
    assert proc.returncode == 0, proc.stderr
    for root in (prep, infer):
        assert modes(root) == {"files": {0o666 & ~umask}, "dirs": {0o777 & ~umask}}, root


@pytest.mark.skipif(UNSHARE is None and os.geteuid() == 0, reason="root ignores chmod 0555 and cannot mount a "
                    "read-only tmpfs here (no unshare/mount namespace)")
def test_read_only_out_is_one_line_naming_the_path(coco, tmp_path):
    out = tmp_path / "readonly"
    out.mkdir()
    args = ("data", "--data", str(coco), "--out", str(out / "efficientdet" / "data"))
    if UNSHARE is not None:
        proc = tool_cli("efficientdet", *args, mount=("ro,size=64k", out))
        assert_one_error_line(proc, f"cannot write {out}", "Read-only file system", "writable OUT")
    else:  # an unprivileged user: a folder without write permission is read-only to them
        out.chmod(0o555)
        proc = tool_cli("efficientdet", *args)
        out.chmod(0o755)
        assert_one_error_line(proc, f"cannot access {out}", "Permission denied", "choose another OUT")


@needs_mounts
def test_disk_full_during_infer_is_one_line_naming_the_path(prep, tmp_path):
    """The results (3 MiB per image) do not fit a 1 MiB filesystem: the backend's own write fails."""
    model = identity_onnx(tmp_path / "identity.onnx")
    small = tmp_path / "small"
    small.mkdir()
    proc = tool_cli("efficientdet", "infer", "--model", str(model), "--prep", str(prep), "--out", str(small),
                    mount=("size=1m", small))
    assert_one_error_line(proc, f"cannot write {small}", "No space left on device", "free space")


@needs_mounts
def test_disk_full_while_preprocessing_is_one_line(coco, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    proc = tool_cli("efficientdet", "data", "--data", str(coco), "--out", str(small / "prep"),
                    mount=("size=1m", small))
    assert_one_error_line(proc, f"cannot write {small / 'prep'}", "No space left on device", "free space")


def test_permission_error_outside_out_is_one_line(coco, tmp_path):
    """OUT under a regular file (ENOTDIR): still one line naming the path, whoever runs it."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = tool_cli("efficientdet", "data", "--data", str(coco), "--out", str(blocker / "prep"))
    assert_one_error_line(proc, str(blocker), "Not a directory")


def test_fcos_nan_scores_are_refused_naming_the_image(coco, tmp_path):
    """NaN scores used to fail ``score > 0`` and vanish as padding: eval exited 0 with a lower mAP."""
    prep = tmp_path / "prep"
    assert tool_cli("fcos", "data", "--data", str(coco), "--out", str(prep)).returncode == 0
    stems = [e["stem"] for e in json.loads((prep / "manifest.json").read_text())["entries"]]
    results = tmp_path / "infer" / "fcos_onnxruntime_bs1"
    results.mkdir(parents=True)
    for i, stem in enumerate(stems):
        dets = np.zeros((100, 5), np.float32)
        dets[:3] = [10, 10, 60, 60, 0.9]
        if i == 1:
            dets[1, 4] = np.nan
        dets.tofile(results / f"{stem}_0.bin")
        np.zeros(100, np.int64).tofile(results / f"{stem}_1.bin")
    proc = tool_cli("fcos", "eval", "--prep", str(prep), "--results", str(results), "--out", str(tmp_path / "eval"))
    assert_one_error_line(proc, f"image {stems[1]}", "NaN", str(results / f"{stems[1]}_0.bin"))
    assert not (tmp_path / "eval" / "report.json").exists()
