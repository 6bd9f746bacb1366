"""The generic steps every tool shares: preprocess a dataset, run inference, evaluate.

A tool contributes only its hooks (``tools/<model>/tool.py``: preprocess, postprocess, ...);
dataset iteration, resumable tensor writing, inference backends, result validation,
metrics and reports live here once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import shutil
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import numpy as np

from common.allocator import reuse_freed_buffers
from common.contract import load_tool  # noqa: F401  (re-exported: the steps' entry point)
from common.dataset import open_dataset, read_image_bgr
from common.errors import ToolError
from common.fsutil import exclusive_lock, os_error_message, read_json, write_json_atomic
from common.infofile import check_info_path, write_bin_info, write_info
from common.manifest import MANIFEST_NAME, Manifest, ManifestEntry
from common.progress import StepProgress
from common.spec import ModelSpec
from common.tensors import np_dtype, tensor_stem, write_tensor

PROGRESS_NAME = ".progress.jsonl"  # one line per finished image; removed once manifest.json is written
RUN_META_NAME = ".progress-meta.json"
#: hidden siblings of an output folder: the rebuild of a --force run, and the old folder while swapping
FORCE_SUFFIX = ".force.part"
OLD_SUFFIX = ".old.part"


# --- preprocessing ------------------------------------------------------------------------------

def preprocess_dataset(tool: ModuleType, data_root: str | os.PathLike, out_dir: str | os.PathLike, *,
                       limit: int | None = None, skip_bad: bool = False, force: bool = False,
                       workers: int = 1, input_format: str = "float", shard=None) -> Manifest:
    """Write ``<out>/<stem>.bin`` for every image, then ``manifest.json`` and the .info files.

    Everything that can be known before the work is checked first (tensor names, duplicate
    stems, paths the .info format cannot hold), so a bad dataset fails in seconds, not after
    hours. Resumable: each finished image is journalled; a rerun skips journalled images whose
    tensor file is complete and removes the temporary files of a killed run. Paths are resolved,
    so a rerun may spell DATA/OUT differently. With ``force`` a finished dataset is rebuilt in a
    hidden sibling folder and swapped in only when complete: a failing rerun keeps the old one.
    ``workers`` > 1 preprocesses that many images at once in threads (decoding, resizing and
    writing release the GIL; ``tool.preprocess`` must be a pure function); results are
    journalled in dataset order either way, so the output does not depend on it.
    ``input_format="uint8"`` writes the canvas before normalisation (HWC uint8 BGR, the tool's
    ``pixels`` hook) for models that normalise on the NPU (AIPP, common.aipp).
    """

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ToolError(f"workers={workers!r} is invalid: use 1 (serial) or more")
    reuse_freed_buffers()
    spec: ModelSpec = tool.SPEC
    layout = TensorLayout.checked(spec, input_format)
    out = Path(out_dir).resolve()
    dataset, images = dataset_images(spec, data_root, limit)
    stems = tensor_stems(images, out)
    if shard is not None:  # a common.shardmerge.ShardSpec: only its part, recorded in shard.json at the end
        images = shard.select(images, dataset.root)
    # every [input] setting (shape, mean/std, rounding, EXIF rule, ...): a resumed run whose data
    # file changed in between would otherwise mix tensors made under two rules
    run_meta = {"model": spec.name, "input": json.loads(json.dumps(dataclasses.asdict(spec.input))),
                "annotation_file": str(dataset.annotation_file), "limit": limit, "input_format": input_format}
    if shard is not None:
        run_meta["shard"] = str(shard)
    finished = (out / MANIFEST_NAME).exists()
    if finished and not force:
        raise ToolError(f"{out} already holds a preprocessed dataset: pass --force to redo it")
    work = out.parent / f".{out.name}{FORCE_SUFFIX}" if finished else out
    _mkdir(work)
    with exclusive_lock(work / PROGRESS_NAME, f"a dataset into {out}") as journal:
        _start_run(work, journal, run_meta, force)
        entry_bytes = int(np_dtype(layout.dtype).itemsize) * int(_prod(layout.shape))
        done = _journalled(work, journal, entry_bytes)
        if done:
            print(f"resuming: {len(done)} of {len(images)} images already done", file=sys.stderr)
        todo = [image for image in images if str(image.path) not in done]

        def one(image) -> dict:
            return _preprocess_image(tool, image, stems[str(image.path)], work, layout, skip_bad)

        synced = time.monotonic()
        with ordered_map(workers) as bounded_map, StepProgress(f"{spec.name} preprocess", len(images), "images",
                                                               completed=len(images) - len(todo)) as progress:
            for n, rec in enumerate(bounded_map(one, todo), len(images) - len(todo) + 1):
                journal.write(json.dumps(rec) + "\n")
                journal.flush()  # in the OS once written: a killed run's records survive it
                synced = _sync_every(journal, synced, JOURNAL_SYNC_S)
                done[rec["source"]] = rec
                progress.update(n)
        if shard is not None:
            from common.shardmerge import write_shard_record

            write_shard_record(work, shard, [stems[str(im.path)] for im in images], kind="data", model=spec.name,
                               input_format=input_format, limit=limit)
        manifest = _write_manifest(spec, layout, dataset, images, done, work, out)
        (work / PROGRESS_NAME).unlink()
        (work / RUN_META_NAME).unlink()
    if work != out:
        _swap_in(work, out)
    if manifest.skipped:
        print(f"warning: {len(manifest.skipped)} bad image(s) skipped and recorded in {out / MANIFEST_NAME}",
              file=sys.stderr)
    return manifest


def dataset_images(spec: ModelSpec, data_root: str | os.PathLike, limit: int | None):
    """(the dataset, its images in the order every step uses: by image id, the first ``limit``)."""
    dataset = open_dataset(spec.dataset, Path(data_root).resolve())
    return dataset, sorted(dataset.images, key=lambda im: im.image_id)[: limit or None]


def tensor_stems(images, out: Path) -> dict[str, str]:
    """Each image's tensor stem (:func:`common.tensors.tensor_stem`), refusing up front what would
    fail or overwrite later: two images with one stem, whitespace the .info files cannot hold."""
    check_info_path(out)
    stems: dict[str, str] = {}
    owner: dict[str, Path] = {}
    for image in images:
        check_info_path(image.path)
        stem = tensor_stem(image.path)
        if stem in owner:
            raise ToolError(f"images {owner[stem]} and {image.path} would both be written as {stem}.bin (one "
                            "tensor name per image): rename one of them")
        owner[stem] = image.path
        stems[str(image.path)] = stem
    return stems


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ToolError(os_error_message(err, path)) from err


def _start_run(work: Path, journal, run_meta: dict, force: bool) -> None:
    """Check that ``work`` holds nothing or an unfinished run with these settings (discarded with
    ``force`` otherwise), then remove the temporary files a killed run left behind."""
    meta_path = work / RUN_META_NAME
    if meta_path.exists() and read_json(meta_path) != run_meta:
        if not force:
            raise ToolError(f"{work} holds an unfinished run with other settings (another model, input "
                            "rules or dataset): pass --force to discard it, or choose another OUT")
        _empty_folder(work, keep=Path(journal.name))
        journal.truncate(0)
    for orphan in work.glob(".*.part"):
        _remove(orphan)
    write_json_atomic(meta_path, run_meta)


def _empty_folder(folder: Path, keep: Path) -> None:
    for entry in folder.iterdir():
        if entry != keep:
            _remove(entry)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _journalled(work: Path, journal, entry_bytes: int) -> dict[str, dict]:
    """The journal's records (by source image) whose tensor file is complete, or that were skipped."""
    journal.seek(0)
    done: dict[str, dict] = {}
    for line in journal.read().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill: that image is simply redone
        tensor = work / rec.get("file", "")
        if rec.get("skipped") or tensor.is_file() and tensor.stat().st_size == entry_bytes:
            done[rec["source"]] = rec
    return done


def _write_manifest(spec: ModelSpec, layout: TensorLayout, dataset, images, done: dict[str, dict], work: Path,
                    out: Path) -> Manifest:
    """manifest.json and the .info files in ``work``, naming the tensors where they will be: in ``out``."""
    records = [done[str(im.path)] for im in images]
    entries = [ManifestEntry.from_dict(r) for r in records if not r.get("skipped")]
    skipped = [{"source": r["source"], "reason": r["reason"]} for r in records if r.get("skipped")]
    if not entries:
        raise ToolError(f"no image of {dataset.root} could be preprocessed (all {len(skipped)} were bad)")
    manifest = Manifest(model=spec.name, input_name=spec.input.name, dtype=layout.dtype,
                        shape=layout.shape, entries=entries, skipped=skipped,
                        meta={"annotation_file": str(dataset.annotation_file), "data_root": str(dataset.root),
                              "input_format": layout.input_format})
    c, h, w = spec.input.shape
    write_bin_info(work / f"{spec.name}.info", [str(out / e.file) for e in entries], w, h)
    write_info(work / f"{spec.name}_jpeg.info", [(e.source, *e.orig_size) for e in entries])
    manifest.save(work)
    return manifest


def _swap_in(new: Path, final: Path) -> None:
    """Replace the folder ``final`` by the complete folder ``new`` (two renames; the old one is then removed)."""
    old = final.parent / f".{final.name}{OLD_SUFFIX}"
    try:
        _remove(old)
        os.replace(final, old)
        os.replace(new, final)
        shutil.rmtree(old)
    except OSError as err:
        raise ToolError(os_error_message(err, final)) from err


@dataclasses.dataclass(frozen=True)
class TensorLayout:
    """What the data step writes per image: the model's float tensor, or the uint8 canvas for AIPP."""

    input_format: str  # common.aipp.INPUT_FORMATS
    dtype: str
    shape: tuple[int, ...]

    @classmethod
    def checked(cls, spec: ModelSpec, input_format: str) -> TensorLayout:
        """The layout of ``INPUT=input_format`` for this model, refusing what its tool cannot write."""
        from common.aipp import check_input_format

        if check_input_format(input_format) == "uint8":
            if not spec.capabilities.uint8_input:
                raise ToolError(f"the {spec.name} tool has no uint8 input ({spec.path}: [capabilities] uint8_input): "
                                "use INPUT=float")
            return cls("uint8", "uint8", (spec.input.height, spec.input.width, 3))
        return cls("float", spec.input.dtype, tuple(spec.input.shape))


def _preprocess_image(tool: ModuleType, image, stem: str, out: Path, layout: TensorLayout,
                      skip_bad: bool) -> dict:
    """One image -> its tensor file; the journal record (a skipped record for a bad image with skip_bad).

    Every per-image failure (unreadable, truncated, too thin for the model, ...) is skippable;
    failures to write the tensor (disk full) are not: they are not the image's fault.
    """
    record, tensor = prepare_image(tool, image, stem, layout, skip_bad)
    if tensor is not None:
        write_tensor(out / record["file"], tensor)
    return record


def prepare_image(tool: ModuleType, image, stem: str, layout: TensorLayout,
                  skip_bad: bool) -> tuple[dict, np.ndarray | None]:
    """One image -> (its manifest record, its tensor in ``layout``), or (a skipped record, None) for a
    bad image with ``skip_bad``: the data step writes the tensor, streaming evaluation feeds it."""
    source = str(image.path)
    try:
        bgr = read_image_bgr(image.path, exif=tool.SPEC.input.exif_orientation == "apply")
        tensor, scale, pad = _tool_preprocess(tool, bgr, image.path, layout)
    except ToolError as err:
        if not skip_bad:
            raise
        return {"skipped": True, "source": source, "reason": str(err)}, None
    h, w = bgr.shape[:2]
    record = {"stem": stem, "source": source, "file": f"{stem}.bin", "orig_size": [w, h],
              "scale": list(scale) if isinstance(scale, tuple) else float(scale),
              "pad": [int(p) for p in pad], "image_id": image.image_id}
    return record, np.ascontiguousarray(tensor.astype(np_dtype(layout.dtype), copy=False))


def _tool_preprocess(tool: ModuleType, bgr, path: Path, layout: TensorLayout):
    """``tool.preprocess`` (or ``tool.pixels`` for uint8) on one image, any failure of it a ToolError naming
    the image."""
    hook = tool.pixels if layout.input_format == "uint8" else tool.preprocess
    try:
        tensor, scale, pad = hook(bgr)
    except ToolError as err:
        raise ToolError(f"image {path} cannot be preprocessed: {err}") from None
    except Exception as err:  # e.g. cv2.error on a shape the model's resize cannot take
        reason = (str(err).strip().splitlines() or [""])[-1][:200]
        raise ToolError(f"image {path} cannot be preprocessed ({type(err).__name__}: {reason}): replace it, "
                        "or pass --skip-bad to leave it out") from None
    expected = layout.shape
    if tuple(np.shape(tensor)) != expected:
        raise ToolError(f"image {path} gave a tensor of shape {list(np.shape(tensor))}, expected {list(expected)}: "
                        "leave it out with --skip-bad")
    return tensor, scale, pad


#: the journal reaches the disk itself (fsync, against power loss) at most this often: an fsync per
#: image cost 11 ms here, more than preprocessing a uint8 image, and 160 ms on a busy disk (the main
#: thread waits while the workers run dry); a record lost to a power cut only means that image is
#: preprocessed again on resume (the tensor files are not fsynced either)
JOURNAL_SYNC_S = 5.0


def _sync_every(journal, last: float, interval: float) -> float:
    """fsync ``journal`` when ``interval`` seconds have passed since ``last``; the time of the last sync."""
    now = time.monotonic()
    if now - last < interval:
        return last
    os.fsync(journal.fileno())
    return now


#: images submitted ahead of the one being journalled, per worker: enough to keep every worker busy,
#: few enough that an error stops the run after a handful of images, whatever the machine's load
AHEAD_PER_WORKER = 2


@contextlib.contextmanager
def ordered_map(workers: int):
    """``map`` (serial) or an order-keeping map over a thread pool with a bounded window; on error or
    Ctrl-C, nothing more is submitted and only the images already submitted finish.

    ``ThreadPoolExecutor.map`` submits every image at once, so on a busy machine the workers could
    preprocess the whole dataset before the main thread met the first error.
    """
    if workers == 1:
        yield map
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess")

    def bounded_map(fn, items):
        pending: deque = deque()
        it = iter(items)
        for item in itertools.islice(it, workers * AHEAD_PER_WORKER):
            pending.append(pool.submit(fn, item))
        while pending:
            result = pending.popleft().result()
            for item in itertools.islice(it, 1):
                pending.append(pool.submit(fn, item))
            yield result

    try:
        yield bounded_map
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _prod(values) -> int:
    result = 1
    for v in values:
        result *= int(v)
    return result


# --- inference ----------------------------------------------------------------------------------

def run_inference(spec: ModelSpec, model_path: str | os.PathLike, prep_dir: str | os.PathLike,
                  out_dir: str | os.PathLike, *, backend: str, batch: int, device: int | str = 0,
                  loop: int = 1, force: bool = False) -> Path:
    """Run a backend over a preprocessed dataset; returns the ais_bench-layout result directory.

    The temporary folders of a killed run are removed first. With ``force``, earlier results are
    replaced only once the new run has finished: a failing rerun keeps them. ``device="0,1,2,3"``
    shards the images across those devices, one process each (:mod:`common.sharding`).
    """
    from common.backends import make_backend
    from common.sharding import ShardedRunner, parse_devices

    manifest = Manifest.load(prep_dir)
    if manifest.model != spec.name:
        raise ToolError(f"{prep_dir} was preprocessed for {manifest.model}, not {spec.name}: rerun the data step")
    _check_result_stems(manifest, prep_dir)
    spec.check_batch(batch)
    devices = parse_devices(device)
    runner = (ShardedRunner(backend, model_path, devices) if len(devices) > 1
              else make_backend(backend, model_path, devices[0]))
    dirname = f"{spec.name}_{runner.name}_bs{batch}"
    out = Path(out_dir)
    result_dir = out / dirname
    inputs = [manifest.tensor_path(prep_dir, e) for e in manifest.entries]
    _mkdir(out)
    lock = out / f".{dirname}.lock"
    with exclusive_lock(lock, f"{result_dir}"):
        try:
            _remove_inference_orphans(out, dirname)
            if not (result_dir.exists() and any(result_dir.iterdir())):
                return runner.run(inputs, out, dirname, batch, loop=loop)
            if not force:
                raise ToolError(f"{result_dir} already holds results: pass --force to overwrite them")
            staging = out / f".{dirname}{FORCE_SUFFIX}"
            _mkdir(staging)
            try:
                runner.run(inputs, staging, dirname, batch, loop=loop)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            _replace_results(staging, out, dirname)
            return result_dir
        finally:
            lock.unlink(missing_ok=True)


def _check_result_stems(manifest: Manifest, prep_dir) -> None:
    """Refuse, before any inference, tensors whose results ais_bench would name other than the manifest's
    stems (a dotted name from an older data step): evaluation could not find them afterwards."""
    from common.backends import output_stem

    for entry in manifest.entries:
        named = output_stem(entry.file)
        if named != entry.stem:
            raise ToolError(f"tensor {entry.file} in {prep_dir} would give results named {named}_<k>.bin, not "
                            f"{entry.stem}_<k>.bin: rerun the data step with --force (stems hold no dots now)")


def _remove_inference_orphans(out: Path, dirname: str) -> None:
    """The staging folders and temporary files that a killed run of ``dirname`` left in ``out``."""
    from common.benchsummary import SUMMARY_SUFFIX

    for pattern in (f".{dirname}.*.part", f".{dirname}{SUMMARY_SUFFIX}.*.part"):
        for orphan in out.glob(pattern):
            _remove(orphan)


def _replace_results(staging: Path, out: Path, dirname: str) -> None:
    """Move a finished run (``staging/<dirname>`` + its summary) over the earlier one in ``out``."""
    from common.benchsummary import SUMMARY_SUFFIX

    summary = f"{dirname}{SUMMARY_SUFFIX}"
    _swap_in(staging / dirname, out / dirname)
    try:
        os.replace(staging / summary, out / summary)
        shutil.rmtree(staging)
    except OSError as err:
        raise ToolError(os_error_message(err, out / summary)) from err


# --- evaluation ---------------------------------------------------------------------------------

class Scorer:
    """One image's outputs -> the tool's postprocess -> the task's evaluator (COCO AP, or VOC mIoU).

    Shared by :func:`evaluate` (result files) and :mod:`common.streaming` (outputs in memory), so both
    score the same way. :meth:`postprocess` is pure (safe in worker threads); :meth:`add` is not.
    """

    def __init__(self, tool: ModuleType, target: str, annotation_file: Path, data_root: str | os.PathLike):
        from common.metrics import CocoEvaluator, VocSegEvaluator

        self.tool, self.target = tool, target
        self.segmentation = tool.SPEC.task == "semantic-segmentation"
        self.detections: list[dict] | None = None if self.segmentation else []
        if self.segmentation:
            from common.dataset import VocDataset

            dataset = VocDataset.open(data_root)
            self._labels = {str(im.path): im.label_path for im in dataset.images}
            self._label_file = dataset.annotation_file
            self.listed = len(dataset.images)
            self.evaluator = VocSegEvaluator()
        else:
            ann = Path(annotation_file)
            iou_types = ("bbox", "segm") if tool.SPEC.task == "instance-segmentation" else ("bbox",)
            self.evaluator = CocoEvaluator(ann, iou_types=iou_types)
            self.evaluator.reset()
            self.listed = self.evaluator.num_images

    def postprocess(self, entry: ManifestEntry, outputs: list[np.ndarray]):
        if self.segmentation and entry.source not in self._labels:
            raise ToolError(f"{entry.source} is not in {self._label_file}: preprocess and evaluate the same dataset")
        return self.tool.postprocess(outputs, entry, self.target)

    def add(self, entry: ManifestEntry, result) -> None:
        """Score one image's postprocessed result (images in dataset order)."""
        if self.segmentation:
            from common.dataset import read_label_png

            self.evaluator.process(entry.stem, (result, read_label_png(self._labels[entry.source])))
        else:
            self.detections.extend(result)
            self.evaluator.process(entry.image_id, result)

    def metrics(self) -> dict:
        return self.evaluator.evaluate()


def evaluate(tool: ModuleType, prep_dir: str | os.PathLike, result_dir: str | os.PathLike, out_dir: str | os.PathLike,
             *, target: str, provenance, annotation_file: str | os.PathLike | None = None,
             notes: tuple[str, ...] = (), force: bool = False):
    """Evaluate a result directory (COCO mAP, or VOC mIoU for segmentation); writes report.json /
    report.md (and detections.json for detectors).

    ``provenance`` is a :class:`common.report.Provenance` (what produced the numbers).
    """
    from common.resultfiles import read_results

    spec: ModelSpec = tool.SPEC
    manifest = Manifest.load(prep_dir)
    if manifest.model != spec.name:
        raise ToolError(f"{prep_dir} was preprocessed for {manifest.model}, not {spec.name}")
    ann = Path(annotation_file or manifest.meta["annotation_file"])
    results = read_results(result_dir, [e.stem for e in manifest.entries], spec.outputs_for(target))
    scorer = Scorer(tool, target, ann, manifest.meta.get("data_root", ""))
    with StepProgress(f"{spec.name} evaluate", len(manifest.entries), "images") as progress:
        for entry in manifest.entries:
            scorer.add(entry, scorer.postprocess(entry, results[entry.stem]))
            progress.advance()
    return write_evaluation(scorer, ann, manifest.entries, manifest.skipped, out_dir, provenance=provenance,
                            notes=(*notes, f"target: {target}"), force=force)


def write_evaluation(scorer: Scorer, ann: Path, entries: list[ManifestEntry], skipped: list[dict],
                     out_dir: str | os.PathLike, *, provenance, notes: tuple[str, ...], force: bool):
    """The scorer's metrics as report.json / report.md beside the published figures (+ detections.json)."""
    from common.report import DatasetInfo, Report, published_from_spec, write_report

    spec: ModelSpec = scorer.tool.SPEC
    figures, _, tolerance = published_from_spec(spec.published, where=str(spec.path))
    dataset = DatasetInfo(path=str(ann), num_images=len(entries), partial=len(entries) < scorer.listed,
                          skipped=list(skipped))
    report = Report(model=spec.name, task=spec.task, metrics=scorer.metrics(), provenance=provenance,
                    dataset=dataset, published=figures, tolerance_rel=tolerance, notes=list(notes))
    out = Path(out_dir)
    write_report(report, out, force=force)
    if scorer.detections is not None:
        write_json_atomic(out / "detections.json", scorer.detections)
    return report
