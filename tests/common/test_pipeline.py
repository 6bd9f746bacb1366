"""The generic preprocessing step: outputs, resume after interruption, bad images, overwrite guard."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common import pipeline
from common.demococo import make_mini_coco
from common.errors import ToolError
from common.infofile import read_info
from common.manifest import Manifest
from common.tensors import read_tensor


@pytest.fixture
def coco(tmp_path):
    return make_mini_coco(tmp_path / "coco", n_images=5, seed=1)


def test_writes_bins_manifest_and_info(tiny_tool, coco, tmp_path):
    out = tmp_path / "prep"
    m = pipeline.preprocess_dataset(tiny_tool, coco, out)
    assert len(m.entries) == 5 and not m.skipped
    e = m.entries[0]
    t = read_tensor(out / e.file, "float32", (3, 32, 48))
    assert t.max() <= 1.0 and e.image_id == 1000 and e.source.endswith(".jpg")
    w, h = e.orig_size
    assert e.pad[0] + e.pad[2] == 48 - int(w * e.scale) and e.pad[1] + e.pad[3] == 32 - int(h * e.scale)
    assert [line.stem for line in read_info(out / "tiny.info")] == [x.stem for x in m.entries]
    assert read_info(out / "tiny_jpeg.info")[0].width == w
    assert Manifest.load(out) == m
    assert not (out / pipeline.PROGRESS_NAME).exists()


def test_refuses_to_overwrite_without_force(tiny_tool, coco, tmp_path):
    out = tmp_path / "prep"
    pipeline.preprocess_dataset(tiny_tool, coco, out, limit=2)
    with pytest.raises(ToolError, match="--force"):
        pipeline.preprocess_dataset(tiny_tool, coco, out)
    assert len(pipeline.preprocess_dataset(tiny_tool, coco, out, force=True).entries) == 5


def test_interrupted_run_resumes_and_ignores_half_written_tensor(tiny_tool, coco, tmp_path):
    out = tmp_path / "prep"
    calls = []
    real = tiny_tool.preprocess

    def dying(bgr):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the third image
        return real(bgr)

    tiny_tool.preprocess = dying
    with pytest.raises(KeyboardInterrupt):
        pipeline.preprocess_dataset(tiny_tool, coco, out)
    assert not (out / "manifest.json").exists()
    # a half-written tensor from a kill: wrong size under the final name, but not journalled as done
    journal = (out / pipeline.PROGRESS_NAME).read_text().splitlines()
    assert len(journal) == 2
    first = json.loads(journal[0])
    (out / first["file"]).write_bytes(b"\0" * 10)  # damaged after being journalled
    with open(out / pipeline.PROGRESS_NAME, "a") as f:
        f.write('{"stem": "cut')  # a journal line cut by a kill

    tiny_tool.preprocess = real
    calls.clear()
    redone = []
    tiny_tool.preprocess = lambda bgr: (redone.append(1), real(bgr))[1]
    m = pipeline.preprocess_dataset(tiny_tool, coco, out)
    assert len(redone) == 4  # 3 never done + 1 damaged; the intact one is reused
    assert len(m.entries) == 5
    for e in m.entries:
        read_tensor(out / e.file, "float32", (3, 32, 48))


def test_unfinished_run_of_another_model_is_not_mixed(tiny_tool, coco, tmp_path):
    out = tmp_path / "prep"
    out.mkdir()
    (out / pipeline.RUN_META_NAME).write_text(json.dumps({"model": "other"}))
    with pytest.raises(ToolError, match="unfinished run with other settings"):
        pipeline.preprocess_dataset(tiny_tool, coco, out)


def test_corrupt_image_stops_or_is_skipped_and_recorded(tiny_tool, coco, tmp_path):
    bad = sorted((coco / "val2017").glob("*.jpg"))[1]
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ToolError, match=rf"image .*{bad.name} is corrupt.*--skip-bad"):
        pipeline.preprocess_dataset(tiny_tool, coco, tmp_path / "a")
    m = pipeline.preprocess_dataset(tiny_tool, coco, tmp_path / "b", skip_bad=True)
    assert len(m.entries) == 4 and m.partial
    assert m.skipped[0]["source"] == str(bad) and "corrupt" in m.skipped[0]["reason"]


def _no_root(root):
    pass  # the dataset directory never exists


def _bad_json(root):
    (root / "annotations" / "instances_val2017.json").write_text("{oops")


def _no_annotations(root):
    (root / "annotations" / "instances_val2017.json").unlink()


def _no_images(root):
    for p in (root / "val2017").iterdir():
        p.unlink()


@pytest.mark.parametrize("damage, message", [
    (_no_root, "dataset directory .* not found"),
    (_bad_json, "unreadable"),
    (_no_annotations, "annotation file .* not found"),
    (_no_images, "is empty"),
])
def test_dataset_problems_are_one_line_errors(tiny_tool, tmp_path, damage, message):
    root = tmp_path / "coco"
    if damage is not _no_root:
        make_mini_coco(root, n_images=2)
    damage(root)
    with pytest.raises(ToolError, match=message):
        pipeline.preprocess_dataset(tiny_tool, root, tmp_path / "out")


def test_preprocessing_is_deterministic(tiny_tool, coco, tmp_path):
    a = pipeline.preprocess_dataset(tiny_tool, coco, tmp_path / "a", limit=1)
    b = pipeline.preprocess_dataset(tiny_tool, coco, tmp_path / "b", limit=1)
    ta = np.fromfile(tmp_path / "a" / a.entries[0].file, np.float32)
    tb = np.fromfile(tmp_path / "b" / b.entries[0].file, np.float32)
    assert np.array_equal(ta, tb)


def test_parallel_workers_write_the_same_dataset_in_the_same_order(tiny_tool, tmp_path):
    coco = make_mini_coco(tmp_path / "coco", n_images=12, seed=4)
    serial = pipeline.preprocess_dataset(tiny_tool, coco, tmp_path / "serial")
    parallel = pipeline.preprocess_dataset(tiny_tool, coco, tmp_path / "parallel", workers=3)
    assert parallel.entries == serial.entries
    for e in serial.entries:
        assert (tmp_path / "parallel" / e.file).read_bytes() == (tmp_path / "serial" / e.file).read_bytes()
    assert (tmp_path / "parallel" / "tiny.info").read_text() == (
        tmp_path / "serial" / "tiny.info").read_text().replace("/serial/", "/parallel/")


def test_parallel_error_stops_queued_images_and_the_rerun_resumes(tiny_tool, tmp_path):
    coco = make_mini_coco(tmp_path / "coco", n_images=30, seed=5)
    bad = sorted((coco / "val2017").glob("*.jpg"))[3]
    bad.write_bytes(b"garbage")
    calls = []
    real = tiny_tool.preprocess
    tiny_tool.preprocess = lambda bgr: (calls.append(1), real(bgr))[1]
    out = tmp_path / "prep"
    with pytest.raises(ToolError, match=bad.name):
        pipeline.preprocess_dataset(tiny_tool, coco, out, workers=2)
    # at most the window (2 per worker) beyond the 3 good images was started: the rest never ran,
    # however fast the workers were compared with the journalling thread
    assert len(calls) <= 3 + 2 * pipeline.AHEAD_PER_WORKER
    journalled = (out / pipeline.PROGRESS_NAME).read_text().splitlines()
    assert len(journalled) == 3  # the images before the bad one, in order
    bad.unlink()
    good = make_mini_coco(tmp_path / "spare", n_images=1, seed=6)
    next((good / "val2017").glob("*.jpg")).rename(bad)  # the user replaces the broken file
    m = pipeline.preprocess_dataset(tiny_tool, coco, out, workers=2)
    assert len(m.entries) == 30


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_invalid_worker_counts_are_refused(tiny_tool, coco, tmp_path, workers):
    with pytest.raises(ToolError, match="workers=.* is invalid"):
        pipeline.preprocess_dataset(tiny_tool, coco, tmp_path / "out", workers=workers)
