"""One interface for every inference runtime, producing ais_bench's result layout.

Every backend turns a list of preprocessed ``.bin`` tensors into ``<out_dir>/<dirname>/<stem>_<k>.bin``
plus ``<out_dir>/<dirname>_summary.json``, exactly as ``python3 -m ais_bench --output <out_dir>
--output_dirname <dirname> --outfmt BIN`` does, so postprocessing, accuracy and throughput code is
written once and a CPU run is directly comparable with an NPU run.

What we copy from ais_bench (``ais_bench/infer/io_oprations.py`` and ``utils.py`` in Ascend/tools
``ais-bench_workload/tool/ais_infer``, Ascend/ait and Ascend/msit ``components/benchmark``):

* inputs are naturally sorted (``img2`` before ``img10``; digit runs compare as numbers,
  text case-insensitively, on the whole path);
* files per inference = model input bytes / file bytes (``get_files_count_per_batch``);
* a short last batch is padded with its own first file and the padded outputs are not saved;
* output ``k`` of a run is split along axis 0 into one part per file (kept whole when one file
  fills a run) and written as ``<stem>_<k>.bin``, ``stem`` = file name up to its first dot;
* the summary holds ``NPU_compute_time``/``H2D_latency``/``D2H_latency`` statistics in ms and
  ``throughput`` = 1000 * batch / mean compute time (:func:`common.summary.make_ais_summary`),
  to which we add ``backend``, ``device``, ``batchsize`` and ``model``. ONNX Runtime has no host
  to device copies to time, so its H2D/D2H entries are empty (count 0) and its "NPU" time is the
  wall time of ``InferenceSession.run``.

Where we are stricter than ais_bench, on purpose: files per inference must equal the batch size
(ais_bench silently glues two half-size files into one input, e.g. float16 data for a float32
model), all input files must have the same size, two inputs may not share a stem (their outputs
would overwrite each other), and results appear under their final name only when the run has
finished (written in a hidden staging directory, then renamed).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

from common.errors import ToolError
from common.fsutil import make_temp_dir, read_json, write_json_atomic
from common.summary import OLD_SUMMARY_NAME, SUMMARY_SUFFIX, make_ais_summary

BACKENDS = ("onnxruntime", "ais_bench")
MODEL_SUFFIXES = {".onnx": "onnxruntime", ".om": "ais_bench"}
CLI_TAIL_LINES = 20
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
ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(uint16)": "uint16",
    "tensor(int32)": "int32", "tensor(uint32)": "uint32",
    "tensor(int64)": "int64", "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}
ACL_DTYPES = {"float32", "float16", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32",
              "int64", "uint64", "bool"}


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the runtime declares it (shape includes the batch; None = dynamic)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]

    def run_shape(self, batch: int) -> tuple[int, ...]:
        """The concrete shape of one run with ``batch`` images (ToolError when it cannot be known)."""
        if not self.shape:
            raise ToolError(f"model input '{self.name}' is a scalar: it cannot take image batches")
        if any(d is None for d in self.shape[1:]):
            raise ToolError(
                f"model input '{self.name}' has dynamic dimensions {list(self.shape)}: "
                "export/compile the model with a static input shape"
            )
        if self.shape[0] is not None and self.shape[0] != batch:
            raise ToolError(
                f"model input '{self.name}' has a fixed batch of {self.shape[0]} ({list(self.shape)}) but "
                f"BATCH={batch} was requested: use BATCH={self.shape[0]} or export/compile the model for "
                f"batch {batch}"
            )
        return (batch,) + tuple(int(d) for d in self.shape[1:])

    def run_bytes(self, batch: int) -> int:
        return int(np.prod(self.run_shape(batch), dtype=np.int64)) * np.dtype(self.dtype).itemsize


@runtime_checkable
class Backend(Protocol):
    """What the pipeline needs from a runtime."""

    name: str

    def input_specs(self) -> list[TensorSpec]: ...

    def output_specs(self) -> list[TensorSpec]: ...

    def run(self, inputs: Sequence[Path], out_dir: Path, dirname: str, batch: int,
            loop: int = 1, warmup: int = 0) -> Path: ...


# --- helpers shared by every backend --------------------------------------------------------------

def natural_key(text: str) -> list:
    """ais_bench's natural order: digit runs compare as integers, the rest case-insensitively."""
    parts = re.split(r"(\d+)", text)
    return [int(p) if i % 2 else p.lower() for i, p in enumerate(parts)]


def natural_sorted(paths: Iterable[str | os.PathLike]) -> list[Path]:
    return sorted((Path(p) for p in paths), key=lambda p: natural_key(str(p)))


def output_stem(path: str | os.PathLike) -> str:
    """The stem ais_bench gives a result: the file name up to its FIRST dot."""
    return Path(path).name.split(".")[0]


def make_backend(name: str, model_path: str | os.PathLike, device: int | None = None) -> Backend:
    """The backend called ``name`` for ``model_path``; refuses a model the backend cannot run."""
    if name not in BACKENDS:
        raise ToolError(f"unknown backend '{name}' (valid: {', '.join(BACKENDS)})")
    path = Path(model_path)
    suffix = path.suffix.lower()
    valid = ", ".join(f"{s} -> {b}" for s, b in MODEL_SUFFIXES.items())
    needed = MODEL_SUFFIXES.get(suffix)
    if needed is None:
        raise ToolError(f"model {path} has extension '{suffix}', which no backend runs (valid: {valid})")
    if needed != name:
        raise ToolError(f"backend '{name}' cannot run {path}: use BACKEND={needed} (valid: {valid})")
    if name == "onnxruntime":
        return OnnxRuntimeBackend(path, device=device)
    return AisBenchBackend(path, device=0 if device is None else device)


def _existing_model(model_path: str | os.PathLike) -> Path:
    path = Path(model_path)
    if not path.is_file():
        raise ToolError(f"model file {path} not found: build it (make <model>-onnx / -om) or fix the path")
    return path


def _check_run_args(dirname: str, batch: int, loop: int, warmup: int) -> None:
    if not isinstance(dirname, str) or dirname in ("", ".", "..") or "/" in dirname or "\\" in dirname:
        raise ToolError(f"result directory name {dirname!r} is invalid: use a plain name such as fcos_bs1")
    for what, value, low in (("BATCH", batch, 1), ("loop", loop, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ToolError(f"{what}={value!r} is invalid: use an integer >= {low}")


def _input_files(inputs: Sequence[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    """Naturally sorted input files (a directory stands for its .bin files); refuses clashing stems."""
    if isinstance(inputs, (str, os.PathLike)):
        one = Path(inputs)
        inputs = sorted(one.glob("*.bin")) if one.is_dir() else [one]
    files = natural_sorted(inputs)
    if not files:
        raise ToolError("no input files to run: the preprocessed dataset is empty (rerun the data step)")
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise ToolError(f"{len(missing)} input file(s) not found, first {missing[0]}: rerun the data step")
    seen: dict[str, Path] = {}
    for f in files:
        stem = output_stem(f)
        if not stem:
            raise ToolError(f"input file {f} has no stem before its first dot: rename it")
        if stem in seen:
            raise ToolError(f"input files {seen[stem]} and {f} share the result stem '{stem}': rename one")
        seen[stem] = f
    return files


@dataclass
class BatchPlan:
    files: list[Path]
    files_per_batch: int
    file_bytes: int
    #: per run: (file, stem) with stem None for padding repeats
    batches: list[list[tuple[Path, str | None]]]


def plan_batches(inputs: Sequence[str | os.PathLike], model_input: TensorSpec, batch: int,
                 model_path: Path) -> BatchPlan:
    """Group files into runs as ais_bench does, refusing files that do not fit the model input."""
    files = _input_files(inputs)
    run_bytes = model_input.run_bytes(batch)
    per_image = run_bytes // batch
    sizes = [f.stat().st_size for f in files]
    first = sizes[0]
    shape = list(model_input.run_shape(batch))[1:]
    if first == 0 or run_bytes % first or run_bytes // first != batch:
        raise ToolError(
            f"input file {files[0]} has {first} bytes but {model_path.name} input '{model_input.name}' "
            f"({model_input.dtype} {shape}) takes {per_image} bytes per image: preprocess the data for this "
            "model"
        )
    bad = [(f, s) for f, s in zip(files, sizes) if s != first]
    if bad:
        raise ToolError(
            f"{len(bad)} input file(s) have the wrong size, first {bad[0][0]} ({bad[0][1]} bytes, expected "
            f"{per_image}): rerun the data step for this model"
        )
    batches = []
    for start in range(0, len(files), batch):
        chunk: list[tuple[Path, str | None]] = [(f, output_stem(f)) for f in files[start:start + batch]]
        chunk += [(chunk[0][0], None)] * (batch - len(chunk))
        batches.append(chunk)
    return BatchPlan(files, batch, first, batches)


def _staging_dir(out: Path, dirname: str) -> Path:
    """A hidden directory beside the final one; refuses to clobber earlier results."""
    final = out / dirname
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise ToolError(f"{final} already exists: remove it (or pass --force) to run inference again")
    out.mkdir(parents=True, exist_ok=True)
    return make_temp_dir(out, prefix=f".{dirname}.")  # mkdtemp, with the umask instead of 0700


def _publish(staging: Path, final: Path) -> None:
    if final.is_dir():
        final.rmdir()  # empty, checked by _staging_dir
    os.replace(staging, final)


def _save_outputs(outputs: Sequence[np.ndarray], chunk: list[tuple[Path, str | None]], directory: Path,
                  names: Sequence[str]) -> None:
    n = len(chunk)
    for k, out in enumerate(outputs):
        array = np.asarray(out)
        if n == 1:
            parts = [array]
        elif array.ndim == 0 or array.shape[0] % n:
            name = names[k] if k < len(names) else str(k)
            raise ToolError(
                f"output {k} ('{name}') has shape {list(array.shape)}: its first axis is not the batch of "
                f"{n}, so it cannot be split per image (run with BATCH=1)"
            )
        else:
            parts = np.split(array, n, axis=0)
        for (_, stem), part in zip(chunk, parts):
            if stem is not None:
                np.ascontiguousarray(part).tofile(directory / f"{stem}_{k}.bin")


def _customops_available() -> bool:
    """True when common.customops (CPU kernels for the Ascend custom ops) is part of this checkout."""
    return importlib.util.find_spec("common.customops") is not None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


def _failure_hint(text: str, device: int) -> str:
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


class _Progress:
    """Batches done, on stderr: rewritten in place on a terminal, a line every few seconds in a log."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done = label, total, 0
        self.start = self.last = time.monotonic()

    def step(self) -> None:
        self.done += 1
        stream = sys.stderr
        tty = stream.isatty()
        now = time.monotonic()
        if self.done < self.total and now - self.last < (0.2 if tty else 5.0):
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        end = "\n" if self.done == self.total or not tty else ""
        prefix = "\r" if tty else ""
        print(f"{prefix}[{self.label}] {self.done}/{self.total} batches, {rate:.2f} batches/s", end=end,
              file=stream, flush=True)


# --- backends that batch in this process ---------------------------------------------------------

class _InProcessBackend:
    """Batching, padding and writing done here; subclasses supply one timed model run."""

    name = "?"
    model_path: Path

    def input_specs(self) -> list[TensorSpec]:
        raise NotImplementedError

    def output_specs(self) -> list[TensorSpec]:
        raise NotImplementedError

    def device_label(self) -> str:
        raise NotImplementedError

    def _timed_runs(self, feed: np.ndarray, loop: int) -> tuple[list[np.ndarray], list[float], list[float],
                                                                list[float]]:
        """Run ``loop`` times; return (outputs of the last run, compute ms, h2d ms, d2h ms)."""
        raise NotImplementedError

    def run(self, inputs: Sequence[Path], out_dir: Path, dirname: str, batch: int,
            loop: int = 1, warmup: int = 0) -> Path:
        _check_run_args(dirname, batch, loop, warmup)
        specs = self.input_specs()
        if len(specs) != 1:
            names = ", ".join(s.name for s in specs)
            raise ToolError(f"{self.model_path} has {len(specs)} inputs ({names}): only single-input models "
                            "are supported")
        plan = plan_batches(inputs, specs[0], batch, self.model_path)
        output_names = [s.name for s in self.output_specs()]
        shape = specs[0].run_shape(batch)
        dtype = np.dtype(specs[0].dtype)
        out = Path(out_dir)
        final = out / dirname
        staging = _staging_dir(out, dirname)
        compute: list[float] = []
        h2d: list[float] = []
        d2h: list[float] = []
        try:
            progress = _Progress(self.name, len(plan.batches))
            for i, chunk in enumerate(plan.batches):
                feed = np.concatenate([np.fromfile(f, dtype=dtype) for f, _ in chunk]).reshape(shape)
                if i == 0 and warmup:
                    self._timed_runs(feed, warmup)
                outputs, c, h, d = self._timed_runs(feed, loop)
                compute += c
                h2d += h
                d2h += d
                _save_outputs(outputs, chunk, staging, output_names)
                progress.step()
            _publish(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        summary = make_ais_summary(compute, batchsize=batch, h2d_ms=h2d, d2h_ms=d2h, extra={
            "backend": self.name, "device": self.device_label(), "batchsize": batch,
            "model": str(self.model_path), "loop": loop, "warmup": warmup, "files": len(plan.files),
        })
        write_json_atomic(out / f"{dirname}{SUMMARY_SUFFIX}", summary)
        return final


class OnnxRuntimeBackend(_InProcessBackend):
    """ONNX Runtime on CPU, or on CUDA when this onnxruntime build has the CUDA provider.

    Graphs holding Ascend custom ops run through ``common.customops.cpu_session`` when that module
    exists (it registers CPU implementations of BatchMultiClassNMS/RoiExtractor).
    """

    name = "onnxruntime"

    def __init__(self, model_path: str | os.PathLike, device: int | None = None,
                 providers: Sequence[Any] | None = None) -> None:
        self.model_path = _existing_model(model_path)
        self.device = device
        self._providers = list(providers) if providers else None
        self._session = None

    @property
    def session(self):
        if self._session is None:
            self._session = self._load()
        return self._session

    def _default_providers(self, ort) -> list[Any]:
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return [("CUDAExecutionProvider", {"device_id": self.device or 0}), "CPUExecutionProvider"]
        if self.device is not None:
            print(f"[onnxruntime] no CUDA provider in this onnxruntime build: device {self.device} ignored, "
                  "running on CPU", file=sys.stderr)
        return ["CPUExecutionProvider"]

    def _load(self):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ToolError("onnxruntime is not installed in this Python: install the tool's requirements.txt"
                            ) from None
        providers = self._providers or self._default_providers(ort)
        if _customops_available():
            try:
                from common.customops import cpu_session

                return cpu_session(self.model_path, providers=providers)
            except ImportError as err:  # e.g. onnxruntime-extensions absent: plain graphs still run
                print(f"[onnxruntime] Ascend custom-op kernels unavailable ({_first_line(err)}): "
                      "using a plain session", file=sys.stderr)
        try:
            return ort.InferenceSession(str(self.model_path), providers=providers)
        except Exception as err:  # onnxruntime raises its own pybind exception types
            text = _first_line(err)
            fix = ("the graph holds Ascend custom ops: install onnxruntime-extensions"
                   if re.search(r"BatchMultiClassNMS|RoiExtractor", str(err)) else "re-export the model")
            raise ToolError(f"onnxruntime cannot load {self.model_path} ({type(err).__name__}: {text}): {fix}"
                            ) from None

    @staticmethod
    def _spec(node) -> TensorSpec:
        dtype = ORT_DTYPES.get(node.type)
        if dtype is None:
            raise ToolError(f"model tensor '{node.name}' has type {node.type}, unsupported by these tools")
        shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in node.shape)
        return TensorSpec(node.name, dtype, shape)

    def input_specs(self) -> list[TensorSpec]:
        return [self._spec(n) for n in self.session.get_inputs()]

    def output_specs(self) -> list[TensorSpec]:
        return [self._spec(n) for n in self.session.get_outputs()]

    def device_label(self) -> str:
        used = self.session.get_providers()
        if used and used[0] == "CUDAExecutionProvider":
            options = self.session.get_provider_options().get("CUDAExecutionProvider", {})
            return f"cuda:{options.get('device_id', self.device or 0)}"
        return "cpu"

    def _timed_runs(self, feed, loop):
        name = self.session.get_inputs()[0].name
        times = []
        outputs: list[np.ndarray] = []
        for _ in range(loop):
            start = time.perf_counter()
            try:
                outputs = self.session.run(None, {name: feed})
            except Exception as err:
                raise ToolError(f"onnxruntime failed running {self.model_path}: {_first_line(err)}") from None
            times.append((time.perf_counter() - start) * 1000.0)
        return outputs, times, [], []


class AisBenchBackend(_InProcessBackend):
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
        self.model_path = _existing_model(model_path)
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
        exe = shutil.which(self.python)
        if exe is None:
            return False
        probe = "import importlib.util,sys; sys.exit(0 if importlib.util.find_spec('ais_bench') else 3)"
        try:
            return subprocess.run([exe, "-c", probe], capture_output=True, timeout=120).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False

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
        _check_run_args(dirname, batch, loop, warmup)
        mode = self._resolve_mode()
        if mode == "api":
            dynamic = [s.name for s in self.input_specs() if None in s.shape]
            if dynamic:
                raise ToolError(f"{self.model_path} has dynamic input shapes ({', '.join(dynamic)}): "
                                "compile it with a static atc --input_shape")
            return super().run(inputs, out_dir, dirname, batch, loop=loop, warmup=warmup)
        return self._run_cli(inputs, Path(out_dir).absolute(), dirname, batch, loop, warmup, mode == "cli")

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
                                f"{_failure_hint(str(err), self.device)} ({_first_line(err)})") from None
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
                                f"{_failure_hint(str(err), self.device)} ({_first_line(err)})") from None
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
        files = _input_files(inputs)
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
        staging = _staging_dir(out, dirname)
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
                                f"{_failure_hint(chr(10).join(lines), self.device)}", detail=tail)
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
            _publish(produced, out / dirname)
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
    """Run ``cmd``, echoing its output to stderr as progress; return its exit code and last lines."""
    kept: deque[str] = deque(maxlen=200)
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", bufsize=1)
    except OSError as err:
        raise ToolError(f"cannot start {cmd[0]}: {err.strerror or err}") from None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.strip():
                kept.append(line)
                print(line, file=sys.stderr, flush=True)
        return proc.wait(), list(kept)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
