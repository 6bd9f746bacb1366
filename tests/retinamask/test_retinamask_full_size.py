"""The published shape, exported the way a user does: 1344x1344, 1000 candidates, through the CLI.

Slow (a forward pass runs the mask head on all 1000 candidates: minutes on 2 cores, several
passes for tracing, simplification and parity), so it runs with `make test-slow` only.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from common import graph
from common.fsutil import read_json
from tests.makehelpers import REPO
from tools.retinamask import tool


@pytest.mark.slow
def test_full_size_ascend_export_through_the_cli(checkpoint, tmp_path):
    proc = subprocess.run([*[sys.executable, "-m", "tools.retinamask"], "export", "--out", str(tmp_path),
                           "--weights", str(checkpoint), "--no-verify"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = tmp_path.rglob("retinamask_ascend_bs1.onnx")
    model = graph.load(path)
    graph.assert_static(model)
    dims = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert dims == {"boxes": [1, 1000, 4], "labels": [1, 1000], "scores": [1, 1000], "masks": [1, 1000, 1, 28, 28]}
    dims_in = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims_in == [1, 3, 1344, 1344]
    parity = read_json(path.with_suffix(".parity.json"))
    assert parity["ok"] and parity[f"candidates_above_{tool.INFERENCE_TH}"] >= 500
