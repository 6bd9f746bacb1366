"""`make doctor`: what this host can run, and the one thing to do about each gap.

Standard library only (runs on the host interpreter). It changes nothing: no environment is
built, no file written. Exit status 0 when the venv runner can work here (the interpreters the
pins name exist), 1 otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

from common import cann, envs


def _docker_answers() -> bool:
    exe = shutil.which("docker")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _python_ok(version: str) -> tuple[bool, str]:
    try:
        return True, envs.find_python(version)
    except envs.EnvError as err:
        return False, str(err)


def _tests_only(env: str) -> bool:
    """Environments that only the test suite uses (tests/requirements-<name>.txt)."""
    return envs.requirement_files(env)[0].parent.name == "tests"


def report() -> tuple[list[str], bool]:
    """(lines, venv runner usable)."""
    lines = ["== Python interpreters (named by the pins)"]
    usable = True
    by_version: dict[str, list[str]] = {}
    for name in envs.known_envs():
        by_version.setdefault(envs.python_version(name), []).append(name)
    for version, names in sorted(by_version.items()):
        ok, where = _python_ok(version)
        tests_only = all(_tests_only(n) for n in names)
        usable &= ok or tests_only
        lines.append(f"  {'ok ' if ok else '-- ' if tests_only else 'NO '} Python {version} for {', '.join(names)}"
                     f"{' (tests only)' if tests_only else ''}: {where}")

    lines.append("== Environments (venv runner, cache " + str(envs.cache_root() / "venvs") + ")")
    for name in envs.known_envs():
        venv = envs.venv_dir(name)
        built = (venv / ".complete").exists()
        lines.append(f"  {'ok ' if built else '-- '} {name}: " + (
            f"built ({venv.name})" if built else f"not built yet: `python3 -m common.envs ensure {name}` "
            "(or any make target of that tool)"))
    stale = envs.stale_venvs()
    if stale:
        lines.append(f"  --  {len(stale)} environment(s) from older pins: `python3 -m common.envs prune`")

    docker = _docker_answers()
    lines.append("== Docker")
    lines.append("  ok  an engine answers: make uses RUNNER=docker" if docker else
                 "  --  no engine answers: make uses RUNNER=venv (fine; images need `docker info` to work)")

    lines.append("== CANN toolkit (needed for M-om and BACKEND=ais_bench only)")
    set_env = cann.set_env_script()
    lines.append(f"  {'ok ' if set_env else '-- '} set_env.sh: " + (
        str(set_env) if set_env else f"not found (set ASCEND_TOOLKIT_HOME or install CANN at {cann.DEFAULT_SET_ENV})"))
    for tool in ("atc", "aoe"):
        where = shutil.which(tool)
        note = where or ("not on PATH; sourced from set_env.sh when a step runs" if set_env else
                         "not found: `make M-om` prints the exact command to run on an Ascend host")
        lines.append(f"  {'ok ' if where else '-- '} {tool}: {note}")

    ais = cann.ais_bench_importable(timeout=60)
    lines.append(f"  {'ok ' if ais else '-- '} ais_bench: " + (
        "importable by python3 (BACKEND=ais_bench)" if ais else
        "not importable by python3: install the aclruntime + ais_bench wheels (Ascend/tools) "
        "for BACKEND=ais_bench"))

    lines.append("== NPUs (npu-smi info)")
    chips = cann.detect_chips()
    if chips is None:
        lines.append("  --  npu-smi not found or not answering: no NPU here (CPU onnxruntime only)")
    elif not chips:
        lines.append("  --  npu-smi answered but listed no chip")
    for chip in chips or []:
        known = chip.name in cann.KNOWN_CHIPS
        lines.append(f"  {'ok ' if known else 'NO '} NPU {chip.npu}: {chip.name} ({chip.health}) -> "
                     + (f"CHIP={chip.name} DEVICE={chip.npu}" if known else
                        f"not a known CHIP ({', '.join(cann.KNOWN_CHIPS)})"))
    return lines, usable


def main() -> int:
    lines, usable = report()
    print("\n".join(lines))
    return 0 if usable else 1


if __name__ == "__main__":
    sys.exit(main())
