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

from common.contract import load_tool  # noqa: F401  (re-exported: the steps' entry point)
from common.dataset import open_dataset, read_image_bgr
from common.errors import ToolError
from common.fsutil import exclusive_lock, os_error_message, read_json, write_json_atomic
from common.infofile import check_info_path, write_bin_info, write_info
from common.manifest import MANIFEST_NAME, Manifest, ManifestEntry
from common.spec import ModelSpec
from common.tensors import np_dtype, tensor_stem, write_tensor

PROGRESS_NAME = ".progress.jsonl"  # one line per finished image; removed once manifest.json is written
RUN_META_NAME = ".progress-meta.json"
#: hidden siblings of an output folder: the rebuild of a --force run, and the old folder while swapping
FORCE_SUFFIX = ".force.part"
OLD_SUFFIX = ".old.part"


class Progress:
    """A terse progress line on stderr (no dependency, works in CI logs)."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.start, self.last = total, label, time.monotonic(), 0.0
        self.finished = False

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self.finished:
            return
        if done == self.total or now - self.last > 2.0:
            self.last = now
            rate = done / max(now - self.start, 1e-9)
            print(f"{self.label}: {done}/{self.total} ({rate:.1f}/s)", file=sys.stderr, flush=True)
            self.finished = done == self.total


# --- preprocessing ------------------------------------------------------------------------------

def preprocess_dataset(tool: ModuleType, data_root: str | os.PathLike, out_dir: str | os.PathLike, *,
                       limit: int | None = None, skip_bad: bool = False, force: bool = False,
                       workers: int = 1) -> Manifest:
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
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ToolError(f"workers={workers!r} is invalid: use 1 (serial) or more")
    spec: ModelSpec = tool.SPEC
    out = Path(out_dir).resolve()
    dataset = open_dataset(spec.dataset, Path(data_root).resolve())
    images = sorted(dataset.images, key=lambda im: im.image_id)[: limit or None]
    stems = _tensor_stems(images, out)
    # every [input] setting (shape, mean/std, rounding, EXIF rule, ...): a resumed run whose data
    # file changed in between would otherwise mix tensors made under two rules
    run_meta = {"model": spec.name, "input": json.loads(json.dumps(dataclasses.asdict(spec.input))),
                "annotation_file": str(dataset.annotation_file), "limit": limit}
    finished = (out / MANIFEST_NAME).exists()
    if finished and not force:
        raise ToolError(f"{out} already holds a preprocessed dataset: pass --force to redo it")
    work = out.parent / f".{out.name}{FORCE_SUFFIX}" if finished else out
    _mkdir(work)
    with exclusive_lock(work / PROGRESS_NAME, f"a dataset into {out}") as journal:
        _start_run(work, journal, run_meta, force)
        entry_bytes = int(np_dtype(spec.input.dtype).itemsize) * int(_prod(spec.input.shape))
        done = _journalled(work, journal, entry_bytes)
        if done:
            print(f"resuming: {len(done)} of {len(images)} images already done", file=sys.stderr)
        progress = Progress(len(images), f"{spec.name} preprocess")
        todo = [image for image in images if str(image.path) not in done]
        dtype = np_dtype(spec.input.dtype)

        def one(image) -> dict:
            return _preprocess_image(tool, image, stems[str(image.path)], work, dtype, skip_bad)

        with _ordered_map(workers) as ordered_map:
            for n, rec in enumerate(ordered_map(one, todo), len(images) - len(todo) + 1):
                journal.write(json.dumps(rec) + "\n")
                journal.flush()
                os.fsync(journal.fileno())
                done[rec["source"]] = rec
                progress.update(n)
        progress.update(len(images))
        manifest = _write_manifest(spec, dataset, images, done, work, out)
        (work / PROGRESS_NAME).unlink()
        (work / RUN_META_NAME).unlink()
    if work != out:
        _swap_in(work, out)
    if manifest.skipped:
        print(f"warning: {len(manifest.skipped)} bad image(s) skipped and recorded in {out / MANIFEST_NAME}",
              file=sys.stderr)
    return manifest


def _tensor_stems(images, out: Path) -> dict[str, str]:
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


def _write_manifest(spec: ModelSpec, dataset, images, done: dict[str, dict], work: Path, out: Path) -> Manifest:
    """manifest.json and the .info files in ``work``, naming the tensors where they will be: in ``out``."""
    records = [done[str(im.path)] for im in images]
    entries = [ManifestEntry.from_dict(r) for r in records if not r.get("skipped")]
    skipped = [{"source": r["source"], "reason": r["reason"]} for r in records if r.get("skipped")]
    if not entries:
        raise ToolError(f"no image of {dataset.root} could be preprocessed (all {len(skipped)} were bad)")
    manifest = Manifest(model=spec.name, input_name=spec.input.name, dtype=spec.input.dtype,
                        shape=tuple(spec.input.shape), entries=entries, skipped=skipped,
                        meta={"annotation_file": str(dataset.annotation_file), "data_root": str(dataset.root)})
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


def _preprocess_image(tool: ModuleType, image, stem: str, out: Path, dtype, skip_bad: bool) -> dict:
    """One image -> its tensor file; the journal record (a skipped record for a bad image with skip_bad).

    Every per-image failure (unreadable, truncated, too thin for the model, ...) is skippable;
    failures to write the tensor (disk full) are not: they are not the image's fault.
    """
    source = str(image.path)
    try:
        bgr = read_image_bgr(image.path, exif=tool.SPEC.input.exif_orientation == "apply")
        tensor, scale, pad = _tool_preprocess(tool, bgr, image.path)
    except ToolError as err:
        if not skip_bad:
            raise
        return {"skipped": True, "source": source, "reason": str(err)}
    write_tensor(out / f"{stem}.bin", tensor.astype(dtype, copy=False))
    h, w = bgr.shape[:2]
    return {"stem": stem, "source": source, "file": f"{stem}.bin", "orig_size": [w, h],
            "scale": list(scale) if isinstance(scale, tuple) else float(scale),
            "pad": [int(p) for p in pad], "image_id": image.image_id}


def _tool_preprocess(tool: ModuleType, bgr, path: Path):
    """``tool.preprocess`` on one image, any failure of it a ToolError naming the image."""
    try:
        tensor, scale, pad = tool.preprocess(bgr)
    except ToolError as err:
        raise ToolError(f"image {path} cannot be preprocessed: {err}") from None
    except Exception as err:  # e.g. cv2.error on a shape the model's resize cannot take
        reason = (str(err).strip().splitlines() or [""])[-1][:200]
        raise ToolError(f"image {path} cannot be preprocessed ({type(err).__name__}: {reason}): replace it, "
                        "or pass --skip-bad to leave it out") from None
    expected = tuple(tool.SPEC.input.shape)
    if tuple(np.shape(tensor)) != expected:
        raise ToolError(f"image {path} gave a tensor of shape {list(np.shape(tensor))}, expected {list(expected)}: "
                        "leave it out with --skip-bad")
    return tensor, scale, pad


#: images submitted ahead of the one being journalled, per worker: enough to keep every worker busy,
#: few enough that an error stops the run after a handful of images, whatever the machine's load
AHEAD_PER_WORKER = 2


@contextlib.contextmanager
def _ordered_map(workers: int):
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
                  out_dir: str | os.PathLike, *, backend: str, batch: int, device: int = 0,
                  loop: int = 1, force: bool = False) -> Path:
    """Run a backend over a preprocessed dataset; returns the ais_bench-layout result directory.

    The temporary folders of a killed run are removed first. With ``force``, earlier results are
    replaced only once the new run has finished: a failing rerun keeps them.
    """
    from common.backends import make_backend

    manifest = Manifest.load(prep_dir)
    if manifest.model != spec.name:
        raise ToolError(f"{prep_dir} was preprocessed for {manifest.model}, not {spec.name}: rerun the data step")
    _check_result_stems(manifest, prep_dir)
    spec.check_batch(batch)
    runner = make_backend(backend, model_path, device)
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
    from common.summary import SUMMARY_SUFFIX

    for pattern in (f".{dirname}.*.part", f".{dirname}{SUMMARY_SUFFIX}.*.part"):
        for orphan in out.glob(pattern):
            _remove(orphan)


def _replace_results(staging: Path, out: Path, dirname: str) -> None:
    """Move a finished run (``staging/<dirname>`` + its summary) over the earlier one in ``out``."""
    from common.summary import SUMMARY_SUFFIX

    summary = f"{dirname}{SUMMARY_SUFFIX}"
    _swap_in(staging / dirname, out / dirname)
    try:
        os.replace(staging / summary, out / summary)
        shutil.rmtree(staging)
    except OSError as err:
        raise ToolError(os_error_message(err, out / summary)) from err


# --- evaluation ---------------------------------------------------------------------------------

def postprocess_results(tool: ModuleType, manifest: Manifest, result_dir: str | os.PathLike,
                        target: str) -> list[dict]:
    """Read and validate every result file, then turn them into COCO detections."""
    from common.results import read_results

    spec: ModelSpec = tool.SPEC
    outputs = spec.outputs_for(target)
    results = read_results(result_dir, [e.stem for e in manifest.entries], outputs)
    detections: list[dict] = []
    for entry in manifest.entries:
        detections.extend(tool.postprocess(results[entry.stem], entry, target))
    return detections


def evaluate(tool: ModuleType, prep_dir: str | os.PathLike, result_dir: str | os.PathLike, out_dir: str | os.PathLike,
             *, target: str, provenance, annotation_file: str | os.PathLike | None = None,
             notes: tuple[str, ...] = (), force: bool = False):
    """Evaluate a result directory (COCO mAP, or VOC mIoU for segmentation); writes report.json /
    report.md (and detections.json for detectors).

    ``provenance`` is a :class:`common.report.Provenance` (what produced the numbers).
    """
    from common.report import DatasetInfo, Report, published_from_spec, write_report

    spec: ModelSpec = tool.SPEC
    manifest = Manifest.load(prep_dir)
    if manifest.model != spec.name:
        raise ToolError(f"{prep_dir} was preprocessed for {manifest.model}, not {spec.name}")
    ann = Path(annotation_file or manifest.meta["annotation_file"])
    if spec.task == "semantic-segmentation":
        metrics, n_listed = _segmentation_metrics(tool, manifest, result_dir, target)
        detections = None
    else:
        metrics, detections = _coco_metrics(tool, manifest, result_dir, target, ann)
        n_listed = len(json.loads(ann.read_text()).get("images", [])) if ann.is_file() else 0
    figures, _, tolerance = published_from_spec(spec.published, where=str(spec.path))
    dataset = DatasetInfo(path=str(ann), num_images=len(manifest.entries),
                          partial=len(manifest.entries) < n_listed, skipped=list(manifest.skipped))
    report = Report(model=spec.name, task=spec.task, metrics=metrics, provenance=provenance, dataset=dataset,
                    published=figures, tolerance_rel=tolerance, notes=[*notes, f"target: {target}"])
    out = Path(out_dir)
    write_report(report, out, force=force)
    if detections is not None:
        write_json_atomic(out / "detections.json", detections)
    return report


def _coco_metrics(tool: ModuleType, manifest: Manifest, result_dir, target: str, ann: Path):
    """(COCO bbox/segm metrics, the detections they were computed from)."""
    from common.metrics import CocoEvaluator

    detections = postprocess_results(tool, manifest, result_dir, target)
    iou_types = ("bbox", "segm") if tool.SPEC.task == "instance-segmentation" else ("bbox",)
    evaluator = CocoEvaluator(ann, iou_types=iou_types)
    evaluator.reset()
    by_image: dict[int, list[dict]] = {e.image_id: [] for e in manifest.entries}
    for det in detections:
        by_image[det["image_id"]].append(det)
    for image_id, dets in by_image.items():
        evaluator.process(image_id, dets)
    return evaluator.evaluate(), detections


def _segmentation_metrics(tool: ModuleType, manifest: Manifest, result_dir, target: str):
    """(VOC mIoU/mAcc/aAcc, number of images the split lists): label maps against the ground truth."""
    from common.dataset import VocDataset, read_label_png
    from common.metrics import VocSegEvaluator
    from common.results import read_results

    dataset = VocDataset.open(manifest.meta["data_root"])
    labels = {str(im.path): im.label_path for im in dataset.images}
    results = read_results(result_dir, [e.stem for e in manifest.entries], tool.SPEC.outputs_for(target))
    evaluator = VocSegEvaluator()
    progress = Progress(len(manifest.entries), f"{tool.SPEC.name} evaluate")
    for n, entry in enumerate(manifest.entries, 1):
        if entry.source not in labels:
            raise ToolError(f"{entry.source} is not in {dataset.annotation_file}: preprocess and evaluate the "
                            "same dataset")
        evaluator.process(entry.stem, (tool.postprocess(results[entry.stem], entry, target),
                                       read_label_png(labels[entry.source])))
        progress.update(n)
    return evaluator.evaluate(), len(dataset.images)
