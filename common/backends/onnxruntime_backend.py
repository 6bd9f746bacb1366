"""The ONNX Runtime backend: CPU (or CUDA) runs of an .onnx in ais_bench's result layout; graphs holding
Ascend custom ops run through common.customops."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import time
from typing import Any, Sequence

import numpy as np

from common.backends.base import (
    InProcessBackend,
    TensorSpec,
    existing_model,
    first_line,
)
from common.errors import ToolError

ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(uint16)": "uint16",
    "tensor(int32)": "int32", "tensor(uint32)": "uint32",
    "tensor(int64)": "int64", "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}


#: intra-op threads of every session (default: onnxruntime's, one per core). bench/bench_stream.py sets 1 to
#: model an NPU host, where inference does not take the cores the data path runs on.
THREADS_ENV = "ASCEND_VISION_ORT_THREADS"


def session_options(ort):
    """``ort.SessionOptions`` with the intra-op thread count of ``$ASCEND_VISION_ORT_THREADS`` when set."""
    options = ort.SessionOptions()
    value = os.environ.get(THREADS_ENV, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ToolError(f"{THREADS_ENV}={value!r} is invalid: give a thread count >= 1, or unset it")
        options.intra_op_num_threads = int(value)
    return options


def customops_available() -> bool:
    """True when common.customops (CPU kernels for the Ascend custom ops) is part of this checkout."""
    return importlib.util.find_spec("common.customops") is not None


class OnnxRuntimeBackend(InProcessBackend):
    """ONNX Runtime on CPU, or on CUDA when this onnxruntime build has the CUDA provider.

    Graphs holding Ascend custom ops run through ``common.customops.cpu_session`` when that module
    exists (it registers CPU implementations of BatchMultiClassNMS/RoiExtractor).
    """

    name = "onnxruntime"

    def __init__(self, model_path: str | os.PathLike, device: int | None = None,
                 providers: Sequence[Any] | None = None) -> None:
        self.model_path = existing_model(model_path)
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
        if customops_available():
            try:
                from common.customops import cpu_session

                return cpu_session(self.model_path, providers=providers, options=session_options(ort))
            except ImportError as err:  # e.g. onnxruntime-extensions absent: plain graphs still run
                print(f"[onnxruntime] Ascend custom-op kernels unavailable ({first_line(err)}): "
                      "using a plain session", file=sys.stderr)
        try:
            return ort.InferenceSession(str(self.model_path), sess_options=session_options(ort), providers=providers)
        except Exception as err:  # onnxruntime raises its own pybind exception types
            text = first_line(err)
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
                raise ToolError(f"onnxruntime failed running {self.model_path}: {first_line(err)}") from None
            times.append((time.perf_counter() - start) * 1000.0)
        return outputs, times, [], []
