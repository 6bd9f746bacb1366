"""Per-tool Python environments built from the tool's pins (stdlib only: runs on the host).

The pins are the single source of truth for both runners:
- ``tools/requirements-base.txt`` — the shared torch 1.8 stack (environment name ``base``);
- ``tools/<model>/requirements.txt`` — ``-r ../requirements-base.txt`` plus the model's packages;
- ``tools/<model>/requirements-build.txt`` (optional) — packages compiled against torch
  (mmcv-full), installed in a second step with ``--no-build-isolation``; ``# env: K=V`` lines
  in it set the build's environment variables.
The first line ``# python: X.Y`` of a requirements file names the interpreter.
- ``<requirements file>.lock`` (e.g. ``tools/fcos/requirements.lock``) — every package of the
  built environment, exact versions (``pip freeze``), used as pip constraints (``-c``) by both
  install steps, so transitive dependencies are as fixed as the top-level pins. Regenerate it
  after changing pins: ``python3 -m common.envs lock <name>``.

venv runner: ``<cache>/venvs/<name>-<hash>``, keyed by a hash of all pin files, so clones and
CI runs on one machine share it and a change of pins builds a new one. Docker runner: the
Dockerfile calls ``python -m common.envs install <name>`` — the same install steps.

    python3 -m common.envs ensure efficientdet   # build if needed, print the interpreter path
    python3 -m common.envs path efficientdet     # print the venv directory (no build)
    python3 -m common.envs lock efficientdet     # write tools/efficientdet/requirements.lock
    python3 -m common.envs prune                 # delete cached venvs built from older pins
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOLS_DIR = REPO_ROOT / "tools"
BUILDER_VERSION = "1"  # bump when the install steps below change
BOOTSTRAP = ["pip<24.1", "setuptools<70", "wheel"]  # setuptools<70 keeps pkg_resources for mmcv-full


#: installer packages that ``pip freeze`` leaves out, so a lock never lists them
UNFROZEN = {"pip", "setuptools", "wheel", "distribute"}


class EnvError(Exception):
    pass


def requirement_files(name: str) -> tuple[Path, Path | None]:
    if name == "base":
        main = TOOLS_DIR / "requirements-base.txt"
    elif name.startswith("common-"):  # test-only environments, e.g. common-py312
        main = REPO_ROOT / "tests" / f"requirements-{name}.txt"
    else:
        main = TOOLS_DIR / name / "requirements.txt"
    if not main.is_file():
        raise EnvError(f"no pins for environment '{name}' ({main} missing; valid: {', '.join(known_envs())})")
    build = main.parent / "requirements-build.txt" if main.name == "requirements.txt" else None
    return main, build if build and build.is_file() else None


def lock_file(name: str) -> Path:
    """The environment's lock: beside its main requirements file, same stem, ``.lock``."""
    main, _ = requirement_files(name)
    return main.with_suffix(".lock")


def _included(path: Path) -> list[Path]:
    """``path`` and every file it pulls in with ``-r``, depth first."""
    files = [path]
    for line in path.read_text().splitlines():
        m = re.match(r"\s*-r\s+(\S+)", line)
        if m:
            files.extend(_included((path.parent / m.group(1)).resolve()))
    return files


def python_version(name: str) -> str:
    main, _ = requirement_files(name)
    for f in _included(main):
        m = re.match(r"#\s*python:\s*(\d+\.\d+)", f.read_text())
        if m:
            return m.group(1)
    raise EnvError(f"{main}: first line must be '# python: X.Y'")


def unpack_file(name: str) -> Path | None:
    """``tools/<model>/requirements-unpack.txt`` when the tool has one: sdists whose package is used
    unpacked because ``pip install`` cannot build them (detectron2-cdo: its C++ sources are missing)."""
    main, _ = requirement_files(name)
    path = main.parent / "requirements-unpack.txt"
    return path if main.name == "requirements.txt" and path.is_file() else None


#: ``# unpack: <name>==<version> sha256=<hex> package=<top-level package>`` in requirements-unpack.txt
UNPACK_LINE = re.compile(r"^#\s*unpack:\s*(\S+==\S+)\s+sha256=([0-9a-f]{64})\s+package=(\w+)\s*$", re.M)


def unpack_sources(python: str, unpack: Path) -> None:
    """Download each ``unpack:`` sdist with pip (no build), check its sha256, and copy only its
    ``package/`` folder into ``python``'s site-packages (regular files and folders, nothing outside it)."""
    import tarfile
    import tempfile

    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    for requirement, sha256, package in UNPACK_LINE.findall(unpack.read_text()):
        with tempfile.TemporaryDirectory() as tmp:
            _run([python, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps", "--no-binary",
                  ":all:", "--no-build-isolation", "-d", tmp, requirement])
            (sdist,) = Path(tmp).iterdir()
            got = hashlib.sha256(sdist.read_bytes()).hexdigest()
            if got != sha256:
                raise EnvError(f"checksum mismatch for {sdist.name} ({unpack}): expected {sha256}, got {got}")
            with tarfile.open(sdist) as tar:
                members = []
                for member in tar.getmembers():
                    parts = member.name.split("/")
                    wanted = len(parts) > 1 and parts[1] == package and ".." not in parts
                    if wanted and (member.isfile() or member.isdir()):
                        member.name = "/".join(parts[1:])
                        members.append(member)
                shutil.rmtree(Path(site) / package, ignore_errors=True)
                tar.extractall(site, members)
        print(f"unpacked {package}/ of {requirement} (sha256 {sha256[:12]}...) into {site}", file=sys.stderr)


def build_env_vars(build_file: Path | None) -> dict[str, str]:
    if not build_file:
        return {}
    return dict(re.findall(r"^#\s*env:\s*(\w+)=(\S+)", build_file.read_text(), flags=re.M))


def pins_hash(name: str) -> str:
    main, build = requirement_files(name)
    lock = lock_file(name)
    h = hashlib.sha256(f"builder={BUILDER_VERSION};python={python_version(name)};".encode())
    extra = [p for p in (build, lock if lock.is_file() else None, unpack_file(name)) if p]
    for f in _included(main) + extra:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def cache_root() -> Path:
    base = os.environ.get("ASCEND_VISION_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ascend-vision")
    return Path(base)


def venv_dir(name: str) -> Path:
    return cache_root() / "venvs" / f"{name}-{pins_hash(name)}"


def find_python(version: str) -> str:
    """A working interpreter for ``version``: pyenv's versions folder, else python<ver> on PATH.

    A pyenv shim on PATH exists for every installed version but fails unless that version is
    active, so each candidate is tried before it is used.
    """
    pyenv_root = Path(os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv")))
    candidates = [str(p) for p in sorted(pyenv_root.glob(f"versions/{version}.*/bin/python{version}"),
                                         reverse=True)]
    on_path = shutil.which(f"python{version}")
    if on_path:
        candidates.append(on_path)
    for exe in candidates:
        if subprocess.run([exe, "-c", "import venv"], capture_output=True).returncode == 0:
            return exe
    raise EnvError(f"Python {version} not found: install it (e.g. `pyenv install {version}`) and rerun")


def _run(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    """Run an install step with its output on stderr: stdout of ``ensure`` is only the interpreter
    path, so ``$(python3 -m common.envs ensure fcos) -m ...`` works on a machine that must build first."""
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    sys.stderr.flush()
    proc = subprocess.run(cmd, env={**os.environ, **(env or {})}, cwd=cwd, stdout=sys.stderr.fileno())
    if proc.returncode != 0:
        raise EnvError(f"command failed with exit code {proc.returncode}: {' '.join(cmd)}")


def install(name: str, python: str) -> None:
    """The install steps, shared by the venv runner and the Dockerfiles."""
    main, build = requirement_files(name)
    lock = lock_file(name)
    stale = check_lock(name)
    if stale:  # before pip runs: its own conflict message would not say how to fix it
        raise EnvError(f"{lock} is out of date ({'; '.join(stale)}): run `python3 -m common.envs lock {name}`")
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    _run(pip + ["-U", *BOOTSTRAP])
    if lock.is_file():
        pip += ["-c", str(lock)]
    _run(pip + ["-r", str(main)], cwd=main.parent)
    if build:
        _run(pip + ["--no-build-isolation", "-r", str(build)], env=build_env_vars(build), cwd=build.parent)
    unpack = unpack_file(name)
    if unpack:
        unpack_sources(python, unpack)


def ensure(name: str) -> Path:
    """Build the venv for ``name`` unless a complete one with the same pins exists."""
    venv = venv_dir(name)
    marker = venv / ".complete"
    if marker.exists():
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent build of the same pins waits here
        if marker.exists():
            return venv
        if venv.exists():
            print(f"removing incomplete environment {venv}", file=sys.stderr)
            shutil.rmtree(venv)
        _run([find_python(python_version(name)), "-m", "venv", str(venv)])
        install(name, str(venv / "bin" / "python"))
        marker.write_text(pins_hash(name) + "\n")
    return venv


def known_envs() -> list[str]:
    """Every environment with pins in this checkout: base, the tools, the test-only ones."""
    tools = sorted(p.parent.name for p in TOOLS_DIR.glob("*/requirements.txt"))
    tests = sorted(p.stem[len("requirements-"):] for p in (REPO_ROOT / "tests").glob("requirements-*.txt"))
    return ["base", *tools, *tests]


def stale_venvs() -> list[Path]:
    """Cached environments of known names whose pins hash is not this checkout's (old pins)."""
    names = known_envs()
    current = {venv_dir(name).name for name in names}
    stale = []
    for venv in sorted((cache_root() / "venvs").glob("*-*")):
        name, _, digest = venv.name.rpartition("-")
        if venv.is_dir() and name in names and re.fullmatch(r"[0-9a-f]{12}", digest) and venv.name not in current:
            stale.append(venv)
    return stale


def write_lock(name: str) -> Path:
    """Freeze ``name``'s environment as resolved from its requirements alone into its lock file.

    The environment is built without the old lock (a cached lock-free one is reused), so a pin
    change resolves afresh. The lock is part of the pins hash: the next ``ensure`` builds from
    the lock itself, so what was frozen is what every runner installs.
    """
    lock = lock_file(name)
    old = lock.read_bytes() if lock.is_file() else None
    lock.unlink(missing_ok=True)
    try:
        venv = ensure(name)
        frozen = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze", "--disable-pip-version-check"],
                                capture_output=True, text=True)
        if frozen.returncode != 0:
            raise EnvError(f"pip freeze failed in {venv}: {frozen.stderr.strip()}")
    except BaseException:
        if old is not None:
            lock.write_bytes(old)
        raise
    lines = sorted((ln for ln in frozen.stdout.splitlines() if "==" in ln), key=str.lower)
    header = (f"# {lock.name}: every package of the '{name}' environment (Python {python_version(name)}), used as pip\n"
              f"# constraints by the venv runner and the images. Generated by `python3 -m common.envs lock {name}`;\n"
              "# regenerate it after changing the requirements files. Do not edit.\n")
    tmp = lock.with_name(lock.name + ".tmp")
    tmp.write_text(header + "\n".join(lines) + "\n")
    tmp.replace(lock)
    return lock


def check_lock(name: str) -> list[str]:
    """Top-level pins that disagree with the lock (empty when consistent or when there is no lock)."""
    lock = lock_file(name)
    if not lock.is_file():
        return []
    locked = dict(_exact_pins(lock))
    main, build = requirement_files(name)
    problems = []
    for f in _included(main) + ([build] if build else []):
        for pkg, version in _exact_pins(f):
            if pkg not in locked and pkg not in UNFROZEN:
                problems.append(f"{f.name}: {pkg}=={version} is not in {lock.name}")
            elif pkg in locked and locked[pkg] != version:
                problems.append(f"{f.name}: {pkg}=={version} but {lock.name} has {locked[pkg]}")
    return problems


def tool_envs() -> list[str]:
    """The tools (tools/<m>/model.toml) that have an environment: each has its test suite tests/<m>."""
    return sorted(p.parent.name for p in TOOLS_DIR.glob("*/requirements.txt") if (p.parent / "model.toml").is_file())


def tool_library(name: str) -> str:
    """The upstream library a tool wraps: the first ``name==version`` pin of its own requirements.txt
    (not the base pins it includes). Its presence tells that the tool's environment is running."""
    main, _ = requirement_files(name)
    pins = _exact_pins(main)
    if not pins:
        raise EnvError(f"{main} pins no package: put the tool's library (e.g. effdet==0.2.4) first")
    return pins[0][0]


def _exact_pins(path: Path) -> list[tuple[str, str]]:
    """(normalised name, version) of every ``name==version`` line."""
    pins = []
    for line in path.read_text().splitlines():
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)", line)
        if m:
            pins.append((re.sub(r"[-_.]+", "-", m.group(1)).lower(), m.group(2)))
    return pins


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m common.envs", description=__doc__.split("\n")[0])
    actions = ["ensure", "path", "python", "hash", "python-version", "install", "lock", "prune"]
    parser.add_argument("action", choices=actions)
    parser.add_argument("name", nargs="?", help="base, a tool name, or a test environment (not for prune)")
    args = parser.parse_args(argv)
    if args.action == "prune":
        for venv in stale_venvs():  # other clones on older pins rebuild theirs on their next run
            print(f"removing {venv}")
            shutil.rmtree(venv)
        return 0
    if not args.name:
        parser.error(f"{args.action} needs an environment name (one of: {', '.join(known_envs())})")
    try:
        if args.action == "ensure":
            print(ensure(args.name) / "bin" / "python")
        elif args.action == "path":
            print(venv_dir(args.name))
        elif args.action == "python":
            print(venv_dir(args.name) / "bin" / "python")
        elif args.action == "hash":
            print(pins_hash(args.name))
        elif args.action == "python-version":
            print(python_version(args.name))
        elif args.action == "lock":
            print(write_lock(args.name))
        else:  # install into the running interpreter (Docker images)
            install(args.name, sys.executable)
    except EnvError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
