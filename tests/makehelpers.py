"""Running `make` from tests, as a user on a machine without CANN would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_make(*args: str, out: Path) -> subprocess.CompletedProcess:
    """`make ARGS` with the venv runner, OUT=out, and no CANN on PATH or under ASCEND_TOOLKIT_HOME."""
    env = {**os.environ, "PATH": "/usr/bin:/bin", "ASCEND_TOOLKIT_HOME": str(out / "no-cann")}
    return subprocess.run(["make", "--no-print-directory", f"HOSTPY={sys.executable}", "RUNNER=venv",
                           f"OUT={out}", *args], cwd=REPO, capture_output=True, text=True, env=env)


def fake_cann(root: Path) -> Path:
    """A CANN-like toolkit at ``root`` whose atc writes ``--output`` + .om (and no other file), as the real one does."""
    (root / "bin").mkdir(parents=True)
    atc = root / "bin" / "atc"
    atc.write_text('#!/bin/sh\nfor a in "$@"; do case $a in --output=*) out=${a#--output=};; esac; done\n'
                   'echo "ATC run success"; touch "$out.om"\n')
    atc.chmod(0o755)
    (root / "set_env.sh").write_text(f"export PATH={root / 'bin'}:$PATH\n")
    return root


def stand_in_graph(path: Path, input_shape: list[int], output_names: list[str]) -> Path:
    """An ONNX file with the exported graph's input and output names, for ATC's flags (`M-om`
    reads only those and the input shape): Identity nodes, nothing computed."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, input_shape) for n in output_names]
    nodes = [helper.make_node("Identity", ["input"], [n]) for n in output_names]
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], outs)), path)
    return path
