"""What an Ascend host offers: chip names, the CANN toolkit's set_env.sh, and `npu-smi info`.

Standard library only: the Makefile (default CHIP) and `make doctor` run it on the host's own
interpreter, before any tool environment exists.

    python3 -m common.cann chip      # the host's chip name for CHIP= (exit 1 when none is found)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from common.errors import ToolError

#: SoC names as printed in the Name column of ``npu-smi info`` (soc_version = "Ascend" + name)
KNOWN_CHIPS = (
    "310", "310P1", "310P3", "310B1", "310B4",
    "910A", "910B", "910ProA", "910ProB", "910PremiumA", "910B1", "910B2", "910B3", "910B4",
)
DEFAULT_SET_ENV = "/usr/local/Ascend/ascend-toolkit/set_env.sh"


def soc_version(chip: str) -> str:
    """``310P3`` (or ``Ascend310P3``) -> ``Ascend310P3``; unknown chips name the valid ones."""
    name = chip[len("Ascend"):] if chip.startswith("Ascend") else chip
    if name not in KNOWN_CHIPS:
        raise ToolError(
            f"unknown CHIP '{chip}' (valid: {', '.join(KNOWN_CHIPS)}; see the Name column of `npu-smi info`)")
    return "Ascend" + name


def set_env_script() -> Path | None:
    """CANN's set_env.sh: under ASCEND_TOOLKIT_HOME (or its parent), else the default install path."""
    home = os.environ.get("ASCEND_TOOLKIT_HOME")
    candidates = [Path(home) / "set_env.sh", Path(home).parent / "set_env.sh"] if home else []
    for candidate in candidates + [Path(DEFAULT_SET_ENV)]:
        if candidate.is_file():
            return candidate
    return None


@dataclass(frozen=True)
class NpuChip:
    npu: int  # the NPU id: DEVICE=<npu>
    name: str  # the Name column: CHIP=<name>
    health: str


# first row of each NPU block: "| 0     310P3      | OK     | ..."; the block's second row starts with
# the chip index and, on some boards, a device index ("| 0   0   | NA |"), never a 3-digit SoC name
_NPU_ROW = re.compile(r"^\|\s*(\d+)\s+(?:Ascend)?(\d{3}[A-Za-z0-9]*)\s*\|\s*([A-Za-z]+)\s*\|")


def parse_npu_smi(text: str) -> list[NpuChip]:
    """The chips listed by ``npu-smi info`` (its device table; the process table is ignored)."""
    chips = []
    for line in text.splitlines():
        if re.match(r"^\|\s*NPU\s+Chip\b", line):
            break  # the process table that follows reuses the same column shapes
        m = _NPU_ROW.match(line)
        if m:
            chips.append(NpuChip(int(m.group(1)), m.group(2), m.group(3)))
    return chips


def detect_chips(timeout: float = 20.0) -> list[NpuChip] | None:
    """Chips on this host, or None when ``npu-smi`` is not installed or does not answer."""
    exe = shutil.which("npu-smi")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "info"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_npu_smi(proc.stdout) if proc.returncode == 0 else None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["chip"]:
        print("usage: python3 -m common.cann chip", file=sys.stderr)
        return 2
    chips = detect_chips()
    if not chips:
        return 1
    print(chips[0].name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
