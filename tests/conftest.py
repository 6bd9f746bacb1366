"""Suite-wide pytest setup.

Each tests/<model> directory runs in its tool's environment (`make test` does that). When
pytest is run by hand in another interpreter, directories whose tool packages are missing are
left out *visibly* (listed in the summary), never silently.

`python -m pytest tests` from an interpreter without the project's packages (numpy, onnx,
onnxruntime) hands the same command over to the ``base`` environment instead of failing
on imports: the tests then run exactly where `make test` runs them.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from common import envs  # noqa: E402  (stdlib only, so importable from any interpreter)

#: the distribution that proves a tool's environment is the running one (effdet, mmdet, ...)
TOOL_MARKER_PACKAGE = {m: envs.tool_library(m) for m in envs.tool_envs()}
_left_out: list[str] = []
#: what the base environment provides; missing any of them means "not a project interpreter"
BASE_PACKAGES = ("numpy", "onnx", "onnxruntime")  # torch-free suites (py3.12) have these too
DELEGATED = "ASCEND_VISION_PYTEST_DELEGATED"


def pytest_configure(config):
    missing = [p for p in BASE_PACKAGES if importlib.util.find_spec(p) is None]
    if not missing:
        return
    if os.environ.get(DELEGATED):
        raise SystemExit(f"error: the base environment lacks {', '.join(missing)}; "
                         "rebuild it with `python3 -m common.envs ensure base`")
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.stop_global_capturing()  # give the real stdout/stderr back before exec
    print(f"NOTE: this interpreter lacks {', '.join(missing)}; running the same pytest command in "
          "the base environment (built once from tools/requirements-base.txt)", file=sys.stderr, flush=True)
    try:
        python = str(envs.ensure("base") / "bin" / "python")
    except envs.EnvError as err:
        raise SystemExit(f"error: {err}") from None
    os.chdir(config.invocation_params.dir)
    os.environ[DELEGATED] = "1"
    os.execv(python, [python, "-m", "pytest", *config.invocation_params.args])


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def pytest_ignore_collect(collection_path, config):
    path = Path(str(collection_path))
    if path.parent == REPO / "tests" and path.name in TOOL_MARKER_PACKAGE:
        if not _installed(TOOL_MARKER_PACKAGE[path.name]):
            requested = [Path(a.split("::")[0]).resolve() for a in config.args]
            if any(path == r or r in path.parents for r in requested):
                _left_out.append(path.name)  # asked for, so say why it is not run
            return True
    return None


def pytest_terminal_summary(terminalreporter):
    for name in _left_out:
        terminalreporter.write_line(
            f"NOTE: tests/{name} not collected: {TOOL_MARKER_PACKAGE[name]} is not installed in this "
            f"interpreter; `make test` runs them in the {name} environment", yellow=True)
