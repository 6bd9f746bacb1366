"""A new tools/<m>/ folder is the whole of adding a model: the Makefile, the test runner and the
README table find it from its model.toml, with no list to edit anywhere else."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
NEW = "zebra"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A copy of the checkout with tools/efficientdet copied to tools/zebra, only its name edited."""
    root = tmp_path_factory.mktemp("scratch") / "repo"
    shutil.copytree(REPO, root, ignore=shutil.ignore_patterns(".git", "out", "__pycache__", ".ruff_cache"))
    shutil.copytree(root / "tools" / "efficientdet", root / "tools" / NEW)
    toml = root / "tools" / NEW / "model.toml"
    text, count = re.subn(r'^name = "efficientdet"$', f'name = "{NEW}"', toml.read_text(), count=1, flags=re.M)
    assert count == 1, "the copied model.toml names its model"
    toml.write_text(text)
    return root


def run(root: Path, *cmd: str) -> str:
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_make_help_lists_the_new_tool_and_its_targets(scratch):
    out = run(scratch, "make", "--no-print-directory", "help")
    assert f"{NEW}-onnx" in out and f"{NEW}-all" in out
    ready = next(line for line in out.splitlines() if "Ready:" in line)
    assert NEW in ready.replace(";", " ").split()


def test_the_test_runner_has_a_suite_for_the_new_tool(scratch):
    suites = dict(line.split(": ", 1) for line in run(scratch, sys.executable, "tests/run.py", "--list").splitlines())
    assert NEW in suites and "efficientdet" in suites
    assert suites["base"] == "tests/common tests/project"


def test_the_readme_table_has_a_row_for_the_new_tool(scratch):
    table = run(scratch, sys.executable, "-m", "common.modeltable")
    rows = [line for line in table.splitlines() if f"`tools/{NEW}` (ready)" in line]
    assert len(rows) == 1
    assert rows[0] == next(line for line in table.splitlines() if "`tools/efficientdet`" in line).replace(
        "`tools/efficientdet`", f"`tools/{NEW}`")


def test_the_copied_tool_runs_as_the_new_model(scratch, tmp_path):
    """Its CLI and its hooks take the folder's name and data file (tool.py and __main__.py unedited):
    the first check past the contract's load, the batch size, already speaks of the new model."""
    proc = subprocess.run([sys.executable, "-m", f"tools.{NEW}", "export", "--out", str(tmp_path / "onnx"),
                           "--batch", "3"], cwd=scratch, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    valid = ", ".join(map(str, load_spec(scratch / "tools" / NEW / "model.toml").input.batch_sizes))
    assert proc.stderr.strip().splitlines()[-1] == f"error: BATCH=3 is not supported by {NEW} (valid: {valid})"
