"""`make test` on a cold machine: slow environment builds start first and overlap the other suites.

The builds here are real background processes (shell scripts standing in for `common.envs ensure`)
that log when they start and end; the suites are recorded as they run.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests import run

SUITES = [("base", ["tests/common"]), ("efficientdet", ["tests/efficientdet"]), ("fcos", ["tests/fcos"]),
          ("pspnet", ["tests/pspnet"])]


def test_compiling_environments_are_one_chain_started_first():
    slow = {"fcos", "pspnet"}.__contains__
    assert run.build_chains(["base", "fcos", "efficientdet", "pspnet"], slow=slow) == [
        ["fcos", "pspnet"], ["base", "efficientdet"]]
    assert run.build_chains(["base"], slow=slow) == [["base"]]


def test_the_pins_say_which_environments_compile():
    assert run.compiles("fcos") and run.compiles("pspnet")  # mmcv-full from source
    assert not run.compiles("base") and not run.compiles("efficientdet")


def fake_builds(tmp_path: Path, seconds: dict[str, float], fail: set[str] = frozenset()) -> run.BackgroundBuilds:
    events = tmp_path / "events.log"

    def command(env: str) -> list[str]:
        rc = 1 if env in fail else 0
        return ["sh", "-c", f'echo "start {env}" >> {events}; sleep {seconds[env]}; echo "compiling {env}: '
                            f'error: mmcv ops failed"; echo "end {env}" >> {events}; exit {rc}']

    chains = run.build_chains(list(seconds), slow={"fcos", "pspnet"}.__contains__)
    return run.BackgroundBuilds(chains, tmp_path / "logs", command=command)


def test_suites_run_while_slow_builds_go_on_and_the_second_compile_waits_for_the_first(tmp_path):
    builds = fake_builds(tmp_path, {"fcos": 1.5, "pspnet": 0.3, "base": 0.1, "efficientdet": 0.1})
    ran: list[tuple[str, float]] = []
    start = time.monotonic()

    def suite(env, paths):
        ran.append((env, time.monotonic() - start))
        return 0

    builds.start()
    assert run.run_suites(SUITES, builds, suite) == []
    assert [env for env, _ in ran] == ["base", "efficientdet", "fcos", "pspnet"]
    fcos_done = builds.builds["fcos"].finished - start
    assert ran[0][1] < fcos_done and ran[1][1] < fcos_done  # base and effdet did not wait for mmcv-full
    events = (tmp_path / "events.log").read_text().splitlines()
    assert events.index("start pspnet") > events.index("end fcos")  # reuses fcos's mmcv-full wheel
    assert events.index("start base") < events.index("end fcos")  # overlapping
    assert "compiling fcos" in (tmp_path / "logs" / "fcos.log").read_text()  # the log is a file


def test_a_failed_build_fails_its_suite_with_the_log_tail(tmp_path, capsys):
    builds = fake_builds(tmp_path, {"fcos": 0.2, "pspnet": 0.1, "base": 0.1, "efficientdet": 0.1}, fail={"fcos"})
    ran = []
    builds.start()
    failed = run.run_suites(SUITES, builds, lambda env, paths: ran.append(env) or 0)
    assert failed == ["fcos"] and "fcos" not in ran and {"base", "efficientdet", "pspnet"} <= set(ran)
    err = capsys.readouterr().err
    assert "error: building the fcos environment failed (exit 1; full log: " in err
    assert "compiling fcos: error: mmcv ops failed" in err  # the tail says why


def test_ready_environments_start_nothing(tmp_path):
    builds = run.BackgroundBuilds([], tmp_path / "logs")
    builds.start()
    ran = []
    assert run.run_suites(SUITES[:2], builds, lambda env, paths: ran.append(env) or 1) == ["base", "efficientdet"]
    assert ran == ["base", "efficientdet"] and builds.describe() == ""


def test_until_stops_the_optional_slow_tier_without_failing_it(tmp_path, monkeypatch):
    """CI's slow tier runs "if time allows": a suite that would start past --until is reported as not run,
    one that runs past it is stopped, and neither turns the run red (a real test failure still does)."""
    import argparse
    import subprocess
    import sys

    slow = tmp_path / "test_slow.py"
    slow.write_text("import time\nimport pytest\n\n@pytest.mark.slow\ndef test_sleeps():\n    time.sleep(60)\n")
    args = argparse.Namespace(slow_only=True, slow=False, pytest_args=[str(slow), "--rootdir", str(tmp_path)],
                              until=time.time() + 3)
    monkeypatch.setattr(run, "MIN_SUITE_S", 1)
    started = time.monotonic()
    assert run.pytest_runner(args)("base", []) == 0  # stopped after ~3 s, not after 60
    assert time.monotonic() - started < 40
    monkeypatch.setattr(run, "MIN_SUITE_S", 120)
    args.until = time.time() + 10  # less than MIN_SUITE_S left: not started at all
    started = time.monotonic()
    assert run.pytest_runner(args)("base", []) == 0 and time.monotonic() - started < 5
    done = subprocess.run([sys.executable, "tests/run.py", "--slow-only", "--only", "base", "--until",
                           str(time.time())], cwd=run.REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "not run" in done.stdout
