"""`make test` on a cold machine: slow environment builds start first and overlap the other suites.

The builds here are real background processes (shell scripts standing in for `common.envs ensure`)
that log when they start and end; the suites are recorded as they run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests import run

#: stand-in environments for the scheduler: mm_a and mm_b compile (as mmcv-full tools do), plain does not
SUITES = [("base", ["tests/common"]), ("plain", ["tests/plain"]), ("mm_a", ["tests/mm_a"]),
          ("mm_b", ["tests/mm_b"])]


def test_compiling_environments_are_one_chain_started_first():
    slow = {"mm_a", "mm_b"}.__contains__
    assert run.build_chains(["base", "mm_a", "plain", "mm_b"], slow=slow) == [
        ["mm_a", "mm_b"], ["base", "plain"]]
    assert run.build_chains(["base"], slow=slow) == [["base"]]


def test_the_pins_say_which_environments_compile():
    from common import envs

    for env in envs.tool_envs():  # a requirements-build.txt (mmcv-full from source) is what compiles
        assert run.compiles(env) == (envs.TOOLS_DIR / env / "requirements-build.txt").is_file(), env
    assert not run.compiles("base") and any(run.compiles(env) for env in envs.tool_envs())


def fake_builds(tmp_path: Path, seconds: dict[str, float], fail: set[str] = frozenset()) -> run.BackgroundBuilds:
    events = tmp_path / "events.log"

    def command(env: str) -> list[str]:
        rc = 1 if env in fail else 0
        return ["sh", "-c", f'echo "start {env}" >> {events}; sleep {seconds[env]}; echo "compiling {env}: '
                            f'error: mmcv ops failed"; echo "end {env}" >> {events}; exit {rc}']

    chains = run.build_chains(list(seconds), slow={"mm_a", "mm_b"}.__contains__)
    return run.BackgroundBuilds(chains, tmp_path / "logs", command=command)


def test_suites_run_while_slow_builds_go_on_and_the_second_compile_waits_for_the_first(tmp_path):
    builds = fake_builds(tmp_path, {"mm_a": 1.5, "mm_b": 0.3, "base": 0.1, "plain": 0.1})
    ran: list[tuple[str, float]] = []
    start = time.monotonic()

    def suite(env, paths):
        ran.append((env, time.monotonic() - start))
        return 0

    builds.start()
    assert run.run_suites(SUITES, builds, suite) == []
    assert [env for env, _ in ran] == ["base", "plain", "mm_a", "mm_b"]
    mm_a_done = builds.builds["mm_a"].finished - start
    assert ran[0][1] < mm_a_done and ran[1][1] < mm_a_done  # base and plain did not wait for the compile
    events = (tmp_path / "events.log").read_text().splitlines()
    assert events.index("start mm_b") > events.index("end mm_a")  # the second compile reuses the first's wheel
    assert events.index("start base") < events.index("end mm_a")  # overlapping
    assert "compiling mm_a" in (tmp_path / "logs" / "mm_a.log").read_text()  # the log is a file


def test_a_failed_build_fails_its_suite_with_the_log_tail(tmp_path, capsys):
    builds = fake_builds(tmp_path, {"mm_a": 0.2, "mm_b": 0.1, "base": 0.1, "plain": 0.1}, fail={"mm_a"})
    ran = []
    builds.start()
    failed = run.run_suites(SUITES, builds, lambda env, paths: ran.append(env) or 0)
    assert failed == ["mm_a"] and "mm_a" not in ran and {"base", "plain", "mm_b"} <= set(ran)
    err = capsys.readouterr().err
    assert "error: building the mm_a environment failed (exit 1; full log: " in err
    assert "compiling mm_a: error: mmcv ops failed" in err  # the tail says why


def test_ready_environments_start_nothing(tmp_path):
    builds = run.BackgroundBuilds([], tmp_path / "logs")
    builds.start()
    ran = []
    assert run.run_suites(SUITES[:2], builds, lambda env, paths: ran.append(env) or 1) == ["base", "plain"]
    assert ran == ["base", "plain"] and builds.describe() == ""


def test_until_stops_the_optional_slow_tier_without_failing_it(tmp_path, monkeypatch):
    """CI's slow tier runs "if time allows": a suite that would start past --until is reported as not run,
    one that runs past it is stopped, and neither turns the run red (a real test failure still does)."""
    import argparse

    slow = tmp_path / "test_slow.py"
    slow.write_text("import time\nimport pytest\n\n@pytest.mark.slow\ndef test_sleeps():\n    time.sleep(60)\n")
    args = argparse.Namespace(slow_only=True, slow=False, pytest_args=[str(slow), "--rootdir", str(tmp_path)],
                              until=time.time() + 3, jobs=1)
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


def test_two_jobs_run_ready_suites_side_by_side_and_report_failures_in_suite_order(tmp_path):
    builds = run.BackgroundBuilds([], tmp_path / "logs")
    builds.start()
    spans: dict[str, tuple[float, float]] = {}

    def suite(env, paths):
        start = time.monotonic()
        time.sleep(0.6)
        spans[env] = (start, time.monotonic())
        return 1 if env in ("plain", "mm_b") else 0

    started = time.monotonic()
    assert run.run_suites(SUITES, builds, suite, jobs=2) == ["plain", "mm_b"]
    assert set(spans) == {"base", "plain", "mm_a", "mm_b"}
    (b0, b1), (p0, p1) = spans["base"], spans["plain"]
    assert p0 < b1 and b0 < p1  # base and plain overlapped
    assert time.monotonic() - started < 4 * 0.6  # not one after another


def test_a_suite_run_beside_another_prints_its_whole_output_at_its_end(tmp_path, capsys):
    """Side by side, two pytest outputs would interleave line by line: each goes to a log, printed whole."""
    import argparse

    passing = tmp_path / "test_one.py"
    passing.write_text("def test_prints():\n    print('hello from the suite')\n")
    args = argparse.Namespace(slow_only=False, slow=False, until=None, jobs=2,
                              pytest_args=[str(passing), "--rootdir", str(tmp_path), "-s"])
    assert run.pytest_runner(args)("base", []) == 0
    out = capsys.readouterr().out
    header = out.index("=== base: output (also in ")
    assert out.index("hello from the suite") > header and "1 passed" in out[header:]


def test_an_unknown_suite_is_an_error_not_an_empty_pass():
    """``--only fcos,nosuch`` must not report "all suites passed" having run nothing."""
    done = subprocess.run([sys.executable, "tests/run.py", "--only", "fcos,nosuch", "--list"], cwd=run.REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "no test suite named nosuch" in done.stderr and "choose from base" in done.stderr
    listed = subprocess.run([sys.executable, "tests/run.py", "--only", "base,fcos", "--only", "pspnet", "--list"],
                            cwd=run.REPO, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0
    assert [line.split(":")[0] for line in listed.stdout.splitlines()] == ["base", "fcos", "pspnet"]
