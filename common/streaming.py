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

from common.allocator import reuse_freed_buffers
from common.backends.base import split_per_image
from common.errors import ToolError
from common.manifest import ManifestEntry
from common.pipeline import (
    Scorer,
    TensorLayout,
    dataset_images,
    ordered_map,
    prepare_image,
    tensor_stems,
    write_evaluation,
)
from common.progress import StepProgress
from common.resultfiles import check_finite, expected_bytes
from common.shardmerge import ShardSpec, StreamShard
from common.tensors import np_dtype

#: postprocessed images kept in flight before the inference loop waits for the scorer
POSTPROCESS_AHEAD = 8


def stream_evaluate(tool: ModuleType, data_root: str | os.PathLike, model_path: str | os.PathLike,
                    out_dir: str | os.PathLike, *, target: str, provenance, backend: str = "onnxruntime",
                    batch: int = 1, device: int = 0, workers: int = 2, limit: int | None = None,
                    skip_bad: bool = False, input_format: str = "float",
                    annotation_file: str | os.PathLike | None = None, notes: tuple[str, ...] = (),
                    force: bool = False, shard: ShardSpec | None = None):
    """Evaluate ``model_path`` on a dataset in one pass; writes report.json / report.md (+ detections.json).

    With ``shard`` only that part of the dataset runs, into a resumable journal of per-image results
    and ``shard.json``, and nothing is evaluated: ``merge`` evaluates all shards at once
    (:mod:`common.shardmerge`). Returns the report, or the shard record.
    """
    from common.backends import make_backend

    reuse_freed_buffers()
    spec = tool.SPEC
    spec.check_batch(batch)
    layout = TensorLayout.checked(spec, input_format)
    out = Path(out_dir)
    if shard is None and (out / "report.json").exists() and not force:
        raise ToolError(f"{out / 'report.json'} already exists: pass --force to overwrite it")
    dataset, images = dataset_images(spec, data_root, limit)
    stems = tensor_stems(images, out)
    part = shard.select(images, dataset.root) if shard is not None else images
    runner = make_backend(backend, model_path, device)
    stream = _Stream(tool, runner, layout, _input_shape(runner, layout, batch, Path(model_path), input_format),
                     Scorer(tool, target, Path(annotation_file or dataset.annotation_file), dataset.root),
                     stems, target=target, batch=batch, workers=workers, skip_bad=skip_bad)
    if shard is not None:
        settings = {"model": spec.name, "target": target, "input_format": input_format, "limit": limit,
                    "data_root": str(dataset.root), "model_file": str(Path(model_path).resolve()),
                    "backend": backend, "index": shard.index, "count": shard.count,
                    "annotations": str(Path(annotation_file).resolve()) if annotation_file else None}
        return _stream_shard(stream, part, out, shard, settings, {"batch": batch, "device": device}, force)
    start = time.perf_counter()
    entries, skipped = stream.run(part, stream.scorer.add, lambda record: None)
    if not entries:
        raise ToolError(f"no image of {dataset.root} could be preprocessed (all {len(skipped)} were bad)")
    seconds = time.perf_counter() - start
    rate = f"streaming ({backend}, batch {batch}, {workers} preprocess workers, INPUT={input_format}): " \
           f"{len(entries)} images in {seconds:.1f} s, {len(entries) / seconds:.2f} images/s end to end"
    print(rate, file=sys.stderr)
    return write_evaluation(stream.scorer, Path(annotation_file or dataset.annotation_file), entries, skipped, out,
                            provenance=provenance, notes=(*notes, f"target: {target}", rate), force=force)


def _stream_shard(stream: _Stream, part: list, out: Path, shard: ShardSpec, settings: dict, extra: dict,
                  force: bool) -> dict:
    """One shard's images through the stream into its journal (resuming a killed run), then shard.json."""
    with StreamShard.open(out, shard, settings, force) as journal:
        todo = [image for image in part if str(image.path) not in journal.done]
        if len(todo) < len(part):
            print(f"resuming: {len(part) - len(todo)} of {len(part)} images already done", file=sys.stderr)
        stream.run(todo, journal.add, journal.skip, resumed=len(part) - len(todo))
        record = journal.finish([stream.stems[str(im.path)] for im in part], {**settings, **extra})
    print(f"shard {shard}: {len(part)} images in {out}; once all {shard.count} shards are complete, run `merge "
          f"--shards {out.parent} --count {shard.count}`", file=sys.stderr)
    return record


class _Stream:
    """The overlapped stages over a list of images: each image's postprocessed result goes to ``accept``
    (or its skipped record to ``skip``) in dataset order."""

    def __init__(self, tool: ModuleType, runner, layout: TensorLayout, shape: tuple[int, ...], scorer: Scorer,
                 stems: dict[str, str], *, target: str, batch: int, workers: int, skip_bad: bool) -> None:
        self.tool, self.runner, self.layout, self.shape, self.scorer = tool, runner, layout, shape, scorer
        self.stems, self.batch, self.workers, self.skip_bad = stems, batch, workers, skip_bad
        self.outputs = tool.SPEC.outputs_for(target)

    def run(self, images: list, accept, skip, resumed: int = 0) -> tuple[list[ManifestEntry], list[dict]]:
        """``resumed``: images of this run a killed one already did (counted in the progress, not the rate)."""
        tool, spec, batch, outputs = self.tool, self.tool.SPEC, self.batch, self.outputs
        entries: list[ManifestEntry] = []
        skipped: list[dict] = []

        def prepared(image):
            return prepare_image(tool, image, self.stems[str(image.path)], self.layout, self.skip_bad)

        with ordered_map(self.workers) as bounded_map, \
                ThreadPoolExecutor(1, thread_name_prefix="postprocess") as post, \
                StepProgress(f"{spec.name} stream", resumed + len(images), "images", completed=resumed) as progress:
            pending: deque[tuple[ManifestEntry, Future]] = deque()

            def score_ready(wait_for_all: bool = False) -> None:
                while pending and (wait_for_all or len(pending) > POSTPROCESS_AHEAD or pending[0][1].done()):
                    entry, future = pending.popleft()
                    accept(entry, future.result())
                    entries.append(entry)
                    progress.update(resumed + len(entries) + len(skipped))

            def run(chunk: list[tuple[ManifestEntry, np.ndarray]]) -> None:
                tensors = [t for _, t in chunk] + [chunk[0][1]] * (batch - len(chunk))  # ais_bench pads so
                results = self.runner.infer(np.stack(tensors).reshape(self.shape))
                if len(results) != len(outputs):
                    raise ToolError(f"the model gives {len(results)} outputs, the data file declares "
                                    f"{len(outputs)} for this target: wrong model for this target")
                per_image = split_per_image(results, batch, [o.name for o in outputs])
                for i, (entry, _) in enumerate(chunk):
                    arrays = _image_outputs([parts[i] for parts in per_image], outputs, entry.stem)
                    pending.append((entry, post.submit(self.scorer.postprocess, entry, arrays)))
                score_ready()

            chunk: list[tuple[ManifestEntry, np.ndarray]] = []
            for record, tensor in bounded_map(prepared, images):
                if tensor is None:
                    skipped.append({"source": record["source"], "reason": record["reason"]})
                    skip(record)
                    continue
                chunk.append((ManifestEntry.from_dict(record), tensor))
                if len(chunk) == batch:
                    run(chunk)
                    chunk = []
            if chunk:
                run(chunk)
            score_ready(wait_for_all=True)
            progress.update(resumed + len(entries) + len(skipped))  # bad images after the last good one
        return entries, skipped


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
