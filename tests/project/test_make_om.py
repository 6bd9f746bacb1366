"""`make M-om` runs in the light base environment: only model.toml, the ONNX file and atc.

A user on a new machine must not wait for a tool's environment (FCOS and PSPNet compile mmcv-full,
18 min here) to be told "export first" or to see the atc command.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from onnx import TensorProto, helper, save

from common.spec import MODELS, load_spec
from tests.makehelpers import REPO, fake_cann

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")

READY = tuple(m for m in MODELS if load_spec(m).status == "ready")


def export_stand_in(path: Path, model: str, batch: int = 1, target: str = "ascend",
                    outputs: list[str] | None = None) -> Path:
    """An ONNX with the export's input and output names: all that ATC's flags depend on."""
    spec = load_spec(model)
    shape = [batch, *spec.input.shape]
    names = outputs or [o.name for o in spec.outputs_for(target)]
    x = helper.make_tensor_value_info(spec.input.name, TensorProto.FLOAT, shape)
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in names]
    nodes = [helper.make_node("Identity", [spec.input.name], [n]) for n in names]
    path.parent.mkdir(parents=True, exist_ok=True)
    save(helper.make_model(helper.make_graph(nodes, "g", [x], outs)), str(path))
    return path


def host_python(tmp_path: Path) -> tuple[Path, Path]:
    """(HOSTPY, log): the real interpreter, except that using any tool environment is refused and logged."""
    log = tmp_path / "envs.log"
    script = tmp_path / "hostpython"
    script.write_text(f'#!/bin/sh\nif [ "$2" = common.envs ] && [ "$4" != base ]; then\n'
                      f'  echo "$*" >> {log}; echo "tool environment used: $*" >&2; exit 3\nfi\n'
                      f'exec {sys.executable} "$@"\n')
    script.chmod(0o755)
    return script, log


def make_om(tmp_path: Path, model: str, *args: str, cann: Path | None = None) -> subprocess.CompletedProcess:
    hostpy, _ = host_python(tmp_path)
    env = {**os.environ, "PATH": "/usr/bin:/bin",
           "ASCEND_TOOLKIT_HOME": str(cann or tmp_path / "no-cann")}
    return subprocess.run(["make", "--no-print-directory", f"HOSTPY={hostpy}", "RUNNER=venv",
                           f"OUT={tmp_path / 'out'}", f"{model}-om", *args], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=600)


def atc_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith("atc "))


@pytest.mark.parametrize("model", READY)
def test_om_before_export_shows_the_command_without_the_tool_environment(tmp_path, model):
    proc = make_om(tmp_path, model, "CHIP=910b4")
    assert proc.returncode == 2, proc.stderr
    assert "tool environment used" not in proc.stderr and not (tmp_path / "envs.log").exists()
    assert f"run `make {model}-onnx` first" in proc.stderr and "Traceback" not in proc.stderr
    assert "--soc_version=Ascend910B4" in atc_line(proc.stderr)


@pytest.mark.parametrize("model", READY)
def test_out_nodes_are_the_exported_graph_outputs(tmp_path, model):
    onnx_path = export_stand_in(tmp_path / "out" / model / "onnx" / f"{model}_ascend_bs1.onnx", model)
    proc = make_om(tmp_path, model, "CHIP=310P3")
    assert proc.returncode == 2 and "error: atc not found" in proc.stderr, proc.stderr
    assert not (tmp_path / "envs.log").exists()
    cmd = atc_line(proc.stderr)
    names = ";".join(o.name for o in load_spec(model).outputs_for("ascend"))
    assert f'--out_nodes={names}' in cmd.replace('"', "")
    assert f"--model={onnx_path}" in cmd and "--input_shape=input:1," in cmd
    assert f"--output={tmp_path}/out/{model}/om/{model}_ascend_bs1_Ascend310P3 " in cmd + " "


def test_fcos_command_is_the_recipes_with_graph_output_names(tmp_path):
    """What the FCOS tool's own atc_out_nodes gave before this step left the tool environment."""
    onnx_path = export_stand_in(tmp_path / "out" / "fcos" / "onnx" / "fcos_ascend_bs4.onnx", "fcos", batch=4)
    proc = make_om(tmp_path, "fcos", "CHIP=Ascend310P3", "BATCH=4")
    assert atc_line(proc.stderr).split() == [
        "atc", "--framework=5", f"--model={onnx_path}", "--input_format=NCHW", "--input_shape=input:4,3,800,1333",
        "--soc_version=Ascend310P3", f"--output={tmp_path}/out/fcos/om/fcos_ascend_bs4_Ascend310P3",
        "--log=error", '--out_nodes="dets;labels"']


def test_graph_of_another_export_is_refused(tmp_path):
    export_stand_in(tmp_path / "out" / "fcos" / "onnx" / "fcos_ascend_bs1.onnx", "fcos",
                    outputs=["Cast_1673", "Gather_1676"])
    proc = make_om(tmp_path, "fcos", "CHIP=310P3")
    assert proc.returncode == 2 and "expected dets, labels" in proc.stderr and "Traceback" not in proc.stderr
    export_stand_in(tmp_path / "out" / "fcos" / "onnx" / "fcos_ascend_bs4.onnx", "fcos", batch=1)
    proc = make_om(tmp_path, "fcos", "CHIP=310P3", "BATCH=4")
    assert proc.returncode == 2 and "expected 4x3x800x1333 for BATCH=4" in proc.stderr


@pytest.mark.parametrize("empty", ["CHIP", "BATCH", "TARGET", "BACKEND"])
def test_empty_variables_are_refused_clearly(tmp_path, empty):
    proc = make_om(tmp_path, "fcos", f"{empty}=")
    assert proc.returncode == 2
    assert f"error: {empty} is empty: " in proc.stderr
    assert "unexpected extra argument" not in proc.stderr and "Traceback" not in proc.stderr


def test_both_targets_compile_to_their_own_om_with_a_source_record(tmp_path):
    """With a CANN-like toolkit: each target's .om, named with one chip spelling, records its ONNX."""
    cann = fake_cann(tmp_path / "cann")
    weights = {"file": "/w/fcos.pth", "sha256": "ab" * 32, "verified": True}
    built = []
    for target, chip in (("ascend", "310P3"), ("onnx", "ascend310p3")):
        onnx_path = export_stand_in(tmp_path / "out" / "fcos" / "onnx" / f"fcos_{target}_bs1.onnx", "fcos",
                                    target=target)
        onnx_path.with_suffix(".parity.json").write_text(json.dumps({"ok": True, "weights": weights}))
        proc = make_om(tmp_path, "fcos", f"TARGET={target}", f"CHIP={chip}", cann=cann)
        assert proc.returncode == 0, proc.stderr
        om = tmp_path / "out" / "fcos" / "om" / f"fcos_{target}_bs1_Ascend310P3.om"
        assert proc.stdout.strip().splitlines()[-1] == str(om)
        assert json.loads(om.with_suffix(".source.json").read_text()) == {"onnx": str(onnx_path), "weights": weights}
        built.append(om)
    assert sorted(p.name for p in (tmp_path / "out" / "fcos" / "om").glob("*.om")) == sorted(p.name for p in built)
    proc = make_om(tmp_path, "fcos", "CHIP=310P3", cann=cann)
    assert proc.returncode == 2 and "already exists: pass --force" in proc.stderr
    assert not (tmp_path / "envs.log").exists()


def test_common_atc_runs_where_the_tool_packages_are_missing(tmp_path):
    """`python -m common.atc` imports no tool code: here (base environment) mmdet is not installed."""
    onnx_path = export_stand_in(tmp_path / "fcos_ascend_bs1.onnx", "fcos")
    env = {**os.environ, "PATH": "/usr/bin:/bin", "ASCEND_TOOLKIT_HOME": str(fake_cann(tmp_path / "cann"))}
    proc = subprocess.run([sys.executable, "-m", "common.atc", "--model", "fcos", "--onnx", str(onnx_path),
                           "--out", str(tmp_path / "om"), "--chip", "310P3"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "om" / "fcos_ascend_bs1_Ascend310P3.om").is_file()
    assert importlib.util.find_spec("mmdet") is None  # the FCOS tool could not have been imported


def test_the_tool_cli_om_is_the_same_step(tmp_path):
    """`python -m tools.fcos om` delegates to common.atc: same file names, no mmdet needed."""
    proc = subprocess.run([sys.executable, "-m", "tools.fcos", "om", "--onnx", str(tmp_path / "none.onnx"), "--out",
                           str(tmp_path / "om"), "--chip", "ascend310p3", "--target", "onnx"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "run `make fcos-onnx TARGET=onnx` first" in proc.stderr
    assert f"--output={tmp_path}/om/fcos_onnx_bs1_Ascend310P3 " in atc_line(proc.stderr)


def test_read_only_out_is_one_error_line(tmp_path):
    """OUT on a real read-only filesystem (a private tmpfs mount: root ignores chmod)."""
    from tests.common.test_cli_errors import MOUNT, UNSHARE, assert_one_error_line

    if UNSHARE is None:
        pytest.skip("cannot mount a private read-only tmpfs here")
    onnx_path = export_stand_in(tmp_path / "efficientdet_ascend_bs1.onnx", "efficientdet")
    read_only = tmp_path / "ro"
    read_only.mkdir()
    env = {**os.environ, "PATH": "/usr/bin:/bin", "ASCEND_TOOLKIT_HOME": str(fake_cann(tmp_path / "cann"))}
    proc = subprocess.run([*UNSHARE, "sh", "-c", MOUNT, "sh", "ro,size=64k", str(read_only), sys.executable, "-m",
                           "common.atc", "--model", "efficientdet", "--onnx", str(onnx_path), "--out",
                           str(read_only / "om"), "--chip", "310P3"], cwd=REPO, env=env, capture_output=True,
                          text=True)
    assert_one_error_line(proc, str(read_only / "om"))
