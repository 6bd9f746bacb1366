"""The tool contract (common/contract.py) as a newcomer meets it: a copied tool that breaks it is
refused by the real CLI at load, with one ``error:`` line naming what is wrong, and a capability
a tool has not declared in its model.toml is refused instead of guessed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common.contract import REQUIRED_HOOKS, TARGETS, Tool, check_target, load_tool
from common.errors import ToolError
from common.spec import MODELS, Capabilities, load_spec

REPO = Path(__file__).resolve().parents[2]
SOURCE = "efficientdet"  # the ready tool the copies are made from (its module imports no torch at load)


def copy_tool(root: Path, name: str) -> Path:
    """tools/<SOURCE> copied to tools/<name> in the scratch tree ``root``, its model.toml renamed."""
    folder = root / "tools" / name
    shutil.copytree(root / "tools" / SOURCE, folder)
    toml = folder / "model.toml"
    text, count = re.subn(rf'^name = "{SOURCE}"$', f'name = "{name}"', toml.read_text(), count=1, flags=re.M)
    assert count == 1, "the copied model.toml names its model"
    toml.write_text(text)
    return folder


def edit(path: Path, pattern: str, replacement: str) -> None:
    """One regex substitution in ``path`` that must match exactly once (the copy really changed)."""
    text, count = re.subn(pattern, replacement, path.read_text(), flags=re.M | re.S)
    assert count == 1, f"{pattern!r} in {path}"
    path.write_text(text)


def add_capability(toml: Path, line: str) -> None:
    """``line`` as the first entry of the data file's [capabilities] table (made if it has none)."""
    if re.search(r"^\[capabilities\]$", toml.read_text(), re.M):
        edit(toml, r"^\[capabilities\]\n", f"[capabilities]\n{line}\n")
    else:
        edit(toml, r"^\[input\]$", f"[capabilities]\n{line}\n\n[input]")


def without_hook(source: str, hook: str) -> str:
    """The module text without ``hook``: a function's definition removed (up to the next top-level
    one); SPEC, which the module itself reads, renamed to MODEL_SPEC everywhere."""
    if hook == "SPEC":
        text, count = re.subn(r"\bSPEC\b", "MODEL_SPEC", source)
        assert count > 1, hook
        return text
    text, count = re.subn(rf"^def {hook}\(.*?(?=^(?:def |@|class |# ---)|\Z)", "", source, count=1,
                          flags=re.M | re.S)
    assert count == 1, hook
    return text


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A scratch checkout (common/ and tools/) holding broken copies of a ready tool, one per case."""
    root = tmp_path_factory.mktemp("contract") / "repo"
    ignore = shutil.ignore_patterns("__pycache__")
    for part in ("common", "tools"):
        shutil.copytree(REPO / part, root / part, ignore=ignore)
    source = (root / "tools" / SOURCE / "tool.py").read_text()
    for hook in REQUIRED_HOOKS:
        (copy_tool(root, f"no_{hook.lower()}") / "tool.py").write_text(without_hook(source, hook))
    with (copy_tool(root, "dict_spec") / "tool.py").open("a") as module:  # the raw TOML table, not the spec
        module.write("\nSPEC = SPEC.raw\n")
    edit(copy_tool(root, "other_spec") / "tool.py", r"^SPEC = .*?$", f'SPEC = load_spec("{SOURCE}")')
    for name, line in (("odd_caps", "half_precision = true"), ("text_caps", 'dynamic_batch = "yes"')):
        add_capability(copy_tool(root, name) / "model.toml", line)
    return root


def cli(root: Path, model: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"tools.{model}", *args], cwd=root, capture_output=True,
                          text=True, timeout=300)


def export_refused(root: Path, model: str, tmp_path: Path, *extra: str) -> str:
    """Run ``export`` as a user would and return its one error line (exit 2, no traceback, no file)."""
    out = tmp_path / "onnx"
    proc = cli(root, model, "export", "--out", str(out), "--weights", str(tmp_path / "never-read.pth"), *extra)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert not out.exists()
    return errors[0]


@pytest.mark.parametrize("hook", REQUIRED_HOOKS)
def test_a_copied_tool_without_a_required_hook_is_refused_at_load_naming_it(scratch, tmp_path, hook):
    name = f"no_{hook.lower()}"
    assert re.search(rf"^(def {hook}\(|{hook} = )", (scratch / "tools" / SOURCE / "tool.py").read_text(), re.M)
    error = export_refused(scratch, name, tmp_path)
    assert f"tools/{name}/tool.py lacks the required hook '{hook}'" in error
    assert "common/contract.py" in error


def test_a_tool_whose_spec_is_not_its_data_file_is_refused(scratch, tmp_path):
    error = export_refused(scratch, "dict_spec", tmp_path)
    assert "tools/dict_spec/tool.py: SPEC must be the model's data file (common.spec.load_spec), not dict" in error


def test_a_copy_still_reading_the_original_data_file_is_refused(scratch, tmp_path):
    """Otherwise `python -m tools.other_spec` would silently export and evaluate efficientdet."""
    error = export_refused(scratch, "other_spec", tmp_path)
    assert "tools/other_spec/tool.py: SPEC is" in error
    assert f"tools/{SOURCE}/model.toml" in error and "tools/other_spec/model.toml" in error


@pytest.mark.parametrize("name, message", [
    ("odd_caps", "[capabilities] has unknown key(s) half_precision (known: "
                 f"{', '.join(sorted(Capabilities.__dataclass_fields__))})"),
    ("text_caps", "[capabilities] dynamic_batch must be true or false"),
])
def test_capabilities_must_be_known_booleans(scratch, tmp_path, name, message):
    error = export_refused(scratch, name, tmp_path)
    assert message in error and f"tools/{name}/model.toml" in error


def test_an_unchanged_copy_runs_as_the_new_model(scratch, tmp_path):
    """The control for the cases above: the same copy with nothing broken passes the load and the
    contract, and the first check after it (the batch size) speaks of the new model."""
    copy_tool(scratch, "intact")
    error = export_refused(scratch, "intact", tmp_path, "--batch", "3")
    assert "BATCH=3 is not supported by intact" in error


@pytest.mark.parametrize("model", [m for m in MODELS if not load_spec(m).capabilities.dynamic_batch])
def test_dynamic_batch_is_refused_for_a_tool_without_the_capability(model, tmp_path):
    """The real CLI in the real checkout; the refusal comes from model.toml, before any weights are read."""
    error = export_refused(REPO, model, tmp_path, "--target", "onnx", "--dynamic-batch")
    assert f"the {model} export has static shapes only" in error and "drop --dynamic-batch" in error


def test_a_tool_with_the_capability_gets_past_that_check(tmp_path):
    """The control: for a tool that declares dynamic_batch, the same command fails later, at the weights."""
    model = next(m for m in MODELS if load_spec(m).capabilities.dynamic_batch)
    error = export_refused(REPO, model, tmp_path, "--target", "onnx", "--dynamic-batch")
    assert "never-read.pth" in error and "static shapes only" not in error


def test_a_ready_tool_is_a_tool():
    tool = load_tool(SOURCE)
    assert isinstance(tool, Tool) and tool.SPEC.name == SOURCE


def test_check_target_names_the_valid_targets():
    assert [check_target(t) for t in TARGETS] == list(TARGETS)
    with pytest.raises(ToolError, match="unknown TARGET 'tensorrt' \\(valid: ascend, onnx\\)"):
        check_target("tensorrt")
