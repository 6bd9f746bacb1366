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
  ``throughput`` = 1000 * batch / mean compute time (:func:`common.benchsummary.make_ais_summary`),
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

import os
from pathlib import Path

from common.backends.ais_bench_backend import AisBenchBackend
from common.backends.base import Backend, TensorSpec, natural_key, natural_sorted, output_stem
from common.backends.onnxruntime_backend import OnnxRuntimeBackend
from common.errors import ToolError

__all__ = ["BACKENDS", "MODEL_SUFFIXES", "AisBenchBackend", "Backend", "OnnxRuntimeBackend", "TensorSpec",
           "make_backend", "natural_key", "natural_sorted", "output_stem"]

BACKENDS = ("onnxruntime", "ais_bench")
MODEL_SUFFIXES = {".onnx": "onnxruntime", ".om": "ais_bench"}


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
