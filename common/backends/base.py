"""What every backend shares: tensor specs, the Backend interface, ais_bench's input order, batching,
result layout and staging, and the in-process run loop with its progress (the layout is described in
:mod:`common.backends`)."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

from common.benchsummary import SUMMARY_SUFFIX, make_ais_summary
from common.errors import ToolError
from common.fsutil import make_temp_dir, write_json_atomic
from common.progress import StepProgress


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


def existing_model(model_path: str | os.PathLike) -> Path:
    path = Path(model_path)
    if not path.is_file():
        raise ToolError(f"model file {path} not found: build it (make <model>-onnx / -om) or fix the path")
    return path


def check_run_args(dirname: str, batch: int, loop: int, warmup: int) -> None:
    if not isinstance(dirname, str) or dirname in ("", ".", "..") or "/" in dirname or "\\" in dirname:
        raise ToolError(f"result directory name {dirname!r} is invalid: use a plain name such as fcos_bs1")
    for what, value, low in (("BATCH", batch, 1), ("loop", loop, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ToolError(f"{what}={value!r} is invalid: use an integer >= {low}")


def input_files(inputs: Sequence[str | os.PathLike] | str | os.PathLike) -> list[Path]:
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
    files = input_files(inputs)
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


def staging_dir(out: Path, dirname: str) -> Path:
    """A hidden directory beside the final one; refuses to clobber earlier results."""
    final = out / dirname
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise ToolError(f"{final} already exists: remove it (or pass --force) to run inference again")
    out.mkdir(parents=True, exist_ok=True)
    return make_temp_dir(out, prefix=f".{dirname}.")  # mkdtemp, with the umask instead of 0700


def publish(staging: Path, final: Path) -> None:
    if final.is_dir():
        final.rmdir()  # empty, checked by staging_dir
    os.replace(staging, final)


def split_per_image(outputs: Sequence[np.ndarray], n: int, names: Sequence[str]) -> list[list[np.ndarray]]:
    """Each output of a run on ``n`` images, split along its first (batch) axis: ``[output][image]``."""
    split = []
    for k, out in enumerate(outputs):
        array = np.asarray(out)
        if n == 1:
            split.append([array])
        elif array.ndim == 0 or array.shape[0] % n:
            name = names[k] if k < len(names) else str(k)
            raise ToolError(
                f"output {k} ('{name}') has shape {list(array.shape)}: its first axis is not the batch of "
                f"{n}, so it cannot be split per image (run with BATCH=1)"
            )
        else:
            split.append(np.split(array, n, axis=0))
    return split


def save_outputs(outputs: Sequence[np.ndarray], chunk: list[tuple[Path, str | None]], directory: Path,
                  names: Sequence[str]) -> None:
    for k, parts in enumerate(split_per_image(outputs, len(chunk), names)):
        for (_, stem), part in zip(chunk, parts):
            if stem is not None:
                np.ascontiguousarray(part).tofile(directory / f"{stem}_{k}.bin")


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


# --- backends that batch in this process ---------------------------------------------------------

class InProcessBackend:
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

    def infer(self, feed: np.ndarray) -> list[np.ndarray]:
        """One run on a batch held in memory (streaming evaluation): the outputs, batch axis first."""
        outputs, *_ = self._timed_runs(feed, 1)
        return [np.asarray(o) for o in outputs]

    def run(self, inputs: Sequence[Path], out_dir: Path, dirname: str, batch: int,
            loop: int = 1, warmup: int = 0) -> Path:
        check_run_args(dirname, batch, loop, warmup)
        warm_ms: list[float] = []
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
        staging = staging_dir(out, dirname)
        compute: list[float] = []
        h2d: list[float] = []
        d2h: list[float] = []
        try:
            with StepProgress(f"{self.name} inference", len(plan.batches), "batches") as progress:
                for i, chunk in enumerate(plan.batches):
                    feed = np.concatenate([np.fromfile(f, dtype=dtype) for f, _ in chunk]).reshape(shape)
                    if i == 0 and warmup:  # cold runs (graph load, allocations): timed apart, never averaged in
                        _, warm_ms, _, _ = self._timed_runs(feed, warmup)
                    outputs, c, h, d = self._timed_runs(feed, loop)
                    compute += c
                    h2d += h
                    d2h += d
                    save_outputs(outputs, chunk, staging, output_names)
                    progress.advance()
            publish(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        summary = make_ais_summary(compute, batchsize=batch, h2d_ms=h2d, d2h_ms=d2h, extra={
            "backend": self.name, "device": self.device_label(), "batchsize": batch,
            "model": str(self.model_path), "loop": loop, "warmup": warmup, "files": len(plan.files),
            "warmup_compute_ms": [float(v) for v in warm_ms],
        })
        write_json_atomic(out / f"{dirname}{SUMMARY_SUFFIX}", summary)
        return final
