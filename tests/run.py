#!/usr/bin/env python3
"""`make test`: run each test suite in the environment it belongs to.

tests/common (and the project-level tests) run in the ``base`` environment; tests/<model> run
in that tool's environment. Environments are built once per machine from the pins and reused
(common/envs.py). Exit status is non-zero if any suite fails or collects no tests.

On a cold machine the environments that compile (mmcv-full for FCOS and PSPNet, about 18 min on
2 cores) would dominate if built one after another; so every missing environment starts building
at once in background processes (logs in files), the compiling ones first and one after another
(the second reuses the first one's mmcv-full wheel from pip's cache), while the suites whose
environments are ready run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common import envs  # noqa: E402  (stdlib-only module, runs on the host interpreter)


def declared_suites() -> list[tuple[str, list[str]]]:
    """The shared suites, then ``tests/<m>`` for every tool with an environment (tools/<m>/model.toml
    and requirements.txt): a new tool folder is tested without editing this file."""
    return [("base", ["tests/common", "tests/project"]), ("common-py312", ["tests/common"])] + [
        (m, [f"tests/{m}"]) for m in envs.tool_envs()]


SUITES = declared_suites()
#: with --until, a suite is only started when at least this much of the budget is left
MIN_SUITE_S = 120
LOG_TAIL = 25  # lines of a failed build's log shown with its error


def is_ready(env: str) -> bool:
    """A complete environment for the current pins (what envs.ensure would return at once)."""
    return (envs.venv_dir(env) / ".complete").exists()


def compiles(env: str) -> bool:
    """An environment with a requirements-build.txt builds packages from source (slow)."""
    return envs.requirement_files(env)[1] is not None


def build_chains(missing: list[str], slow: Callable[[str], bool] = compiles) -> list[list[str]]:
    """Environments to build, as chains that run side by side; each chain builds in order.

    The compiling environments form the first chain (started first, slowest): built one after
    another, the later ones reuse the wheels the first compiled. The rest form a second chain
    in suite order, so the base suite can start as soon as possible.
    """
    heavy = [e for e in missing if slow(e)]
    light = [e for e in missing if e not in heavy]
    return [chain for chain in (heavy, light) if chain]


def ensure_command(env: str) -> list[str]:
    return [sys.executable, "-m", "common.envs", "ensure", env]


@dataclass
class Build:
    env: str
    log: Path
    started: float | None = None
    finished: float | None = None
    returncode: int | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-LOG_TAIL:])


class BackgroundBuilds:
    """Build chains of environments in background processes, each chain in order."""

    def __init__(self, chains: list[list[str]], log_dir: Path,
                 command: Callable[[str], list[str]] = ensure_command) -> None:
        self.chains = chains
        self.command = command
        self.builds = {env: Build(env, log_dir / f"{env}.log") for chain in chains for env in chain}
        self.changed = threading.Condition()
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        for chain in self.chains:
            threading.Thread(target=self._run_chain, args=(chain,), daemon=True).start()

    def _run_chain(self, chain: list[str]) -> None:
        for env in chain:
            build = self.builds[env]
            build.started = time.monotonic()
            try:
                with open(build.log, "wb") as log:
                    build.returncode = subprocess.run(self.command(env), cwd=REPO, stdout=log,
                                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
            except OSError as err:
                build.returncode = 127
                build.log.write_text(f"cannot start the build: {err}\n")
            build.finished = time.monotonic()
            with self.changed:
                build.done.set()
                self.changed.notify_all()

    def building(self, env: str) -> bool:
        return env in self.builds and not self.builds[env].done.is_set()

    def wait_for_any(self, envs_: list[str], timeout: float = 30.0) -> None:
        """Block until one of ``envs_`` has finished building (or ``timeout``)."""
        with self.changed:
            if all(self.building(e) for e in envs_):
                self.changed.wait(timeout)

    def describe(self) -> str:
        """``fcos (building 3 min, log ...); pspnet (waiting)``: what is still going on."""
        now = time.monotonic()
        parts = []
        for build in self.builds.values():
            if build.done.is_set():
                continue
            state = f"building {(now - build.started) / 60:.0f} min" if build.started else "queued"
            parts.append(f"{build.env} ({state}, log {build.log})")
        return "; ".join(parts)


#: one suite's output at a time on the console when suites run side by side
_PRINT_LOCK = threading.RLock()


def _say(*args, **kwargs) -> None:
    """``print`` under the console lock: lines from the scheduler and the suites' threads never run together."""
    with _PRINT_LOCK:
        print(*args, **kwargs)


def run_suites(suites: list[tuple[str, list[str]]], builds: BackgroundBuilds,
               run_suite: Callable[[str, list[str]], int], jobs: int = 1) -> list[str]:
    """Run each suite as soon as its environment is ready, in list order among the ready ones, ``jobs`` at a
    time (each suite is its own pytest process; the runner prints a parallel suite's output when it ends).

    Returns the failed suites' environments: a failed build fails its suite, with the log tail.
    """
    failed: list[str] = []
    pending = list(suites)
    running: dict[Future, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        while pending or running:
            suite = next((s for s in pending if not builds.building(s[0])), None)
            if suite is None or len(running) >= max(1, jobs):
                if running:
                    done, _ = wait(running, timeout=None if suite is not None else 30.0, return_when=FIRST_COMPLETED)
                    for future in done:
                        if future.result() != 0:
                            failed.append(running[future])
                        del running[future]
                else:
                    builds.wait_for_any([env for env, _ in pending])
                continue
            pending.remove(suite)
            env, paths = suite
            build = builds.builds.get(env)
            if build is not None and build.returncode != 0:
                _say(f"\nerror: building the {env} environment failed (exit {build.returncode}; full log: "
                      f"{build.log}); its suite did not run\n{build.tail()}", file=sys.stderr, flush=True)
                failed.append(env)
                continue
            if build is not None:
                _say(f"\n=== {env}: environment built in {(build.finished - build.started) / 60:.1f} min", flush=True)
            still = builds.describe()
            if still:
                _say(f"=== still building in the background: {still}", flush=True)
            running[pool.submit(run_suite, env, paths)] = env
    order = [env for env, _ in suites]
    return sorted(failed, key=order.index)


def pytest_runner(args: argparse.Namespace) -> Callable[[str, list[str]], int]:
    def run_suite(env: str, paths: list[str]) -> int:
        try:
            python = envs.ensure(env) / "bin" / "python"
        except envs.EnvError as err:
            _say(f"error: {err}", file=sys.stderr)
            return 1
        _say(f"=== {env}: pytest {' '.join(paths)}", flush=True)
        cmd = [str(python), "-m", "pytest", *paths, "-q", "-rfEs", "-p", "no:cacheprovider"]
        if args.slow_only:
            cmd += ["-m", "slow"]
        elif not args.slow:
            cmd += ["-m", "not slow"]
        left = None if args.until is None else args.until - time.time()
        if left is not None and left < MIN_SUITE_S:
            _say(f"=== {env}: not run, {max(left, 0) / 60:.1f} min of the budget left (--until)", flush=True)
            return 0
        if args.jobs <= 1:  # straight to the console, as it happens
            try:
                rc = subprocess.run(cmd + args.pytest_args, cwd=REPO, timeout=left).returncode
            except subprocess.TimeoutExpired:
                rc = None
        else:  # side by side with another suite: into a log, printed whole when the suite ends
            log = envs.cache_root() / "test-logs" / f"{env}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "wb") as out:
                try:
                    rc = subprocess.run(cmd + args.pytest_args, cwd=REPO, timeout=left, stdout=out,
                                        stderr=subprocess.STDOUT).returncode
                except subprocess.TimeoutExpired:
                    rc = None
            with _PRINT_LOCK:
                print(f"\n=== {env}: output (also in {log})", flush=True)
                sys.stdout.write(log.read_text(errors="replace"))
                sys.stdout.flush()
        if rc is None:
            _say(f"=== {env}: stopped at the budget's end (--until): its remaining tests did not run", flush=True)
            return 0
        return 0 if rc == 5 and args.slow_only else rc  # a suite without slow tests is fine in the slow tier
    return run_suite


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slow", action="store_true", help="include tests marked slow")
    parser.add_argument("--slow-only", action="store_true", help="run only the tests marked slow")
    parser.add_argument("--only", action="append", help="run only these suites: repeat it or separate names with "
                        "commas, e.g. --only base,fcos")
    parser.add_argument("--list", action="store_true", help="print each suite (environment: paths) and exit")
    parser.add_argument("--until", type=float, help="epoch seconds: suites not finished by then are stopped and "
                        "reported as not run, without failing (CI's optional slow tier)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="suites run side by side (default: 2 on a machine with 2 or more cores; 1: one "
                             "after another, output as it happens)")
    parser.add_argument("pytest_args", nargs="*", help="extra arguments for pytest")
    args = parser.parse_args()
    start = time.monotonic()
    only = [name for value in args.only or [] for name in value.split(",") if name]
    unknown = [name for name in only if name not in dict(SUITES)]
    if unknown:
        print(f"error: no test suite named {', '.join(unknown)}: choose from {', '.join(env for env, _ in SUITES)}",
              file=sys.stderr)
        return 2
    suites = [(env, [p for p in paths if (REPO / p).exists()]) for env, paths in SUITES
              if not only or env in only]
    if args.list:
        for env, paths in suites:
            print(f"{env}: {' '.join(paths) or '(no tests yet)'}")
        return 0
    suites = [(env, paths) for env, paths in suites if paths]  # a tool without tests builds nothing
    missing = list(dict.fromkeys(env for env, _ in suites if not is_ready(env)))
    builds = BackgroundBuilds(build_chains(missing), envs.cache_root() / "build-logs")
    if missing:
        print("building environments in the background (compiling ones first, one after another): "
              + "; ".join(" then ".join(chain) for chain in builds.chains)
              + f"\n  logs: {envs.cache_root() / 'build-logs'}", flush=True)
    builds.start()
    failed = run_suites(suites, builds, pytest_runner(args), jobs=args.jobs)
    elapsed = f"{(time.monotonic() - start) / 60:.1f} min"
    if failed:
        print(f"\nFAILED suites: {', '.join(failed)} ({elapsed})", file=sys.stderr)
        return 1
    print(f"\nall suites passed ({elapsed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
