"""The ais_bench backend: an .om on the NPU through ais_bench's Python API (aclruntime) or, where only
its command line is installed, through ``python3 -m ais_bench``; failures get a hint naming the fix."""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Sequence

import numpy as np

from common.backends.base import (
    InProcessBackend,
    TensorSpec,
    check_run_args,
    existing_model,
    first_line,
    input_files,
    publish,
    staging_dir,
)
from common.benchsummary import OLD_SUMMARY_NAME, SUMMARY_SUFFIX
from common.cann import ais_bench_importable
from common.errors import ToolError
from common.fsutil import read_json, write_json_atomic
from common.progress import live_bar_wanted, quiet_interval

CLI_TAIL_LINES = 20
#: seconds between two echoed redraws of ais_bench's own progress bar on a terminal
REDRAW_ECHO_S = 1.0
#: ais_bench's path_security_check refuses any other character in --model/--input/--output paths
AIS_PATH_CHARS = re.compile(r"^[_A-Za-z0-9/.-]+$")
#: a comma-joined --input longer than this risks the kernel's 128 KiB limit on one argument
MAX_INPUT_ARG = 100_000
DEVICE_FAILURE = re.compile(
    r"aclrtSetDevice|rtSetDevice|set device \S* ?failed|open device \S* ?failed|device (?:is )?busy|"
    r"resource busy|507033|/dev/davinci",
    re.IGNORECASE,
)
ACL_INIT_FAILURE = re.compile(r"acl ?init failed|aclInit|libascendcl", re.IGNORECASE)
ACL_DTYPES = {"float32", "float16", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32",
              "int64", "uint64", "bool"}


def failure_hint(text: str, device: int) -> str:
    if DEVICE_FAILURE.search(text):
        return (f"the NPU could not be opened (device {device} busy, absent or not passed into the "
                "container): check `npu-smi info` and the container's --device options")
    if ACL_INIT_FAILURE.search(text):
        return ("the CANN runtime did not start: source /usr/local/Ascend/ascend-toolkit/set_env.sh and "
                "check the driver with `npu-smi info`")
    if "aclruntime" in text and ("No module named" in text or "ImportError" in text):
        return "the aclruntime package is missing: install the aclruntime wheel matching this CANN version"
    if re.search(r"tensorsize.*filesize.*not match|ndata size.*not match", text, re.IGNORECASE):
        return "the input files do not match the model input size: preprocess the data for this model/batch"
    if "not find valid file" in text:
        return "the input directory holds no .bin files: rerun the data step"
    return "see its output below"


class AisBenchBackend(InProcessBackend):
    """An .om model on an Ascend NPU through ais_bench: its Python API when importable, else its CLI.

    API: ``ais_bench.infer.interface.InferSession(device_id, model_path)`` with ``get_inputs()``,
    ``get_outputs()``, ``infer(feeds, mode='static')`` and per-run times in
    ``summary().exec_time_list`` (``sumary()`` in 2022-2023 releases; entries are ms, or
    ``(start, end)`` ms pairs in later ones). CLI: ``python3 -m ais_bench --model .. --input ..
    --output .. --output_dirname .. --outfmt BIN --batchsize .. --device ..`` (flags as in the
    ais_bench README; ``--loop``/``--warmup_count`` only when not their defaults, ``--warmup_count``
    being unknown to the oldest ais_infer). ``mode`` forces one of them ("api"/"cli").
    """

    name = "ais_bench"

    def __init__(self, model_path: str | os.PathLike, device: int = 0, *, mode: str = "auto",
                 python: str = "python3") -> None:
        self.model_path = existing_model(model_path)
        if isinstance(device, bool) or not isinstance(device, int) or device < 0:
            raise ToolError(f"DEVICE={device!r} is invalid: use an NPU id from `npu-smi info` (0, 1, ...)")
        if mode not in ("auto", "api", "cli"):
            raise ToolError(f"ais_bench mode '{mode}' is invalid (valid: auto, api, cli)")
        self.device = device
        self.mode = mode
        self.python = python
        self._session = None

    # -- which way to run --
    @staticmethod
    def _api_class():
        try:
            from ais_bench.infer.interface import InferSession
        except (ImportError, OSError):
            return None
        return InferSession

    def cli_available(self) -> bool:
        return ais_bench_importable(self.python)

    def _resolve_mode(self) -> str | None:
        if self.mode == "api" or (self.mode == "auto" and self._api_class() is not None):
            return "api"
        if self.mode in ("auto", "cli") and self.cli_available():
            return "cli"
        return None

    def cli_command(self, input_arg: str, output: Path, dirname: str, batch: int, loop: int = 1,
                    warmup: int = 0, python: str | None = None) -> list[str]:
        cmd = [python or self.python, "-m", "ais_bench", "--model", str(self.model_path.absolute()),
               "--input", input_arg, "--output", str(output), "--output_dirname", dirname, "--outfmt", "BIN",
               "--batchsize", str(batch), "--device", str(self.device)]
        if loop != 1:
            cmd += ["--loop", str(loop)]
        if warmup:
            cmd += ["--warmup_count", str(warmup)]
        return cmd

    def run(self, inputs: Sequence[Path], out_dir: Path, dirname: str, batch: int,
            loop: int = 1, warmup: int = 0) -> Path:
        check_run_args(dirname, batch, loop, warmup)
        mode = self._resolve_mode()
        if mode == "api":
            dynamic = [s.name for s in self.input_specs() if None in s.shape]
            if dynamic:
                raise ToolError(f"{self.model_path} has dynamic input shapes ({', '.join(dynamic)}): "
                                "compile it with a static atc --input_shape")
            return super().run(inputs, out_dir, dirname, batch, loop=loop, warmup=warmup)
        return self._run_cli(inputs, Path(out_dir).absolute(), dirname, batch, loop, warmup, mode == "cli")

    def infer(self, feed: np.ndarray) -> list[np.ndarray]:
        """One in-memory run (streaming evaluation): only through ais_bench's Python API."""
        if self._resolve_mode() != "api":
            raise ToolError("streaming on the NPU needs ais_bench's Python API (ais_bench.infer.interface), which "
                            "this Python cannot import: install the ais_bench wheel here, or use the "
                            "data/infer/eval steps (ais_bench's command line)")
        return super().infer(feed)

    # -- Python API --
    @property
    def session(self):
        if self._session is None:
            cls = self._api_class()
            if cls is None:
                raise ToolError(
                    "the ais_bench Python API (ais_bench + aclruntime) is not importable here, so the "
                    f"inputs and outputs of {self.model_path} cannot be listed: install the ais_bench and "
                    "aclruntime wheels"
                )
            try:
                self._session = cls(self.device, str(self.model_path))
            except Exception as err:
                raise ToolError(f"ais_bench cannot load {self.model_path} on device {self.device}: "
                                f"{failure_hint(str(err), self.device)} ({first_line(err)})") from None
        return self._session

    @staticmethod
    def _spec(desc) -> TensorSpec:
        raw = str(getattr(desc, "datatype", "")).lower()
        dtype = raw.rsplit(".", 1)[-1].replace("tensor_dtype_", "")
        if dtype not in ACL_DTYPES:
            raise ToolError(f"model tensor '{desc.name}' has type {raw}, which these tools do not handle")
        shape = tuple(int(d) if int(d) >= 0 else None for d in desc.shape)
        return TensorSpec(str(desc.name), dtype, shape)

    def input_specs(self) -> list[TensorSpec]:
        return [self._spec(d) for d in self.session.get_inputs()]

    def output_specs(self) -> list[TensorSpec]:
        return [self._spec(d) for d in self.session.get_outputs()]

    def device_label(self) -> str:
        return f"npu:{self.device}"

    def _exec_times(self) -> list:
        getter = getattr(self.session, "summary", None) or getattr(self.session, "sumary", None)
        if getter is None:
            return []
        try:
            return list(getter().exec_time_list)
        except Exception:
            return []

    def _timed_runs(self, feed, loop):
        before = len(self._exec_times())
        outputs: list[np.ndarray] = []
        wall = []
        for _ in range(loop):
            start = time.perf_counter()
            try:
                outputs = list(self.session.infer([feed], mode="static"))
            except Exception as err:
                raise ToolError(f"ais_bench inference failed on device {self.device}: "
                                f"{failure_hint(str(err), self.device)} ({first_line(err)})") from None
            wall.append((time.perf_counter() - start) * 1000.0)
        recorded = self._exec_times()[before:]
        times = [float(t[1]) - float(t[0]) if isinstance(t, (tuple, list)) else float(t) for t in recorded]
        return outputs, (times if len(times) == loop else wall), [], []

    # -- CLI --
    def _input_arg(self, files: list[Path]) -> str | None:
        """A directory when it holds exactly these files, else a comma list when short enough."""
        parents = {f.parent for f in files}
        if len(parents) == 1:
            folder = parents.pop()
            listed = {p for p in folder.iterdir() if p.suffix in (".bin", ".BIN", ".npy", ".NPY")}
            if listed == set(files):
                return str(folder.absolute())
        joined = ",".join(str(f.absolute()) for f in files)
        return joined if len(joined) <= MAX_INPUT_ARG else None

    def _run_cli(self, inputs, out: Path, dirname: str, batch: int, loop: int, warmup: int,
                 available: bool) -> Path:
        files = input_files(inputs)
        input_arg = self._input_arg(files)
        if not available:
            preview = self.cli_command(input_arg or "<a directory holding only the input files>", out,
                                       dirname, batch, loop, warmup, python="python3")
            raise ToolError(
                "ais_bench is not installed here (neither its Python API nor `python3 -m ais_bench`): "
                "install the ais_bench and aclruntime wheels on the NPU host, or run: "
                f"{shlex.join(preview)}"
            )
        checked = [self.model_path.absolute(), out / dirname]
        checked += [Path(input_arg)] if input_arg and "," not in input_arg else [f.absolute() for f in files]
        for path in checked:
            if not AIS_PATH_CHARS.match(str(path)):
                raise ToolError(f"ais_bench refuses the path {path} (only A-Z a-z 0-9 _ . - / allowed): "
                                "rename or move it")
        staging = staging_dir(out, dirname)
        try:
            if input_arg is None:
                input_arg = str(_link_inputs(files, staging / "inputs"))
            ais_out = staging / "out"
            ais_out.mkdir()
            cmd = self.cli_command(input_arg, ais_out, dirname, batch, loop, warmup)
            print(f"[ais_bench] {shlex.join(cmd)}", file=sys.stderr, flush=True)
            rc, lines = _stream(cmd)
            tail = "\n".join(lines[-CLI_TAIL_LINES:])
            if rc != 0:
                raise ToolError(f"ais_bench failed with exit code {rc} on {self.model_path.name}: "
                                f"{failure_hint(chr(10).join(lines), self.device)}", detail=tail)
            produced = ais_out / dirname
            if not produced.is_dir():
                raise ToolError(f"ais_bench exited 0 but wrote no {dirname}/ (it ignored --output_dirname): "
                                "upgrade ais_bench", detail=tail)
            source = ais_out / f"{dirname}{SUMMARY_SUFFIX}"
            if not source.is_file():
                source = produced / OLD_SUMMARY_NAME
            summary = read_json(source, what="ais_bench summary") if source.is_file() else None
            if not isinstance(summary, dict):
                raise ToolError(f"ais_bench wrote no readable summary for {dirname}: upgrade ais_bench",
                                detail=tail)
            summary.update({"backend": self.name, "device": self.device_label(), "batchsize": batch,
                            "model": str(self.model_path)})
            publish(produced, out / dirname)
            write_json_atomic(out / f"{dirname}{SUMMARY_SUFFIX}", summary)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return out / dirname


def _link_inputs(files: list[Path], folder: Path) -> Path:
    """A directory of links to ``files`` (ais_bench takes one directory per model input)."""
    folder.mkdir()
    for f in files:
        target = folder / f.name
        try:
            os.link(f, target)
        except OSError:
            target.symlink_to(f.absolute())
    return folder


def _stream(cmd: list[str]) -> tuple[int, list[str]]:
    """Run ``cmd``, echoing its output to stderr as progress; return its exit code and last lines.

    ais_bench's own progress bar (tqdm) redraws with ``\\r`` many times a second: each redraw would
    be a line of its own, so a redraw is echoed at most once per ``REDRAW_ECHO_S`` on a terminal
    and once per progress interval in a log (common.progress); the bar's final state always is.
    """
    kept: deque[str] = deque(maxlen=200)
    every = REDRAW_ECHO_S if live_bar_wanted(sys.stderr) else quiet_interval()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as err:
        raise ToolError(f"cannot start {cmd[0]}: {err.strerror or err}") from None
    try:
        assert proc.stdout is not None
        echoed = time.monotonic() - every
        # newline="": a piece ends at \n, \r\n or a lone \r (a redraw), untranslated
        for piece in io.TextIOWrapper(proc.stdout, encoding="utf-8", errors="replace", newline=""):
            line = piece.rstrip("\r\n")
            if piece.endswith("\r") and line.strip():
                if time.monotonic() - echoed < every:
                    continue
                echoed = time.monotonic()
            if line.strip():
                kept.append(line)
                print(line, file=sys.stderr, flush=True)
        return proc.wait(), list(kept)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
