"""The Makefile front door: targets for every model, runner selection, planned tools."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common.spec import MODELS

REPO = Path(__file__).resolve().parents[2]
STEPS = ("env", "image", "onnx", "om", "data", "infer", "eval", "stream", "perf", "all")


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", f"HOSTPY={sys.executable}", *args], cwd=REPO,
                          capture_output=True, text=True)


pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")


def test_help_lists_every_target_of_every_model():
    out = make("help").stdout
    for model in MODELS:
        for step in STEPS:
            assert f"{model}-{step}" in out.split(), f"{model}-{step} missing from make help"
    for target in ("test", "lint", "demo"):
        assert f"  {target} " in out


def test_planned_tool_targets_fail_clearly():
    from common.spec import load_spec

    planned = [m for m in MODELS if load_spec(m).status == "planned"]
    if not planned:
        pytest.skip("every tool in this checkout is ready: no planned tool to try")
    proc = make(f"{planned[0]}-onnx")
    assert proc.returncode != 0
    assert f"the {planned[0]} tool is planned" in proc.stderr


def test_venv_runner_uses_the_tool_environment():
    out = make("-n", "RUNNER=venv", "efficientdet-onnx", "BATCH=4", "TARGET=onnx", "WEIGHTS=/w/d0.pth").stdout
    assert "-m common.envs ensure efficientdet" in out
    assert "-m common.envs python efficientdet) -m tools.efficientdet export" in out
    assert "--batch 4 --target onnx --weights /w/d0.pth" in out


def test_docker_runner_passes_the_npu_through():
    # the docker run command itself (devices, mounts, uid) is checked in test_docker.py
    out = make("-n", "RUNNER=docker", "DEVICE=3", "fcos-infer", "BACKEND=ais_bench").stdout
    assert "-m common.containers run fcos --device '3'" in out and "-- python -m tools.fcos infer" in out
    assert "fcos_ascend_bs1_Ascend310P3.om" in out  # ais_bench runs the compiled model
    assert "-m common.containers build fcos" in out


@pytest.mark.parametrize("chip", ["310P3", "Ascend310P3", "ascend310p3"])
def test_every_chip_spelling_names_the_om_that_atc_writes(chip):
    """infer/eval/perf/all look for the very file `M-om` writes, whatever the spelling of CHIP."""
    for step in ("infer", "eval", "perf", "all"):
        out = make("-n", "RUNNER=venv", f"fcos-{step}", "BACKEND=ais_bench", f"CHIP={chip}").stdout
        batch = "${b}" if step == "perf" else "1"  # perf loops over BATCH in the shell
        assert f"out/fcos/om/fcos_ascend_bs{batch}_Ascend310P3.om" in out, (step, out)
        assert "AscendAscend" not in out


def test_om_names_carry_the_target():
    ascend = make("-n", "RUNNER=venv", "pspnet-infer", "BACKEND=ais_bench", "CHIP=310").stdout
    onnx = make("-n", "RUNNER=venv", "pspnet-infer", "BACKEND=ais_bench", "CHIP=310", "TARGET=onnx").stdout
    assert "pspnet_ascend_bs1_Ascend310.om" in ascend and "pspnet_onnx_bs1_Ascend310.om" in onnx


@pytest.mark.parametrize("step", ["onnx", "om", "infer", "eval", "perf", "all"])
def test_empty_values_are_one_clear_error(step):
    proc = make("RUNNER=venv", f"efficientdet-{step}", "BATCH=")
    assert proc.returncode == 2 and "error: BATCH is empty: " in proc.stderr and "Usage:" not in proc.stderr


def test_unknown_chip_is_refused_where_an_om_is_named(tmp_path):
    proc = make("RUNNER=venv", "efficientdet-infer", "BACKEND=ais_bench", "CHIP=311", f"OUT={tmp_path}")
    assert proc.returncode == 2 and "error: unknown CHIP '311' (valid: 310, " in proc.stderr
    assert not any(tmp_path.iterdir())


def test_unknown_runner_is_refused():
    proc = make("RUNNER=podman", "help")
    assert proc.returncode != 0 and "unknown RUNNER 'podman'" in proc.stderr


def test_flags_reach_the_tool_cli():
    out = make("-n", "RUNNER=venv", "fcos-onnx", "NO_VERIFY=1", "DYNAMIC_BATCH=1", "TARGET=onnx").stdout
    assert "--target onnx" in out and "--dynamic-batch" in out and "--no-verify" in out
    out = make("-n", "RUNNER=venv", "fcos-data", "DATA=/d/coco", "SKIP_BAD=1", "FORCE=1").stdout
    assert "data --data /d/coco --out out/fcos/data --force --skip-bad" in out
    assert "--no-verify" not in make("-n", "RUNNER=venv", "fcos-onnx").stdout


def fake_interpreters(tmp_path: Path, fail_on: str = "no such argument") -> tuple[Path, Path]:
    """(host python, log): the host python answers `common.envs python M` with a tool python that
    records each call in the log and exits 3 when its arguments contain ``fail_on``."""
    log = tmp_path / "calls.log"
    tool_py = tmp_path / "toolpython"
    tool_py.write_text(f'#!/bin/sh\necho "$*" >> {log}\ncase "$*" in *"{fail_on}"*) exit 3;; esac\n')
    host_py = tmp_path / "hostpython"
    host_py.write_text(f'#!/bin/sh\ncase "$3" in python) echo {tool_py};; esac\n')
    for script in (tool_py, host_py):
        script.chmod(0o755)
    return host_py, log


def test_perf_measures_each_batch_size_with_its_own_model_and_stops_at_a_failure(tmp_path):
    """The shell loop itself runs: a fake interpreter records each call and fails for batch 4."""
    host_py, log = fake_interpreters(tmp_path, fail_on="--batch 4 ")
    proc = subprocess.run(["make", "--no-print-directory", f"HOSTPY={host_py}", "RUNNER=venv",
                           "efficientdet-perf", "BATCH=1 4 8"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0
    calls = log.read_text().splitlines()
    assert len(calls) == 2  # batch 8 never ran after batch 4 failed
    assert "--model out/efficientdet/onnx/efficientdet_ascend_bs1.onnx" in calls[0] and "--batch 1 " in calls[0]
    assert "--model out/efficientdet/onnx/efficientdet_ascend_bs4.onnx" in calls[1] and "--batch 4 " in calls[1]


def test_all_continues_where_it_stopped_and_force_redoes_everything(tmp_path):
    host_py, log = fake_interpreters(tmp_path)
    out = tmp_path / "out"
    (out / "fcos" / "onnx").mkdir(parents=True)
    (out / "fcos" / "onnx" / "fcos_ascend_bs1.onnx").write_bytes(b"x")
    (out / "fcos" / "data").mkdir()
    (out / "fcos" / "data" / "manifest.json").write_text("{}")

    def run_all(*extra):
        log.unlink(missing_ok=True)
        proc = subprocess.run(["make", "--no-print-directory", f"HOSTPY={host_py}", "RUNNER=venv", f"OUT={out}",
                               "DATA=/d/coco", "fcos-all", *extra], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        # `-m tools.fcos <step> ...`; the om step is `-m common.atc --model fcos ...` (base environment)
        return proc.stdout, ["om" if line.split()[1] == "common.atc" else line.split()[2]
                             for line in log.read_text().splitlines()]

    stdout, steps = run_all()
    assert steps == ["infer", "eval"]
    assert f"fcos-onnx: keeping {out}/fcos/onnx/fcos_ascend_bs1.onnx (FORCE=1 redoes it)" in stdout
    assert "fcos-om" not in stdout  # onnxruntime runs the .onnx
    _, steps = run_all("BACKEND=ais_bench")
    assert steps == ["om", "infer", "eval"]
    _, steps = run_all("FORCE=1")
    assert steps == ["export", "data", "infer", "eval"]
    assert all("--force" in line for line in log.read_text().splitlines())


def test_ready_tools_in_make_are_the_data_files_ready_ones():
    from common.spec import load_spec

    ready = sorted(m for m in MODELS if load_spec(m).status == "ready")
    assert f"Ready: {' '.join(ready)};" in make("help").stdout
