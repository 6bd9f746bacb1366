"""Progress as a user meets it: a live bar on a terminal, a few plain lines in a CI log, stdout untouched.

Each case is a real subprocess; "a terminal" is a pseudo-terminal (``pty.openpty``) as its stderr,
so rich's own terminal detection decides, as it does for a person. Torch-free: the real step is
EfficientDet's data step (NumPy + OpenCV), which the base and common-py312 suites both run.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from common.demococo import make_mini_coco
from common.progress import INTERVAL_ENV, StepProgress

REPO = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: a step of ``n`` items at ``pause`` seconds each, printing its result on stdout as the CLI steps do
CHILD = """
import sys, time
from common.progress import StepProgress
n, pause = int(sys.argv[1]), float(sys.argv[2])
with StepProgress("demo", n, "images") as progress:
    for _ in range(n):
        time.sleep(pause)
        progress.advance()
print("result: /out/path")
"""
FINAL = r"demo: {n}/{n} images in \d+:\d\d:\d\d, [\d.]+ images/s"
STATUS = r"demo: \d+/{n} images, [\d.]+ images/s, ETA \d+:\d\d:\d\d"


def child_env(**changes: str | None) -> dict[str, str]:
    """This environment without what would steer rich or the log mode, plus ``changes`` (None: unset)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("CI", INTERVAL_ENV, "FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE",
                        "COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    env.update({k: v for k, v in changes.items() if v is not None})
    return env


def run_step(cmd: list[str], env: dict[str, str], *, tty: bool) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``cmd`` with stdout a pipe and stderr a pipe or a 120-column pty."""
    if not tty:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        return proc.returncode, proc.stdout, proc.stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1.0)[0]:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child and everything it started closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        stdout = proc.stdout.read().decode()
        code = proc.wait(timeout=60)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return code, stdout, b"".join(chunks).decode(errors="replace")


def demo(n: int, pause: float, env: dict[str, str], *, tty: bool) -> tuple[int, str, str]:
    return run_step([sys.executable, "-c", CHILD, str(n), f"{pause}"], env, tty=tty)


def test_a_terminal_gets_a_live_bar_with_count_rate_and_eta():
    code, stdout, stderr = demo(40, 0.05, child_env(), tty=True)
    assert code == 0, stderr
    assert stdout == "result: /out/path\n"  # the bar never leaks into what Make and the tests read
    assert ANSI.search(stderr) and "━" in stderr  # drawn by rich, in colour, on the terminal
    frames = [ANSI.sub("", f) for f in re.split(r"\r", stderr)]
    live = re.compile(r"demo +[━╸╺]+ +(\d+)/40 +[\d.]+ images/s +\d+:\d\d:\d\d +ETA +(\d+:\d\d:\d\d)")
    found = [m for m in map(live.search, frames) if m]
    assert len(found) > 2, stderr  # redrawn while it runs, not printed once
    midway = [m for m in found if int(m.group(1)) < 40]
    assert midway and any(m.group(2) != "0:00:00" for m in midway), frames  # an ETA while work remains
    assert found[-1].group(1) == "40"


NESTED = """
from common.progress import StepProgress
with StepProgress("perf", 3, "batch sizes") as sizes:
    for _ in range(3):
        with StepProgress("inference", 4, "batches") as batches:
            for _ in range(4):
                batches.advance()
        sizes.advance()
print("table")
"""
SHARD_MODULE = """
import time
from common.progress import StepProgress

def work(shard):
    with StepProgress(f"shard {shard}", 20, "batches") as progress:
        for _ in range(20):
            time.sleep(0.01)
            progress.advance()
    return shard
"""
SHARDS = """
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from shardstep import work
with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
    print(list(pool.map(work, [0, 1])))
"""


def test_a_step_inside_a_step_is_a_second_row_of_the_same_terminal_display():
    """rich draws one live display at a time: perf's per-size inference must not start a second one."""
    code, stdout, stderr = run_step([sys.executable, "-c", NESTED], child_env(), tty=True)
    assert code == 0 and "Traceback" not in stderr, stderr
    assert stdout == "table\n"
    assert re.search(r"perf +━+ +3/3 ", ANSI.sub("", stderr)), stderr


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_nested_step_draws_in_the_outer_display_and_leaves_it_when_done(monkeypatch):
    """Two rich displays on one terminal overwrite each other's lines: the inner step is a row of the outer."""
    monkeypatch.delenv("CI", raising=False)
    terminal = FakeTerminal()
    with StepProgress("perf", 2, "batch sizes", stream=terminal) as outer:
        with StepProgress("inference", 4, "batches", stream=terminal) as inner:
            inner.advance(4)
            assert [t.description for t in outer._progress.tasks] == ["perf", "inference"]
        assert [t.description for t in outer._progress.tasks] == ["perf"]
        outer.advance(2)
    with StepProgress("next step", 1, stream=terminal) as later:  # the display ended with its owner
        assert later._progress is not outer._progress


def test_shard_processes_on_one_terminal_write_lines_not_competing_bars(tmp_path):
    """DEVICE=0,1 runs a process per shard, all on the user's terminal: each writes plain lines."""
    (tmp_path / "shardstep.py").write_text(SHARD_MODULE)
    env = child_env(PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    code, stdout, stderr = run_step([sys.executable, "-c", SHARDS], env, tty=True)
    assert code == 0, stderr
    assert stdout == "[0, 1]\n"
    assert "\x1b" not in stderr, repr(stderr)
    lines = stderr.replace("\r\n", "\n").splitlines()
    for shard in (0, 1):
        assert any(re.fullmatch(rf"shard {shard}: 20/20 batches in \d+:\d\d:\d\d, [\d.]+ batches/s", x)
                   for x in lines), lines


@pytest.mark.parametrize("tty, ci", [(False, None), (False, "true"), (True, "true")],
                         ids=["pipe", "pipe-CI", "terminal-CI"])
def test_a_log_gets_a_plain_line_per_interval_and_a_final_line(tty, ci):
    """2000 items in ~2.5 s at one line per 0.25 s: about 10 lines, not 2000, and no control codes."""
    start = time.monotonic()
    code, stdout, stderr = demo(2000, 0.001, child_env(CI=ci, **{INTERVAL_ENV: "0.25"}), tty=tty)
    wall = time.monotonic() - start
    assert code == 0, stderr
    assert stdout.replace("\r\n", "\n") == "result: /out/path\n"
    text = stderr.replace("\r\n", "\n")  # a terminal's own line ending
    assert "\x1b" not in text and "\r" not in text, repr(stderr[:300])
    lines = text.splitlines()
    assert re.fullmatch(FINAL.format(n=2000), lines[-1]), lines
    assert all(re.fullmatch(STATUS.format(n=2000), line) for line in lines[:-1]), lines
    assert 3 <= len(lines) <= wall / 0.25 + 1, (wall, lines)


def test_a_short_step_in_a_log_prints_only_its_final_line():
    code, _, stderr = demo(300, 0.0, child_env(CI="true"), tty=False)
    assert code == 0, stderr
    assert len(stderr.splitlines()) == 1 and re.fullmatch(FINAL.format(n=300), stderr.strip()), stderr


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_mini_coco(tmp_path_factory.mktemp("progress") / "coco", n_images=5, seed=3)


def data_step(coco: Path, out: Path, env: dict[str, str], *, tty: bool) -> tuple[int, str, str]:
    return run_step([sys.executable, "-m", "tools.efficientdet", "data", "--data", str(coco), "--out", str(out),
                     "--workers", "1"], env, tty=tty)


def test_the_data_step_on_a_terminal_and_in_ci_prints_the_same_stdout(coco, tmp_path):
    code, stdout, stderr = data_step(coco, tmp_path / "tty", child_env(), tty=True)
    assert code == 0, stderr
    assert stdout == f"5 tensors in {tmp_path / 'tty'}\n"
    plain = ANSI.sub("", stderr)
    assert re.search(r"efficientdet preprocess +━+ +5/5 +[\d.]+ images/s +\d+:\d\d:\d\d +ETA", plain), plain

    code, stdout, stderr = data_step(coco, tmp_path / "ci", child_env(CI="true"), tty=False)
    assert code == 0, stderr
    assert stdout == f"5 tensors in {tmp_path / 'ci'}\n"
    assert "\x1b" not in stderr and "\r" not in stderr
    assert re.fullmatch(r"efficientdet preprocess: 5/5 images in \d+:\d\d:\d\d, [\d.]+ images/s",
                        stderr.splitlines()[-1]), stderr


def test_a_failing_step_ends_with_its_error_not_a_progress_line(coco, tmp_path):
    broken = tmp_path / "coco"
    (broken / "val2017").mkdir(parents=True)
    (broken / "annotations").symlink_to(coco / "annotations")
    images = sorted((coco / "val2017").iterdir())
    for image in images:
        (broken / "val2017" / image.name).symlink_to(image)
    (broken / "val2017" / images[2].name).unlink()
    (broken / "val2017" / images[2].name).write_bytes(b"\xff\xd8 not a jpeg")
    code, _, stderr = data_step(broken, tmp_path / "prep", child_env(CI="true"), tty=False)
    assert code == 2, stderr
    assert stderr.splitlines()[-1].startswith(f"error: image {broken / 'val2017' / images[2].name}"), stderr
    assert not re.search(r"preprocess: \d+/5 images in ", stderr), stderr  # no success line after a failure


def test_a_bad_interval_is_one_error_line(coco, tmp_path):
    code, stdout, stderr = data_step(coco, tmp_path / "prep", child_env(**{INTERVAL_ENV: "soon"}), tty=False)
    assert code == 2 and "Traceback" not in stderr and stdout == "", stderr
    assert stderr.strip() == f"error: {INTERVAL_ENV}='soon' is invalid: give the seconds between progress lines " \
                             f"in a log, e.g. {INTERVAL_ENV}=15, or unset it"


AIS_BENCH_LIKE = r"""
import sys, time
for i in range(300):
    sys.stdout.write(f"\rInference array Processing: {i * 100 // 300}%|{i}/300")
    sys.stdout.flush()
    time.sleep(0.005)
sys.stdout.write("\rInference array Processing: 100%|300/300\n[INFO] ------ Performance Summary ------\n")
"""


def test_ais_bench_s_own_bar_is_echoed_once_per_interval_with_its_final_state(monkeypatch, capsys):
    """The ais_bench CLI's tqdm redraws with \\r many times a second; each used to become a line of the log."""
    from common.backends.ais_bench_backend import _stream

    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv(INTERVAL_ENV, "0.25")
    start = time.monotonic()
    code, kept = _stream([sys.executable, "-c", AIS_BENCH_LIKE])
    wall = time.monotonic() - start
    lines = capsys.readouterr().err.splitlines()
    assert code == 0 and lines == kept
    assert lines[-2:] == ["Inference array Processing: 100%|300/300",
                          "[INFO] ------ Performance Summary ------"]
    redraws = lines[:-2]
    assert 2 <= len(redraws) <= wall / 0.25 + 1, (wall, lines)
    assert all(re.fullmatch(r"Inference array Processing: \d+%\|\d+/300", line) for line in redraws), lines

