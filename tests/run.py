#!/usr/bin/env python3
"""`make test`: run each test suite in the environment it belongs to.

tests/common (and the project-level tests) run in the ``base`` environment; tests/<model> run
in that tool's environment. Environments are built once per machine from the pins and reused
(common/envs.py). Exit status is non-zero if any suite fails or collects no tests.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common import envs  # noqa: E402  (stdlib-only module, runs on the host interpreter)

SUITES = [("base", ["tests/common", "tests/project"]), ("common-py312", ["tests/common"])] + [
    (m, [f"tests/{m}"]) for m in ("efficientdet", "fcos", "pspnet")
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slow", action="store_true", help="include tests marked slow")
    parser.add_argument("--slow-only", action="store_true", help="run only the tests marked slow")
    parser.add_argument("--only", action="append", help="run only these suites, e.g. base")
    parser.add_argument("pytest_args", nargs="*", help="extra arguments for pytest")
    args = parser.parse_args()
    failed = []
    for env, paths in SUITES:
        if args.only and env not in args.only:
            continue
        paths = [p for p in paths if (REPO / p).exists()]
        start = time.monotonic()
        try:
            python = envs.ensure(env) / "bin" / "python"
        except envs.EnvError as err:
            print(f"error: {err}", file=sys.stderr)
            failed.append(env)
            continue
        print(f"\n=== {env}: environment ready in {time.monotonic() - start:.0f}s; pytest {' '.join(paths)}",
              flush=True)
        cmd = [str(python), "-m", "pytest", *paths, "-q", "-rfEs", "-p", "no:cacheprovider"]
        if args.slow_only:
            cmd += ["-m", "slow"]
        elif not args.slow:
            cmd += ["-m", "not slow"]
        rc = subprocess.run(cmd + args.pytest_args, cwd=REPO).returncode
        if rc == 5 and args.slow_only:
            continue  # a suite without slow tests is fine in the slow tier
        if rc != 0:  # includes 5 = no tests collected
            failed.append(env)
    if failed:
        print(f"\nFAILED suites: {', '.join(failed)}", file=sys.stderr)
        return 1
    print("\nall suites passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
