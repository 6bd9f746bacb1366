"""Streaming evaluation: decode, preprocess, infer and postprocess in overlapping stages, with no
tensor or result files.

The file-based steps (``data`` -> ``infer`` -> ``eval``) write every input tensor and output to
disk and read them back (FCOS: 12.8 MB per image in, for COCO val 64 GB), which is what ais_bench's
CLI needs. With a backend that runs in this process (onnxruntime, ais_bench's Python API) nothing
has to touch the disk:

    preprocess threads (bounded window) -> batches -> backend.infer -> postprocess thread -> scorer

Every stage uses the file-based path's own functions (:func:`common.pipeline.prepare_image`, the
same batching and padding as ais_bench, the outputs re-read as the result files would be,
:class:`common.pipeline.Scorer`), so both give identical detections and the same report (tested).
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import numpy as np

from common.backends.base import split_per_image
from common.errors import ToolError
from common.manifest import ManifestEntry
from common.pipeline import (
    Progress,
    Scorer,
    TensorLayout,
    dataset_images,
    ordered_map,
    prepare_image,
    tensor_stems,
    write_evaluation,
)
from common.resultfiles import check_finite, expected_bytes
from common.tensors import np_dtype

#: postprocessed images kept in flight before the inference loop waits for the scorer
POSTPROCESS_AHEAD = 8


def stream_evaluate(tool: ModuleType, data_root: str | os.PathLike, model_path: str | os.PathLike,
                    out_dir: str | os.PathLike, *, target: str, provenance, backend: str = "onnxruntime",
                    batch: int = 1, device: int = 0, workers: int = 2, limit: int | None = None,
                    skip_bad: bool = False, input_format: str = "float",
                    annotation_file: str | os.PathLike | None = None, notes: tuple[str, ...] = (),
                    force: bool = False):
    """Evaluate ``model_path`` on a dataset in one pass; writes report.json / report.md (+ detections.json)."""
    from common.backends import make_backend

    spec = tool.SPEC
    spec.check_batch(batch)
    layout = TensorLayout.checked(spec, input_format)
    out = Path(out_dir)
    if (out / "report.json").exists() and not force:
        raise ToolError(f"{out / 'report.json'} already exists: pass --force to overwrite it")
    dataset, images = dataset_images(spec, data_root, limit)
    stems = tensor_stems(images, out)
    runner = make_backend(backend, model_path, device)
    shape = _input_shape(runner, layout, batch, Path(model_path), input_format)
    scorer = Scorer(tool, target, Path(annotation_file or dataset.annotation_file), dataset.root)
    outputs = spec.outputs_for(target)
    entries: list[ManifestEntry] = []
    skipped: list[dict] = []
    progress = Progress(len(images), f"{spec.name} stream")
    start = time.perf_counter()

    def prepared(image):
        return prepare_image(tool, image, stems[str(image.path)], layout, skip_bad)

    with ordered_map(workers) as bounded_map, ThreadPoolExecutor(1, thread_name_prefix="postprocess") as post:
        pending: deque[tuple[ManifestEntry, Future]] = deque()

        def score_ready(wait_for_all: bool = False) -> None:
            while pending and (wait_for_all or len(pending) > POSTPROCESS_AHEAD or pending[0][1].done()):
                entry, future = pending.popleft()
                scorer.add(entry, future.result())
                entries.append(entry)
                progress.update(len(entries) + len(skipped))

        def run(chunk: list[tuple[ManifestEntry, np.ndarray]]) -> None:
            tensors = [t for _, t in chunk] + [chunk[0][1]] * (batch - len(chunk))  # ais_bench pads so
            results = runner.infer(np.stack(tensors).reshape(shape))
            if len(results) != len(outputs):
                raise ToolError(f"the model gives {len(results)} outputs, the data file declares {len(outputs)} "
                                "for this target: wrong model for this target")
            per_image = split_per_image(results, batch, [o.name for o in outputs])
            for i, (entry, _) in enumerate(chunk):
                arrays = _image_outputs([parts[i] for parts in per_image], outputs, entry.stem)
                pending.append((entry, post.submit(scorer.postprocess, entry, arrays)))
            score_ready()

        chunk: list[tuple[ManifestEntry, np.ndarray]] = []
        for record, tensor in bounded_map(prepared, images):
            if tensor is None:
                skipped.append({"source": record["source"], "reason": record["reason"]})
                continue
            chunk.append((ManifestEntry.from_dict(record), tensor))
            if len(chunk) == batch:
                run(chunk)
                chunk = []
        if chunk:
            run(chunk)
        score_ready(wait_for_all=True)
    if not entries:
        raise ToolError(f"no image of {dataset.root} could be preprocessed (all {len(skipped)} were bad)")
    seconds = time.perf_counter() - start
    rate = f"streaming ({backend}, batch {batch}, {workers} preprocess workers, INPUT={input_format}): " \
           f"{len(entries)} images in {seconds:.1f} s, {len(entries) / seconds:.2f} images/s end to end"
    print(rate, file=sys.stderr)
    return write_evaluation(scorer, Path(annotation_file or dataset.annotation_file), entries, skipped, out,
                            provenance=provenance, notes=(*notes, f"target: {target}", rate), force=force)


def _input_shape(runner, layout: TensorLayout, batch: int, model_path: Path, input_format: str) -> tuple[int, ...]:
    """The model input's run shape, refusing a model that does not take this data layout."""
    specs = runner.input_specs()
    if len(specs) != 1:
        raise ToolError(f"{model_path} has {len(specs)} inputs: only single-input models are supported")
    shape = specs[0].run_shape(batch)
    if tuple(shape[1:]) != layout.shape or np.dtype(specs[0].dtype) != np_dtype(layout.dtype):
        raise ToolError(f"{model_path} takes {specs[0].dtype} {list(shape[1:])} per image but INPUT={input_format} "
                        f"gives {layout.dtype} {list(layout.shape)}: use the model exported for that input "
                        "(INPUT=uint8: the *_uint8.onnx / *_uint8_*.om)")
    return shape


def _image_outputs(parts: list[np.ndarray], outputs, stem: str) -> list[np.ndarray]:
    """One image's part of each output, exactly as its result file would read back."""
    arrays = []
    for k, (part, out) in enumerate(zip(parts, outputs)):
        data = np.ascontiguousarray(part).tobytes()
        if len(data) != expected_bytes(out):
            raise ToolError(f"image {stem}: output {k} ({out.name}) has {len(data)} bytes, the data file says "
                            f"{expected_bytes(out)} ({out.dtype} {list(out.shape)}): wrong model for this target")
        array = np.frombuffer(data, np_dtype(out.dtype)).reshape(out.shape)
        check_finite(array, Path(f"<{stem} output {k}>"), stem, out.name)
        arrays.append(array)
    return arrays
