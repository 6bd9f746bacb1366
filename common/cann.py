"""What an Ascend host offers: chip names, the CANN toolkit's set_env.sh, and `npu-smi info`.

Standard library only: the Makefile (default CHIP) and `make doctor` run it on the host's own
interpreter, before any tool environment exists.

    python3 -m common.cann chip      # the host's chip name for CHIP= (exit 1 when none is found)
    python3 -m common.cann soc CHIP  # CHIP in the one spelling of file names and atc (310p3 -> Ascend310P3)
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
    """Any spelling of a chip (``310P3``, ``Ascend310P3``, ``ascend310p3``) -> ATC's ``Ascend310P3``.

    The one normalised name: ``--soc_version`` wants it, and every .om file name carries it, so
    ``CHIP=310P3`` and ``CHIP=Ascend310P3`` name the same file. Empty or unknown chips are refused.
    """
    text = chip.strip()
    if not text:
        raise ToolError("CHIP is empty: set CHIP=<Name column of `npu-smi info`> (e.g. 310P3), "
                        "or leave it out for this host's chip")
    name = text[len("ascend"):] if text.lower().startswith("ascend") else text
    by_lower = {known.lower(): known for known in KNOWN_CHIPS}
    if name.lower() not in by_lower:
        raise ToolError(
            f"unknown CHIP '{chip}' (valid: {', '.join(KNOWN_CHIPS)}; see the Name column of `npu-smi info`)")
    return "Ascend" + by_lower[name.lower()]


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


def _print_soc(chip: str) -> int:
    try:
        print(soc_version(chip))
    except ToolError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "soc":
        return _print_soc(args[1])
    if args != ["chip"]:
        print("usage: python3 -m common.cann chip | python3 -m common.cann soc CHIP", file=sys.stderr)
        return 2
    chips = detect_chips()
    if not chips:
        return 1
    print(chips[0].name)
    return 0


if __name__ == "__main__":
    sys.exit(main())


def ais_bench_importable(python: str = "python3", timeout: float = 120) -> bool:
    """Whether ``python`` can run ais_bench's CLI (``python -m ais_bench``): it ships as a wheel from
    Ascend/tools, not PyPI, so only asking that interpreter tells."""
    exe = shutil.which(python)
    if exe is None:
        return False
    probe = "import importlib.util,sys; sys.exit(0 if importlib.util.find_spec('ais_bench') else 3)"
    try:
        return subprocess.run([exe, "-c", probe], capture_output=True, timeout=timeout).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
