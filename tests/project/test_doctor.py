"""`make doctor`: reports what the host can run; exit 1 only when the venv runner cannot work."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common import doctor, envs

REPO = Path(__file__).resolve().parents[2]

NPU_SMI_TABLE = """\
| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| 0     310P3               | OK            | NA          45                0    / 0             |
| 0                         | 0000:01:00.0  | 0           1541 / 21527                           |
| 1     999X                | Alarm         | NA          45                0    / 0             |
"""


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A host with CANN's npu-smi and atc but no docker, and an empty venv cache."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "table.txt").write_text(NPU_SMI_TABLE)
    for name, script in {"npu-smi": f"/bin/cat {bin_dir / 'table.txt'}", "atc": "exit 0"}.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{script}\n")
        (bin_dir / name).chmod(0o755)
    (bin_dir / "python3").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("ASCEND_VISION_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ASCEND_TOOLKIT_HOME", raising=False)
    monkeypatch.setattr(doctor.cann, "DEFAULT_SET_ENV", str(tmp_path / "none.sh"))
    monkeypatch.setattr(envs, "find_python", lambda version: f"/opt/python{version}")
    return bin_dir


TOOL_ENVS = ", ".join(n for n in envs.known_envs() if not n.startswith("common-"))  # base and the tools


def test_report_names_each_gap_and_its_fix(host):
    lines, usable = doctor.report()
    text = "\n".join(lines)
    assert usable
    assert f"ok  Python 3.9 for {TOOL_ENVS}: /opt/python3.9" in text
    assert "--  fcos: not built yet: `python3 -m common.envs ensure fcos`" in text
    assert "no engine answers: make uses RUNNER=venv" in text
    assert f"ok  atc: {host / 'atc'}" in text and "--  aoe: not found" in text
    assert "ok  NPU 0: 310P3 (OK) -> CHIP=310P3 DEVICE=0" in text
    assert "NO  NPU 1: 999X (Alarm) -> not a known CHIP" in text
    assert "--  ais_bench: not importable by python3" in text


def test_missing_tool_python_makes_the_host_unusable_but_a_test_only_one_does_not(host, monkeypatch):
    def only_39(version):
        if version != "3.9":
            raise envs.EnvError(f"Python {version} not found: install it")
        return "/opt/python3.9"

    monkeypatch.setattr(envs, "find_python", only_39)
    lines, usable = doctor.report()
    assert usable and any(line.startswith("  --  Python 3.12 for common-py312 (tests only)") for line in lines)

    def none(version):
        raise envs.EnvError(f"Python {version} not found: install it (e.g. `pyenv install {version}`) and rerun")

    monkeypatch.setattr(envs, "find_python", none)
    lines, usable = doctor.report()
    assert not usable
    assert f"  NO  Python 3.9 for {TOOL_ENVS}: Python 3.9 not found: install it" in "\n".join(lines)


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")
def test_makefile_defaults_chip_to_the_hosts_npu(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "npu-smi").write_text("#!/bin/sh\necho '| 3     910B4               | OK            | 95.9 |'\n")
    (bin_dir / "npu-smi").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}

    def dry_run(*args):
        return subprocess.run(["make", "-n", "--no-print-directory", f"HOSTPY={sys.executable}", "RUNNER=venv",
                               "fcos-om", *args], cwd=REPO, env=env, capture_output=True, text=True).stdout

    assert "--chip 910B4" in dry_run()
    assert "--chip 310P3" in dry_run("CHIP=310P3")  # an explicit CHIP always wins
    env["PATH"] = "/usr/bin:/bin"  # no npu-smi: the seeds' chip
    assert "--chip 310P3" in dry_run()
