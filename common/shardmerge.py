"""Sharded runs across machines: ``--shard I/N`` on ``data``, ``infer`` and ``stream``, then ``merge``.

A Kubernetes Indexed Job runs N pods of one command; each reads its index from JOB_COMPLETION_INDEX
(``--shard auto/N``) and processes a deterministic, contiguous part of the dataset's sorted image
list (:func:`common.sharding.shard`) into its own folder. A shard is resumable on its own and
writes ``shard.json`` last, so a folder without it is known to be unfinished. ``merge`` refuses
until all N shards are complete (naming every one that is not, in one line), then scores their
results in dataset order with the :class:`common.pipeline.Scorer` an unsharded run uses: the
same detections, byte for byte, and the same metrics.

Shard folders (``<shards>/<I>``):

* ``stream --shard I/N --out <shards>/<I>``: ``results.jsonl`` (one line per image: its manifest
  record and postprocessed result; a segmentation map in ``arrays/<stem>.npy``) + ``shard.json``.
* ``data --shard I/N --out <shards>/<I>/data`` then ``infer --shard I/N --prep <shards>/<I>/data
  --out <shards>/<I>``: the data step's ``shard.json`` in its folder, the infer step's (naming the
  prep folder and the result directory) in ``<shards>/<I>``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable, Mapping, Sequence

import numpy as np

from common.errors import ToolError
from common.fsutil import exclusive_lock, os_error_message, read_json, write_bytes_atomic, write_json_atomic
from common.manifest import ManifestEntry
from common.sharding import shard

SHARD_FILE = "shard.json"
RESULTS_NAME = "results.jsonl"
ARRAYS_DIR = "arrays"
META_NAME = ".shard-meta.json"
#: the index Kubernetes gives each pod of an Indexed Job
INDEX_ENV = "JOB_COMPLETION_INDEX"


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """Shard ``index`` of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def select(self, images: Sequence, root) -> list:
        """This shard's part of ``images`` (sorted by the caller), refusing an empty shard."""
        part = shard(list(images), self.index, self.count)
        if not part:
            raise ToolError(f"--shard {self}: shard {self.index} of {root} holds no image (it has {len(images)}): "
                            f"use at most {len(images)} shards")
        return part


def parse_shard(text: str, environ: Mapping[str, str] | None = None) -> ShardSpec:
    """``"I/N"`` or ``"auto/N"`` (I from JOB_COMPLETION_INDEX) -> ShardSpec, or a one-line error with the fix."""
    env = os.environ if environ is None else environ
    match = re.fullmatch(r"\s*([^/\s]+)\s*/\s*(\d+)\s*", text)
    if not match or not (match[1].isdigit() or match[1] == "auto"):
        raise ToolError(f"--shard {text!r} is invalid: use I/N with 0 <= I < N (e.g. 0/4), or auto/N in a "
                        f"Kubernetes Indexed Job (I from ${INDEX_ENV})")
    count = int(match[2])
    if count < 1:
        raise ToolError(f"--shard {text!r}: N must be at least 1 (the number of shards)")
    if match[1] == "auto":
        value = env.get(INDEX_ENV)
        if value is None:
            raise ToolError(f"--shard auto/{count} needs ${INDEX_ENV} (set by a Kubernetes Indexed Job), which is "
                            f"unset: give the index instead, e.g. --shard 0/{count}")
        if not value.strip().isdigit():
            raise ToolError(f"--shard auto/{count}: ${INDEX_ENV}={value!r} is not a shard index (an integer "
                            f"0..{count - 1})")
        index, where, fix = int(value), f"${INDEX_ENV}={value.strip()}", f"make the Job's completions {count}"
    else:
        index, where, fix = int(match[1]), f"--shard {text.strip()}", "shards are numbered from 0"
    if index >= count:
        raise ToolError(f"{where}: shard {index} of {count} does not exist (valid: 0..{count - 1}): {fix}")
    return ShardSpec(index, count)


# --- shard.json -----------------------------------------------------------------------------------

def write_shard_record(folder: Path, spec: ShardSpec, stems: Sequence[str], **settings) -> dict:
    """``shard.json``: written last, so its presence means the shard finished (fixed keys + the run's settings)."""
    record = {"index": spec.index, "count": spec.count, "images": len(stems), "complete": True,
              "stems": list(stems), **settings}
    write_json_atomic(Path(folder) / SHARD_FILE, record)
    return record


def read_shard_record(folder: Path) -> dict | None:
    """A folder's ``shard.json`` (None when there is none)."""
    path = Path(folder) / SHARD_FILE
    if not path.exists():
        return None
    record = read_json(path, what="shard record")
    if not isinstance(record, dict):
        raise ToolError(f"{path} is not a shard record (a JSON object): rerun that shard with --force")
    return record


def check_prep_shard(prep: Path, spec: ShardSpec) -> dict:
    """The data step's record of ``prep``, which must be shard ``spec`` (``infer --shard``)."""
    record = read_shard_record(prep)
    if record is None:
        raise ToolError(f"{prep} holds no finished data shard ({SHARD_FILE}): preprocess it with "
                        f"`data --shard {spec}` first")
    if (record.get("index"), record.get("count")) != (spec.index, spec.count):
        raise ToolError(f"{prep} holds data shard {record.get('index')}/{record.get('count')}, not {spec}: "
                        "pass the matching --shard or --prep")
    return record


def infer_shard(spec, model_file: Path, prep: Path, out: Path, shard_spec: ShardSpec, *, backend: str, batch: int,
                device: str, force: bool) -> Path:
    """``infer --shard``: run a data shard's tensors, then ``shard.json`` naming its prep folder and results
    (relative to ``out`` where it can, so the shards folder may be mounted elsewhere for the merge)."""
    from common.pipeline import run_inference

    data = check_prep_shard(Path(prep), shard_spec)
    result_dir = run_inference(spec, model_file, prep, out, backend=backend, batch=batch, device=device,
                               force=force)
    where = os.path.relpath(Path(prep).resolve(), Path(out).resolve())
    write_shard_record(out, shard_spec, data["stems"], kind="infer", prep=where, results=result_dir.name,
                       **{k: data.get(k) for k in ("model", "input_format", "limit")}, target=None,
                       backend=backend, batch=batch, device=device, model_file=str(Path(model_file).resolve()))
    return result_dir


# --- a stream shard's journal ---------------------------------------------------------------------

class StreamShard:
    """``results.jsonl`` of ``stream --shard``: one line per finished image, flushed as written, so a
    killed shard resumes where it stopped; ``shard.json`` once every image of the shard is in."""

    def __init__(self, out: Path, spec: ShardSpec, journal, done: dict[str, dict]) -> None:
        self.out, self.spec, self.journal, self.done = out, spec, journal, done

    @classmethod
    @contextlib.contextmanager
    def open(cls, out: Path, spec: ShardSpec, settings: dict, force: bool):
        """Lock ``out``'s journal, check an unfinished run's settings (refused unless ``force``), load its lines."""
        out = Path(out)
        finished = read_shard_record(out)
        if finished is not None and not force:
            raise ToolError(f"{out} already holds finished shard {finished.get('index')}/{finished.get('count')}: "
                            "pass --force to redo it")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ToolError(os_error_message(err, out)) from err
        with exclusive_lock(out / RESULTS_NAME, f"shard {spec} into {out}") as journal:
            meta = out / META_NAME
            stale = meta.exists() and read_json(meta, what="shard settings") != settings
            if stale and not force:
                raise ToolError(f"{out} holds an unfinished shard run with other settings (shard, model, target, "
                                "input, dataset or backend): pass --force to discard it, or choose another OUT")
            if force:
                _discard(out, journal)
            for orphan in [*out.glob(".*.part"), *(out / ARRAYS_DIR).glob(".*.part")]:
                orphan.unlink()  # temporary files of a killed run
            write_json_atomic(meta, settings)
            journal.seek(0)
            yield cls(out, spec, journal, _journal_lines(journal.read(), journal))

    def add(self, entry: ManifestEntry, result) -> None:
        """Journal one image: its manifest record and postprocessed result (a segmentation map as a .npy)."""
        line: dict = {"record": dataclasses.asdict(entry)}
        if isinstance(result, np.ndarray):
            buffer = io.BytesIO()
            np.save(buffer, result, allow_pickle=False)
            line["array"] = f"{entry.stem}.npy"
            write_bytes_atomic(self.out / ARRAYS_DIR / line["array"], buffer.getvalue())
        else:
            line["result"] = result
        self._write(line)

    def skip(self, record: dict) -> None:
        """Journal a bad image left out with --skip-bad (recorded, as the data step does)."""
        self._write({"record": record})

    def _write(self, line: dict) -> None:
        self.journal.write(json.dumps(line) + "\n")
        self.journal.flush()  # in the OS once written: survives a kill of this process
        self.done[line["record"]["source"]] = line

    def finish(self, stems: Sequence[str], settings: dict) -> dict:
        os.fsync(self.journal.fileno())
        return write_shard_record(self.out, self.spec, stems, kind="stream", **settings)


def _discard(out: Path, journal) -> None:
    """Forget an earlier run of this shard folder (``--force``)."""
    (out / SHARD_FILE).unlink(missing_ok=True)
    shutil.rmtree(out / ARRAYS_DIR, ignore_errors=True)
    journal.truncate(0)


def _journal_lines(text: str, journal=None) -> dict[str, dict]:
    """The complete lines of a journal by source image; a line cut by a kill is cut off ``journal`` (open
    for writing) so that the next line starts on its own."""
    keep = text.rfind("\n") + 1
    if journal is not None and keep < len(text):
        journal.truncate(keep)
    done: dict[str, dict] = {}
    for line in text[:keep].splitlines():
        try:
            entry = json.loads(line)
            done[entry["record"]["source"]] = entry
        except (json.JSONDecodeError, KeyError, TypeError):
            name = getattr(journal, "name", RESULTS_NAME)
            raise ToolError(f"{name} has a damaged line: rerun this shard with --force") from None
    return done


def _decoded(folder: Path, line: dict):
    """A journal line's result: the detections as written, or the saved segmentation map."""
    if "array" in line:
        return np.load(folder / ARRAYS_DIR / line["array"], allow_pickle=False)
    return line["result"]


# --- merge ----------------------------------------------------------------------------------------

def check_shards(shards: Path, count: int) -> list[dict]:
    """Every shard record of ``shards/0..count-1``; one error line naming every missing or incomplete one."""
    if count < 1:
        raise ToolError(f"--count {count}: the number of shards must be at least 1")
    missing, incomplete, other, records = [], [], [], []
    for index in range(count):
        folder = shards / str(index)
        record = read_shard_record(folder) if folder.is_dir() else None
        if not folder.is_dir():
            missing.append(index)
        elif record is None or record.get("complete") is not True \
                or record.get("images") != len(record.get("stems", ())):
            incomplete.append(index)  # still running, or killed: it resumes when rerun
        elif (record.get("index"), record.get("count")) != (index, count):
            other.append(index)
        records.append(record)
    if missing or incomplete or other:
        problems = [f"{what}: {', '.join(map(str, found))}" for what, found in
                    (("missing", missing), ("incomplete", incomplete), (f"run with another N than {count}", other))
                    if found]
        rerun = " ".join(map(str, sorted(missing + incomplete + other)))
        raise ToolError(f"{shards}: not all {count} shards are complete ({'; '.join(problems)}): rerun shard(s) "
                        f"{rerun} with --shard I/{count} (or --shard auto/{count}), then merge again")
    return records


def _same_settings(records: list[dict], keys: Sequence[str]) -> dict:
    """The settings every shard shares; shards run with different ones cannot be merged."""
    first = records[0]
    for record in records[1:]:
        for key in keys:
            if record.get(key) != first.get(key):
                raise ToolError(f"shard {record['index']} was run with {key}={record.get(key)!r}, shard 0 with "
                                f"{first.get(key)!r}: rerun the odd one(s) with the same settings")
    return first


def merge_shards(tool: ModuleType, shards: Path, count: int, data_root, out: Path, *,
                 provenance: Callable[[dict], tuple], target: str | None = None,
                 annotation_file=None, force: bool = False):
    """Check, merge and evaluate once: report.json / report.md (+ detections.json) as an unsharded run writes.

    ``provenance(first_record)`` gives (provenance, notes): the CLI's options, or what the shards recorded.
    """
    from common.pipeline import Scorer, dataset_images, tensor_stems, write_evaluation

    spec = tool.SPEC
    out = Path(out)
    if (out / "report.json").exists() and not force:
        raise ToolError(f"{out / 'report.json'} already exists: pass --force to overwrite it")
    shards = Path(shards)
    records = check_shards(shards, count)
    first = _same_settings(records, ("kind", "model", "target", "input_format", "limit"))
    if first.get("model") != spec.name:
        raise ToolError(f"{shards} holds shards of {first.get('model')}, not {spec.name}: "
                        f"merge them with python -m tools.{first.get('model')}")
    dataset, images = dataset_images(spec, data_root, first.get("limit"))
    stems = tensor_stems(images, out)
    parts = [ShardSpec(r["index"], count).select(images, dataset.root) for r in records]
    for record, part in zip(records, parts):
        expected = [stems[str(im.path)] for im in part]
        if record["stems"] != expected:
            raise ToolError(f"shard {record['index']} in {shards} holds other images than shard {record['index']}/"
                            f"{count} of {dataset.root}: merge with the --data the shards ran on, or rerun it")
    target = target or first.get("target") or "ascend"
    ann = Path(annotation_file or first.get("annotations") or dataset.annotation_file)
    scorer = Scorer(tool, target, ann, dataset.root)
    entries, skipped = [], []
    for record, part in zip(records, parts):
        folder = shards / str(record["index"])
        read = _stream_shard_results if record.get("kind") == "stream" else _infer_shard_results
        for entry, result in read(scorer, folder, record, part, skipped):
            scorer.add(entry, result)
            entries.append(entry)
    prov, notes = provenance(first)
    print(f"merged {count} shards ({first.get('kind')}) of {shards}: {len(entries)} images", file=sys.stderr)
    return write_evaluation(scorer, ann, entries, skipped, out, provenance=prov,
                            notes=(*notes, f"target: {target}", f"merged from {count} shards ({first.get('kind')})"),
                            force=force)


def _stream_shard_results(scorer, folder: Path, record: dict, part: list, skipped: list):
    """(entry, postprocessed result) of a stream shard's images in dataset order; skipped ones into ``skipped``.

    Lines are matched by image file stem, and each entry names the image under the merge's ``--data``: the
    shards may have seen the dataset mounted elsewhere.
    """
    from common.tensors import tensor_stem

    lines = {tensor_stem(Path(line["record"]["source"])): line
             for line in _read_journal(folder / RESULTS_NAME).values()}
    absent = [image.path.name for image in part if tensor_stem(image.path) not in lines]
    if absent:
        raise ToolError(f"shard {record['index']}: {folder / RESULTS_NAME} lacks {len(absent)} of its images "
                        f"(first: {absent[0]}) though {SHARD_FILE} says complete: rerun it with --force")
    for image in part:
        line = lines[tensor_stem(image.path)]
        if line["record"].get("skipped"):
            skipped.append({"source": str(image.path), "reason": line["record"]["reason"]})
        else:
            entry = ManifestEntry.from_dict(line["record"])
            yield dataclasses.replace(entry, source=str(image.path)), _decoded(folder, line)


def _read_journal(path: Path) -> dict[str, dict]:
    try:
        return _journal_lines(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ToolError(os_error_message(err, path)) from err


def _infer_shard_results(scorer, folder: Path, record: dict, part: list, skipped: list):
    """(entry, postprocessed result) of an ``infer --shard`` folder: its data shard's manifest + result files."""
    from common.manifest import Manifest
    from common.resultfiles import read_results

    prep = (folder / record.get("prep", "")).resolve()
    manifest = Manifest.load(prep)
    results = read_results(folder / record.get("results", ""), [e.stem for e in manifest.entries],
                           scorer.tool.SPEC.outputs_for(scorer.target))
    skipped.extend(manifest.skipped)
    for entry in manifest.entries:
        yield entry, scorer.postprocess(entry, results[entry.stem])
