"""Sharded runs as a Kubernetes Indexed Job runs them: ``--shard I/N`` (or ``auto/N`` with
JOB_COMPLETION_INDEX) on the real CLI in subprocesses, shards killed with a real SIGKILL and rerun,
and ``merge``: the merged detections equal an unsharded run's byte for byte, with the same metrics."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from common.demococo import make_mini_coco
from common.errors import ToolError
from tests.common.test_data_robustness import error_line  # exit 2, one `error:` line, no traceback
from tests.common.test_segmentation_pipeline import seg_tool  # noqa: F401  (a fixture: the stand-in seg tool)

REPO = Path(__file__).resolve().parents[2]
MODEL = "fcos"  # the real tool and CLI (its module imports no torch); a tiny stand-in for its network below
IMAGES = 8
#: the variable Kubernetes sets in each pod of an Indexed Job (the interface, so spelled out here)
INDEX_ENV = "JOB_COMPLETION_INDEX"


def fcos_like_onnx(path: Path) -> Path:
    """FCOS's interface, (1, 3, 800, 1333) -> dets (1, 100, 5), labels (1, 100): 20 boxes a little
    shifted by the image's mean value, so every image gets its own detections."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 800, 1333])
    dets = helper.make_tensor_value_info("dets", TensorProto.FLOAT, [1, 100, 5])
    labels = helper.make_tensor_value_info("labels", TensorProto.INT64, [1, 100])
    rows = np.arange(100, dtype=np.float32)
    base = np.zeros((1, 100, 5), np.float32)
    base[0, :20] = np.stack([300 + 20 * rows[:20], 200 + 10 * rows[:20], 500 + 25 * rows[:20],
                             450 + 12 * rows[:20], 0.3 + 0.03 * rows[:20]], axis=1)
    gain = np.zeros((1, 100, 5), np.float32)
    gain[0, :20] = [1.0, 0.5, 1.5, 0.7, 1e-4]
    init = [numpy_helper.from_array(base, "base"), numpy_helper.from_array(gain, "gain"),
            numpy_helper.from_array(np.array([1, 1, 1], np.int64), "shape3"),
            numpy_helper.from_array(np.array([[0, 2, 16, 43, 58] * 20], np.int64), "classes")]
    nodes = [helper.make_node("ReduceMean", ["input"], ["m"], axes=[1, 2, 3], keepdims=1),
             helper.make_node("Reshape", ["m", "shape3"], ["m3"]),
             helper.make_node("Mul", ["m3", "gain"], ["shift"]),
             helper.make_node("Add", ["base", "shift"], ["dets"]),
             helper.make_node("Identity", ["classes"], ["labels"])]
    model = helper.make_model(helper.make_graph(nodes, "fcos_like", [x], [dets, labels], init),
                              opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return path


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m tools.fcos ARGS`` as a user runs it (JOB_COMPLETION_INDEX only where ``env`` sets it)."""
    environ = {k: v for k, v in os.environ.items() if k != INDEX_ENV}
    return subprocess.run([sys.executable, "-m", f"tools.{MODEL}", *args], cwd=REPO, capture_output=True,
                          text=True, env={**environ, **(env or {})}, timeout=600)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_mini_coco(tmp_path_factory.mktemp("shards") / "coco", n_images=IMAGES, seed=5)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return fcos_like_onnx(tmp_path_factory.mktemp("model") / "fcos_like.onnx")


@pytest.fixture(scope="module")
def unsharded(coco, model, tmp_path_factory):
    """One unsharded `stream` run: the reference every merge must reproduce."""
    out = tmp_path_factory.mktemp("unsharded") / "stream"
    ok(cli("stream", "--model", str(model), "--data", str(coco), "--out", str(out), "--workers", "2"))
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["bbox_mAP"] >= 0 and report["dataset"]["num_images"] == IMAGES
    return out


def stream_shard(model: Path, coco: Path, shards: Path, index: int, count: int, *extra: str,
                 env: dict | None = None) -> subprocess.CompletedProcess:
    return cli("stream", "--model", str(model), "--data", str(coco), "--out", str(shards / str(index)),
               "--shard", f"{index}/{count}", "--workers", "2", *extra, env=env)


def merge(shards: Path, count: int, coco: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return cli("merge", "--shards", str(shards), "--count", str(count), "--data", str(coco), "--out", str(out),
               *extra)


def assert_same_results(merged: Path, unsharded: Path) -> None:
    """Byte-identical detections and the same metrics and image count as the unsharded run."""
    assert (merged / "detections.json").read_bytes() == (unsharded / "detections.json").read_bytes()
    ours, theirs = (json.loads((d / "report.json").read_text()) for d in (merged, unsharded))
    assert json.dumps(ours["metrics"]) == json.dumps(theirs["metrics"])  # NaN (no small objects) included
    assert ours["dataset"] == theirs["dataset"]
    assert (merged / "report.md").exists()


def test_three_stream_shards_merged_equal_one_unsharded_run(coco, model, unsharded, tmp_path):
    shards = tmp_path / "shards"
    for index in range(3):
        # as in a pod: the index from the Indexed Job's variable
        ok(cli("stream", "--model", str(model), "--data", str(coco), "--out", str(shards / str(index)),
               "--shard", "auto/3", env={INDEX_ENV: str(index)}))
    records = [json.loads((shards / str(i) / "shard.json").read_text()) for i in range(3)]
    assert [(r["index"], r["count"], r["images"], r["complete"]) for r in records] == \
        [(0, 3, 2, True), (1, 3, 3, True), (2, 3, 3, True)]
    stems = [s for r in records for s in r["stems"]]
    assert stems == [f"{1000 + i:012d}" for i in range(IMAGES)]  # contiguous, in dataset order
    assert not list(shards.rglob("report.json")) and not list(shards.rglob("*.bin"))  # no evaluation per shard
    out = tmp_path / "merged"
    proc = ok(merge(shards, 3, coco, out))
    assert_same_results(out, unsharded)
    assert "merged from 3 shards (stream)" in json.loads((out / "report.json").read_text())["notes"]
    assert "bbox_mAP" in proc.stdout
    assert "already exists: pass --force" in error_line(merge(shards, 3, coco, out))
    ok(merge(shards, 3, coco, out, "--force"))
    elsewhere = shutil.copytree(coco, tmp_path / "mounted" / "coco")  # the merge pod mounts the data elsewhere
    ok(merge(shards, 3, Path(elsewhere), tmp_path / "merged_elsewhere"))
    assert (tmp_path / "merged_elsewhere" / "detections.json").read_bytes() == \
        (unsharded / "detections.json").read_bytes()
    report = json.loads((tmp_path / "merged_elsewhere" / "report.json").read_text())
    assert report["dataset"]["path"] == str(elsewhere / "annotations" / "instances_val2017.json")


def test_a_shard_killed_mid_run_resumes_and_the_merge_equals_the_unsharded_run(coco, model, unsharded, tmp_path):
    shards = tmp_path / "shards"
    ok(stream_shard(model, coco, shards, 1, 2))
    journal = shards / "0" / "results.jsonl"
    environ = {k: v for k, v in os.environ.items() if k != INDEX_ENV}
    victim = subprocess.Popen([sys.executable, "-m", f"tools.{MODEL}", "stream", "--model", str(model), "--data",
                               str(coco), "--out", str(shards / "0"), "--shard", "0/2", "--workers", "1"],
                              cwd=REPO, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (journal.exists() and journal.read_text().count("\n") >= 1):
        assert victim.poll() is None and time.monotonic() < deadline, "the shard ended before it was killed"
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done = journal.read_text().count("\n")
    assert 1 <= done < 4 and not (shards / "0" / "shard.json").exists()
    refused = error_line(merge(shards, 2, coco, tmp_path / "early"))
    assert "incomplete" in refused and "0" in refused and not (tmp_path / "early" / "report.json").exists()
    rerun = ok(stream_shard(model, coco, shards, 0, 2))
    assert f"resuming: {done} of 4 images already done" in rerun.stderr
    assert journal.read_text().count("\n") == 4  # each image once
    ok(merge(shards, 2, coco, tmp_path / "merged"))
    assert_same_results(tmp_path / "merged", unsharded)
    again = error_line(stream_shard(model, coco, shards, 0, 2))
    assert "already holds finished shard 0/2: pass --force" in again


def test_a_cut_journal_line_is_dropped_and_redone(coco, model, unsharded, tmp_path):
    """A kill in the middle of writing a line leaves half a line: the rerun drops it, never glues to it."""
    shards = tmp_path / "shards"
    ok(stream_shard(model, coco, shards, 0, 1))
    journal = shards / "0" / "results.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    (shards / "0" / "shard.json").unlink()
    rerun = ok(stream_shard(model, coco, shards, 0, 1))
    assert f"resuming: 3 of {IMAGES} images already done" in rerun.stderr
    ok(merge(shards, 1, coco, tmp_path / "merged"))
    assert_same_results(tmp_path / "merged", unsharded)


def test_data_and_infer_shards_merged_equal_the_unsharded_file_steps(coco, model, unsharded, tmp_path):
    prep, infer, out = tmp_path / "data", tmp_path / "infer", tmp_path / "eval"
    ok(cli("data", "--data", str(coco), "--out", str(prep)))
    results = ok(cli("infer", "--model", str(model), "--prep", str(prep), "--out", str(infer))).stdout.strip()
    ok(cli("eval", "--prep", str(prep), "--results", results, "--out", str(out)))
    shards = tmp_path / "shards"
    for index in range(2):
        folder = shards / str(index)
        ok(cli("data", "--data", str(coco), "--out", str(folder / "data"), "--shard", f"{index}/2"))
        ok(cli("infer", "--model", str(model), "--prep", str(folder / "data"), "--out", str(folder),
               "--shard", f"{index}/2"))
    data_record = json.loads((shards / "1" / "data" / "shard.json").read_text())
    assert (data_record["index"], data_record["count"], data_record["images"]) == (1, 2, 4)
    assert len(json.loads((shards / "1" / "data" / "manifest.json").read_text())["entries"]) == 4
    merged = tmp_path / "merged"
    ok(merge(shards, 2, coco, merged))
    assert_same_results(merged, out)
    assert (merged / "detections.json").read_bytes() == (unsharded / "detections.json").read_bytes()
    moved = tmp_path / "elsewhere"  # the shard records name their prep folder relative to themselves
    shutil.move(str(shards), str(moved))
    ok(merge(moved, 2, coco, tmp_path / "merged_moved"))
    assert (tmp_path / "merged_moved" / "detections.json").read_bytes() == (out / "detections.json").read_bytes()
    wrong = error_line(cli("infer", "--model", str(model), "--prep", str(moved / "0" / "data"),
                               "--out", str(tmp_path / "x"), "--shard", "1/2"))
    assert "holds data shard 0/2, not 1/2" in wrong


def test_merge_names_every_missing_and_incomplete_shard_in_one_line(coco, model, tmp_path):
    shards = tmp_path / "shards"
    ok(stream_shard(model, coco, shards, 0, 4))
    ok(stream_shard(model, coco, shards, 3, 4))
    (shards / "2").mkdir()
    (shards / "2" / "results.jsonl").write_text("")  # started, never finished
    error = error_line(merge(shards, 4, coco, tmp_path / "merged"))
    assert "missing: 1; incomplete: 2)" in error
    assert "rerun shard(s) 1 2 with --shard I/4" in error
    assert not (tmp_path / "merged").exists()
    wrong_count = error_line(merge(shards, 2, coco, tmp_path / "merged"))
    assert "run with another N than 2: 0" in wrong_count  # shard 0 of 4 is not shard 0 of 2


def test_bad_images_skipped_in_a_shard_are_recorded_as_in_one_run(coco, model, tmp_path):
    damaged = Path(shutil.copytree(coco, tmp_path / "coco"))
    bad = sorted((damaged / "val2017").glob("*.jpg"))[5]
    bad.write_bytes(b"not a jpeg")
    whole = tmp_path / "whole"
    ok(cli("stream", "--model", str(model), "--data", str(damaged), "--out", str(whole), "--skip-bad"))
    shards = tmp_path / "shards"
    for index in range(2):
        ok(stream_shard(model, damaged, shards, index, 2, "--skip-bad"))
    ok(merge(shards, 2, damaged, tmp_path / "merged"))
    assert_same_results(tmp_path / "merged", whole)
    skipped = json.loads((tmp_path / "merged" / "report.json").read_text())["dataset"]["skipped"]
    assert [s["source"] for s in skipped] == [str(bad)]


def test_merge_refuses_shards_of_another_dataset(coco, model, tmp_path):
    other = make_mini_coco(tmp_path / "other", n_images=IMAGES - 1, seed=5)
    shards = tmp_path / "shards"
    ok(stream_shard(model, other, shards, 0, 1))
    error = error_line(merge(shards, 1, coco, tmp_path / "merged"))
    assert "holds other images than shard 0/1" in error and "--data" in error


@pytest.mark.parametrize("value, env, message", [
    ("auto/4", None, f"--shard auto/4 needs ${INDEX_ENV} (set by a Kubernetes Indexed Job), which is unset"),
    ("auto/4", "7", f"${INDEX_ENV}=7: shard 7 of 4 does not exist (valid: 0..3): make the Job's completions 4"),
    ("auto/4", "x", f"--shard auto/4: ${INDEX_ENV}='x' is not a shard index"),
    ("4/4", None, "--shard 4/4: shard 4 of 4 does not exist (valid: 0..3)"),
    ("1/0", None, "--shard '1/0': N must be at least 1"),
    ("a/b", None, "--shard 'a/b' is invalid: use I/N"),
])
def test_bad_shard_specs_are_one_line_errors_before_any_work(coco, model, tmp_path, value, env, message):
    out = tmp_path / "out"
    for command in (["stream", "--model", str(model), "--data", str(coco)], ["data", "--data", str(coco)]):
        error = error_line(cli(*command, "--out", str(out), "--shard", value,
                                   env=None if env is None else {INDEX_ENV: env}))
        assert message in error, error
        assert not out.exists()


def test_more_shards_than_images_is_refused(coco, model, tmp_path):
    error = error_line(stream_shard(model, coco, tmp_path / "shards", 0, IMAGES + 1))  # 0 of 9: no image
    assert f"holds no image (it has {IMAGES}): use at most {IMAGES} shards" in error


@pytest.mark.parametrize("text, environ, index, count", [
    ("0/1", {}, 0, 1), (" 2 / 5 ", {}, 2, 5), ("auto/3", {INDEX_ENV: "2"}, 2, 3), ("auto/3", {INDEX_ENV: "0"}, 0, 3),
    ("1/3", {INDEX_ENV: "2"}, 1, 3),  # an explicit index wins over the variable
])
def test_shard_specs(text, environ, index, count):
    from common.shardmerge import parse_shard

    spec = parse_shard(text, environ)
    assert (spec.index, spec.count) == (index, count) and str(spec) == f"{index}/{count}"


@pytest.mark.parametrize("text", ["", "3", "1/", "/3", "-1/3", "1.0/3", "auto/-1", "1/3/4"])
def test_malformed_shard_specs(text):
    from common.shardmerge import parse_shard

    with pytest.raises(ToolError, match="--shard"):
        parse_shard(text, {})


# --- segmentation: each image's class map travels as arrays/<stem>.npy (in process, a stand-in tool) ---

def seg_onnx(path: Path) -> Path:
    """The stand-in segmentation tool's interface, float16 (1, 3, 64, 64) -> int32 (1, 64, 64): a class
    per pixel from its brightest channel (0..19), so maps differ per image and per pixel."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT16, [1, 3, 64, 64])
    y = helper.make_tensor_value_info("seg", TensorProto.INT32, [1, 64, 64])
    nodes = [helper.make_node("Cast", ["input"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMax", ["f"], ["m"], axes=[1], keepdims=0),
             helper.make_node("Div", ["m", "k"], ["d"]), helper.make_node("Floor", ["d"], ["c"]),
             helper.make_node("Cast", ["c"], ["seg"], to=TensorProto.INT32)]
    model = helper.make_model(helper.make_graph(nodes, "seg_like", [x], [y],
                                                [numpy_helper.from_array(np.array(13.0, np.float32), "k")]),
                              opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return path


def test_segmentation_shards_merged_equal_one_unsharded_run(seg_tool, tmp_path):  # noqa: F811
    from common.demovoc import make_mini_voc
    from common.report import provenance
    from common.shardmerge import merge_shards, parse_shard
    from common.streaming import stream_evaluate

    voc = make_mini_voc(tmp_path / "voc", n_images=5, seed=4, size_range=(33, 64))
    model = seg_onnx(tmp_path / "seg.onnx")
    prov = provenance("onnxruntime", 1, "cpu")
    whole = stream_evaluate(seg_tool, voc, model, tmp_path / "whole", target="ascend", provenance=prov)
    for index in range(2):
        stream_evaluate(seg_tool, voc, model, tmp_path / "shards" / str(index), target="ascend", provenance=prov,
                        shard=parse_shard(f"{index}/2", {}))
    maps = sorted(p.name for p in (tmp_path / "shards").glob("*/arrays/*.npy"))
    assert len(maps) == 5 and not list((tmp_path / "shards").rglob("report.json"))
    merged = merge_shards(seg_tool, tmp_path / "shards", 2, voc, tmp_path / "merged",
                          provenance=lambda record: (prov, ()))
    assert 0 < merged.metrics["mIoU"] < 100  # a real, imperfect score: the maps were compared pixel by pixel
    assert json.dumps(merged.metrics) == json.dumps(whole.metrics)
