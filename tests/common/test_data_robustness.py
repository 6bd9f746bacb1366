"""Bad datasets, reruns and kills of the data and infer steps, as a user meets them.

Most cases run the real CLI (``python -m tools.efficientdet``, whose data and infer steps need no
torch) in a subprocess on a generated mini COCO; the kill cases send a real SIGKILL mid-run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from common import pipeline
from common.backends import output_stem
from common.dataset import read_image_bgr
from common.demococo import make_mini_coco
from common.errors import ToolError
from common.manifest import MANIFEST_NAME, Manifest
from common.spec import load_spec
from tests.common.test_pipeline_infer import _tiny_model

REPO = Path(__file__).resolve().parents[2]
MODEL = "efficientdet"
DIRNAME = f"{MODEL}_onnxruntime_bs1"


def cli(*args: str | os.PathLike, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``python -m tools.efficientdet ARGS`` (from ``cwd``, the checkout importable)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", f"tools.{MODEL}", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def data(coco: Path, out: Path, *extra: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return cli("data", "--data", coco, "--out", out, "--workers", "1", *extra, cwd=cwd)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of a failed command (exit 2, no traceback)."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def images_of(coco: Path) -> list[Path]:
    return sorted((coco / "val2017").glob("*.jpg"))


def rename_image(coco: Path, old: Path, new_name: str) -> Path:
    """Rename an image and its annotation record, as a dataset with that file name would have it."""
    ann = coco / "annotations" / "instances_val2017.json"
    doc = json.loads(ann.read_text())
    for record in doc["images"]:
        if record["file_name"] == old.name:
            record["file_name"] = new_name
    ann.write_text(json.dumps(doc))
    return old.rename(old.with_name(new_name))


def tensors(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.bin"))}


def parts(folder: Path) -> list[Path]:
    return sorted(folder.parent.rglob("*.part"))


@pytest.fixture
def coco(tmp_path):
    return make_mini_coco(tmp_path / "coco", n_images=3, seed=11)


# --- images that decode but are wrong ------------------------------------------------------------

def test_jpeg_cut_to_half_is_refused_or_skipped_and_recorded(coco, tmp_path):
    cut = images_of(coco)[1]
    raw = cut.read_bytes()
    cut.write_bytes(raw[: len(raw) // 2])
    assert cv2.imdecode(np.frombuffer(cut.read_bytes(), np.uint8), cv2.IMREAD_COLOR) is not None  # cv2 takes it

    line = error_line(data(coco, tmp_path / "a"))
    assert str(cut) in line and "truncated" in line and "--skip-bad" in line
    assert not (tmp_path / "a" / MANIFEST_NAME).exists()

    assert data(coco, tmp_path / "b", "--skip-bad").returncode == 0
    m = Manifest.load(tmp_path / "b")
    assert len(m.entries) == 2 and [s["source"] for s in m.skipped] == [str(cut)]
    assert "truncated" in m.skipped[0]["reason"]


def _encoded(ext: str, params: tuple = ()) -> bytes:
    img = (np.random.default_rng(3).random((120, 160, 3)) * 255).astype(np.uint8)
    return cv2.imencode(ext, img, list(params))[1].tobytes()


@pytest.mark.parametrize("raw", [
    _encoded(".jpg"), _encoded(".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
    _encoded(".jpg", (cv2.IMWRITE_JPEG_RST_INTERVAL, 2)), _encoded(".png"),
], ids=["baseline", "progressive", "restart-markers", "png"])
def test_every_cut_of_an_image_is_refused_and_trailing_bytes_are_not(raw, tmp_path):
    path = tmp_path / "img"
    path.write_bytes(raw + b"\0\0 trailer")  # bytes after the end marker: PIL and libjpeg accept them
    assert read_image_bgr(path).shape == (120, 160, 3)
    for keep in (len(raw) // 2, len(raw) - 1, len(raw) - 2):
        path.write_bytes(raw[:keep])
        with pytest.raises(ToolError, match="is corrupt"):
            read_image_bgr(path)


def test_image_too_thin_for_the_model_is_skippable(coco, tmp_path):
    thin = images_of(coco)[0]
    cv2.imwrite(str(thin), np.full((1, 3000, 3), 90, np.uint8))
    line = error_line(data(coco, tmp_path / "a"))
    assert str(thin) in line and "too thin" in line

    proc = data(coco, tmp_path / "b", "--skip-bad")
    assert proc.returncode == 0, proc.stderr
    m = Manifest.load(tmp_path / "b")
    assert len(m.entries) == 2 and m.skipped[0]["source"] == str(thin) and "too thin" in m.skipped[0]["reason"]


def test_any_preprocessing_failure_names_the_image_and_is_skippable(tiny_tool, coco, tmp_path):
    """A failure that is not a ToolError (cv2.error, ValueError) is the image's too."""
    victim = images_of(coco)[2]
    real = tiny_tool.preprocess

    def failing(bgr):
        if bgr.shape[:2] == read_image_bgr(victim).shape[:2]:
            raise cv2.error("OpenCV(4) resize.cpp:4062: error: (-215:Assertion failed) !dsize.empty()")
        return real(bgr)

    tiny_tool.preprocess = failing
    with pytest.raises(ToolError, match=rf"image {victim} cannot be preprocessed \(error: .*--skip-bad"):
        pipeline.preprocess_dataset(tiny_tool, coco, tmp_path / "a")
    m = pipeline.preprocess_dataset(tiny_tool, coco, tmp_path / "b", skip_bad=True)
    assert [s["source"] for s in m.skipped] == [str(victim)] and "dsize" in m.skipped[0]["reason"]


# --- names ----------------------------------------------------------------------------------------

def test_dotted_file_name_goes_through_data_infer_and_eval(tiny_tool, coco, tmp_path):
    dotted = rename_image(coco, images_of(coco)[1], "img.v2.final.jpg")
    prep = tmp_path / "prep"
    m = pipeline.preprocess_dataset(tiny_tool, coco, prep)
    entry = next(e for e in m.entries if e.source == str(dotted))
    assert output_stem(entry.file) == entry.stem  # one stem rule: the tensor's results carry the manifest stem

    anns = json.loads((coco / "annotations" / "instances_val2017.json").read_text())["annotations"]
    tiny_tool.postprocess = lambda outputs, e, target: [
        {"image_id": e.image_id, "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in anns if a["image_id"] == e.image_id]
    results = pipeline.run_inference(tiny_tool.SPEC, _tiny_model(tmp_path / "m.onnx", 1), prep, tmp_path / "infer",
                                     backend="onnxruntime", batch=1)
    from common.report import provenance
    report = pipeline.evaluate(tiny_tool, prep, results, tmp_path / "eval", target="ascend",
                               provenance=provenance("onnxruntime", 1, "cpu"))
    assert report.metrics["bbox_mAP"] == pytest.approx(100.0)


def test_infer_refuses_a_dataset_whose_results_would_lose_their_stem(tiny_tool, coco, tmp_path):
    """A manifest of the old data step (tensor ``a.b.bin``, stem ``a.b``) is refused before inference."""
    prep = tmp_path / "prep"
    pipeline.preprocess_dataset(tiny_tool, coco, prep, limit=1)
    doc = json.loads((prep / MANIFEST_NAME).read_text())
    (prep / doc["entries"][0]["file"]).rename(prep / "a.b.bin")
    doc["entries"][0].update(stem="a.b", file="a.b.bin")
    (prep / MANIFEST_NAME).write_text(json.dumps(doc))
    with pytest.raises(ToolError, match=r"a\.b\.bin .* results named a_<k>\.bin.*--force"):
        pipeline.run_inference(tiny_tool.SPEC, _tiny_model(tmp_path / "m.onnx", 1), prep, tmp_path / "infer",
                               backend="onnxruntime", batch=1)
    assert not (tmp_path / "infer" / "tiny_onnxruntime_bs1").exists()


def test_two_images_with_one_stem_are_refused_before_any_work(coco, tmp_path):
    first = images_of(coco)[0]
    png = first.with_suffix(".png")
    cv2.imwrite(str(png), read_image_bgr(images_of(coco)[2]))
    ann = coco / "annotations" / "instances_val2017.json"
    doc = json.loads(ann.read_text())
    doc["images"].append({**doc["images"][0], "id": 5000, "file_name": png.name})
    ann.write_text(json.dumps(doc))

    line = error_line(data(coco, tmp_path / "out"))
    assert str(first) in line and str(png) in line and f"{first.stem}.bin" in line
    assert not list((tmp_path / "out").glob("*.bin"))


@pytest.mark.parametrize("where", ["data", "out"])
def test_whitespace_the_info_files_cannot_hold_is_refused_before_any_work(tmp_path, where):
    coco = make_mini_coco(tmp_path / ("my coco" if where == "data" else "coco"), n_images=3, seed=2)
    out = tmp_path / ("my out" if where == "out" else "out")
    line = error_line(data(coco, out))
    assert "whitespace" in line and (str(coco) if where == "data" else str(out)) in line
    assert not list(out.glob("*.bin"))


# --- reruns ---------------------------------------------------------------------------------------

def test_failed_force_rerun_of_data_keeps_the_previous_dataset(coco, tmp_path):
    out = tmp_path / "prep"
    assert data(coco, out).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    images_of(coco)[2].write_bytes(b"\xff\xd8 broken since")
    assert "is corrupt" in error_line(data(coco, out, "--force"))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the good dataset, untouched
    assert data(coco, out, "--force", "--skip-bad").returncode == 0  # a forced run that completes replaces it
    assert len(Manifest.load(out).entries) == 2 and not parts(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco", "prep"]


def test_failed_force_rerun_of_infer_keeps_the_previous_results(tiny_tool, coco, tmp_path):
    prep, infer = tmp_path / "prep", tmp_path / "infer"
    m = pipeline.preprocess_dataset(tiny_tool, coco, prep)
    model = _tiny_model(tmp_path / "m.onnx", 1)
    results = pipeline.run_inference(tiny_tool.SPEC, model, prep, infer, backend="onnxruntime", batch=1)
    before = tensors(results)
    summary = (infer / "tiny_onnxruntime_bs1_summary.json").read_text()
    (prep / m.entries[1].file).write_bytes(b"\0" * 8)  # the new run fails on this tensor
    with pytest.raises(ToolError, match="wrong size"):
        pipeline.run_inference(tiny_tool.SPEC, model, prep, infer, backend="onnxruntime", batch=1, force=True)
    assert tensors(results) == before and len(before) == 3
    assert (infer / "tiny_onnxruntime_bs1_summary.json").read_text() == summary
    assert sorted(p.name for p in infer.iterdir()) == ["tiny_onnxruntime_bs1", "tiny_onnxruntime_bs1_summary.json"]


def test_resume_with_data_and_out_spelled_differently(tiny_tool, coco, tmp_path, monkeypatch):
    real = tiny_tool.preprocess
    calls = []

    def dying(bgr):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C during the third image
        return real(bgr)

    monkeypatch.chdir(tmp_path)
    tiny_tool.preprocess = dying
    with pytest.raises(KeyboardInterrupt):
        pipeline.preprocess_dataset(tiny_tool, "coco", "prep")  # relative spellings
    calls.clear()
    tiny_tool.preprocess = lambda bgr: (calls.append(1), real(bgr))[1]
    (tmp_path / "x").mkdir()
    m = pipeline.preprocess_dataset(tiny_tool, tmp_path / "x" / ".." / "coco", str(tmp_path / "prep"))
    assert len(calls) == 1 and len(m.entries) == 3  # only the unfinished image was redone


def test_resume_after_the_input_rules_changed_is_refused(tiny_tool, coco, tmp_path, monkeypatch):
    """A data file edited between a killed run and its resumption (e.g. resize_rounding) would mix
    tensors made under two rules: the unfinished run is refused instead of continued."""
    real = tiny_tool.preprocess
    calls = []

    def dying(bgr):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(bgr)

    tiny_tool.preprocess = dying
    with pytest.raises(KeyboardInterrupt):
        pipeline.preprocess_dataset(tiny_tool, coco, tmp_path / "prep")
    tiny_tool.preprocess = real
    monkeypatch.setattr(tiny_tool, "SPEC", dataclasses.replace(
        tiny_tool.SPEC, input=dataclasses.replace(tiny_tool.SPEC.input, resize_rounding="floor")))
    with pytest.raises(ToolError, match="unfinished run with other settings"):
        pipeline.preprocess_dataset(tiny_tool, coco, tmp_path / "prep")


# --- kill -9 --------------------------------------------------------------------------------------

def _kill_when(cmd_args: tuple, ready, cwd: Path = REPO, timeout: float = 120.0) -> None:
    """Start the CLI, SIGKILL it as soon as ``ready()`` is true (polled every millisecond)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", f"tools.{MODEL}", *map(str, cmd_args)], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, "the command finished before it could be killed: give it more work"
            assert time.monotonic() < deadline, "the command never reached the point to kill it"
            time.sleep(0.001)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_kill_9_during_data_leaves_nothing_behind_after_the_rerun(tmp_path):
    coco = make_mini_coco(tmp_path / "coco", n_images=40, seed=7, size_range=(400, 640))
    out = tmp_path / "prep"
    args = ("data", "--data", coco, "--out", out, "--workers", "2")
    journal = out / pipeline.PROGRESS_NAME

    def mid_run() -> bool:  # some images journalled, a tensor being written
        return journal.is_file() and journal.stat().st_size > 0 and bool(list(out.glob(".*.part")))

    orphans: list[Path] = []
    for _ in range(20):  # kill until a temporary tensor file is left behind (the window is short)
        _kill_when(args, mid_run)
        orphans = list(out.glob(".*.part"))
        if orphans:
            break
    assert orphans, "no kill landed while a tensor was being written"
    proc = data(coco, out)
    assert proc.returncode == 0 and "resuming" in proc.stderr, proc.stderr
    assert not parts(out) and not (out / pipeline.PROGRESS_NAME).exists()

    assert data(coco, tmp_path / "clean").returncode == 0
    assert tensors(out) == tensors(tmp_path / "clean") and len(tensors(out)) == 40
    assert Manifest.load(out).entries == Manifest.load(tmp_path / "clean").entries


def _slow_model(path: Path) -> Path:
    """(1, 3, 512, 512) -> (1, 64): a wide 7x7 convolution, slow enough on CPU to be killed mid-run."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 512, 512])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 64])
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 3, 7, 7)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], pads=[3, 3, 3, 3]),
             helper.make_node("ReduceMean", ["c"], ["out"], axes=[2, 3], keepdims=0)]
    model = helper.make_model(helper.make_graph(nodes, "slow", [x], [y], initializer=[w]),
                              opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.save(model, path)
    return path


def test_kill_9_during_infer_is_cleaned_by_the_rerun(tmp_path):
    coco = make_mini_coco(tmp_path / "coco", n_images=24, seed=8)
    prep, infer = tmp_path / "prep", tmp_path / "infer"
    assert data(coco, prep).returncode == 0
    model = _slow_model(tmp_path / "slow.onnx")
    args = ("infer", "--model", model, "--prep", prep, "--out", infer)
    _kill_when(args, lambda: any(f.is_file() for f in infer.glob(f".{DIRNAME}.*.part/*")))
    assert parts(infer), "the kill should leave the run's staging folder"
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert not parts(infer) and sorted(p.name for p in infer.iterdir()) == [DIRNAME, f"{DIRNAME}_summary.json"]
    assert len(tensors(infer / DIRNAME)) == 24


# --- hand-edited manifest -------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, message", [
    ("scale", "abc", "scale 'abc' is not a number"),
    ("pad", [0, "x", 0, 0], "pad .* is not an integer"),
    ("orig_size", [640], "orig_size .* not a list of 2"),
])
def test_manifest_with_a_wrong_value_is_one_error_naming_it(coco, tmp_path, field, value, message):
    prep = tmp_path / "prep"
    assert data(coco, prep, "--limit", "1").returncode == 0
    doc = json.loads((prep / MANIFEST_NAME).read_text())
    doc["entries"][0][field] = value
    (prep / MANIFEST_NAME).write_text(json.dumps(doc))
    results = tmp_path / "infer" / DIRNAME  # results of the right sizes: the manifest is what is wrong
    results.mkdir(parents=True)
    stem = doc["entries"][0]["stem"]
    for k, spec in enumerate(load_spec(REPO / "tools" / MODEL / "model.toml").outputs_for("ascend")):
        np.zeros(spec.shape, spec.dtype).tofile(results / f"{stem}_{k}.bin")
    line = error_line(cli("eval", "--prep", prep, "--results", results, "--out", tmp_path / "eval"))
    assert str(prep / MANIFEST_NAME) in line
    assert re.search(message, line), line
