"""ASCEND_VISION_ORT_THREADS: the intra-op thread count of every onnxruntime session (bench_stream's
'device core' configuration); a bad value is a one-line error naming the variable, not ignored."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.backends import make_backend
from common.backends.onnxruntime_backend import THREADS_ENV
from common.errors import ToolError
from tests.common.test_backends import IMAGE_SHAPE, build_onnx

REPO = Path(__file__).resolve().parents[2]


def test_thread_count_reaches_the_session(tmp_path, monkeypatch):
    model = build_onnx(tmp_path / "m.onnx")
    monkeypatch.setenv(THREADS_ENV, "1")
    runner = make_backend("onnxruntime", model)
    assert runner.session.get_session_options().intra_op_num_threads == 1
    outputs = runner.infer(np.ones((1, *IMAGE_SHAPE), np.float32))
    assert outputs[1].tolist() == [0]
    monkeypatch.delenv(THREADS_ENV)
    assert make_backend("onnxruntime", model).session.get_session_options().intra_op_num_threads == 0  # ORT's default


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_bad_thread_count_is_refused(tmp_path, monkeypatch, value):
    model = build_onnx(tmp_path / "m.onnx")
    monkeypatch.setenv(THREADS_ENV, value)
    with pytest.raises(ToolError, match=f"{THREADS_ENV}='{value}' is invalid"):
        make_backend("onnxruntime", model).input_specs()


def test_bad_thread_count_in_a_fresh_process(tmp_path):
    """The variable read from a real process environment; the message is one line (what the CLI prints)."""
    model = build_onnx(tmp_path / "m.onnx", batch=1)
    code = ("import sys; from common.backends import make_backend; from common.errors import ToolError\n"
            "try:\n    make_backend('onnxruntime', sys.argv[1]).session\n"
            "except ToolError as e:\n    print('error:', e, file=sys.stderr); sys.exit(2)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(model)], cwd=REPO, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", THREADS_ENV: "many"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {THREADS_ENV}='many' is invalid: give a thread count >= 1, "
                                                "or unset it"]
