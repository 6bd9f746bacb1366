"""Host detection: `npu-smi info` parsing and the chip the Makefile defaults to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from common import cann

REPO = Path(__file__).resolve().parents[2]

# layouts of `npu-smi info` as printed by the 23.x drivers (inference card, training server, Atlas 200 board)
ONE_310P3 = """\
+--------------------------------------------------------------------------------------------------------+
| npu-smi 23.0.0                                   Version: 23.0.0                                       |
+-------------------------------+-----------------+------------------------------------------------------+
| NPU     Name                  | Health          | Power(W)     Temp(C)           Hugepages-Usage(page) |
| Chip    Device                | Bus-Id          | AICore(%)    Memory-Usage(MB)                        |
+===============================+=================+======================================================+
| 0       310P3                 | OK              | NA           45                0     / 0             |
| 0       0                     | 0000:01:00.0    | 0            1541 / 21527                            |
+===============================+=================+======================================================+
"""

TWO_910B4_WITH_PROCESSES = """\
+------------------------------------------------------------------------------------------------+
| npu-smi 23.0.6                   Version: 23.0.6                                               |
+---------------------------+---------------+----------------------------------------------------+
| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
+===========================+===============+====================================================+
| 4     910B4               | OK            | 95.9        39                0    / 0             |
| 0                         | 0000:C1:00.0  | 0           0    / 0          3363 / 32768         |
+===========================+===============+====================================================+
| 5     910B4               | Warning       | 90.1        41                0    / 0             |
| 0                         | 0000:C2:00.0  | 0           0    / 0          3363 / 32768         |
+===========================+===============+====================================================+
+---------------------------+---------------+----------------------------------------------------+
| NPU     Chip              | Process id    | Process name             | Process memory(MB)      |
+===========================+===============+====================================================+
| 4       0                 | 221304        | python3                  | 1234                    |
+===========================+===============+====================================================+
"""

ATLAS_200 = """\
| npu-smi 23.0.rc3                                 Version: 23.0.rc3                                     |
| NPU     Name                  | Health          | Power(W)     Temp(C)           Hugepages-Usage(page) |
| Chip    Device                | Bus-Id          | AICore(%)    Memory-Usage(MB)                        |
| 0       310B4                 | OK              | 7.2          37                15    / 15            |
| 0       0                     | NA              | 0            1797 / 3513                             |
"""


@pytest.mark.parametrize("text,expected", [
    (ONE_310P3, [cann.NpuChip(0, "310P3", "OK")]),
    (TWO_910B4_WITH_PROCESSES, [cann.NpuChip(4, "910B4", "OK"), cann.NpuChip(5, "910B4", "Warning")]),
    (ATLAS_200, [cann.NpuChip(0, "310B4", "OK")]),
    ("", []),
    ("npu-smi: command failed\n", []),
])
def test_parse_npu_smi(text, expected):
    assert cann.parse_npu_smi(text) == expected


def _fake_npu_smi(bin_dir: Path, text: str, rc: int = 0) -> None:
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "table.txt").write_text(text)
    exe = bin_dir / "npu-smi"
    exe.write_text(f'#!/bin/sh\n[ "$1" = info ] || exit 9\n/bin/cat {bin_dir / "table.txt"}\nexit {rc}\n')
    exe.chmod(0o755)


def test_detect_chips_runs_npu_smi_info(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert cann.detect_chips() is None  # not installed
    _fake_npu_smi(tmp_path / "bin", TWO_910B4_WITH_PROCESSES)
    assert [c.name for c in cann.detect_chips()] == ["910B4", "910B4"]
    _fake_npu_smi(tmp_path / "bin", ONE_310P3, rc=1)  # driver not loaded: no answer, not a guess
    assert cann.detect_chips() is None


def test_chip_command_for_the_makefile(tmp_path):
    _fake_npu_smi(tmp_path / "bin", ATLAS_200)
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "common.cann", "chip"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert (proc.returncode, proc.stdout) == (0, "310B4\n")
    proc = subprocess.run([sys.executable, "-m", "common.cann", "chip"], cwd=REPO, env={"PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True)
    assert (proc.returncode, proc.stdout) == (1, "")


def test_soc_version_and_set_env_live_here(tmp_path, monkeypatch):
    assert cann.soc_version("910B4") == "Ascend910B4"
    monkeypatch.setattr(cann, "DEFAULT_SET_ENV", str(tmp_path / "none.sh"))
    monkeypatch.delenv("ASCEND_TOOLKIT_HOME", raising=False)
    assert cann.set_env_script() is None
    latest = tmp_path / "ascend-toolkit" / "latest"
    latest.mkdir(parents=True)
    (tmp_path / "ascend-toolkit" / "set_env.sh").write_text("")
    monkeypatch.setenv("ASCEND_TOOLKIT_HOME", str(latest))  # set_env.sh sits one level up in CANN installs
    assert cann.set_env_script() == tmp_path / "ascend-toolkit" / "set_env.sh"


def test_soc_command_gives_the_one_spelling_or_a_clear_error():
    """`python3 -m common.cann soc CHIP`: what the Makefile names .om files with."""
    def soc(chip):
        return subprocess.run([sys.executable, "-m", "common.cann", "soc", chip], cwd=REPO, capture_output=True,
                              text=True)
    assert [soc(c).stdout for c in ("310P3", "Ascend310P3", "ascend310p3")] == ["Ascend310P3\n"] * 3
    empty = soc("")
    assert empty.returncode == 2 and empty.stderr.startswith("error: CHIP is empty: ") and empty.stdout == ""
    unknown = soc("311")
    assert unknown.returncode == 2 and "error: unknown CHIP '311'" in unknown.stderr
    assert "Traceback" not in unknown.stderr
