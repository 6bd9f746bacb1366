"""Inference backends: ONNX Runtime on a tiny graph, ais_bench through a fake API module and a fake CLI."""

from __future__ import annotations

import json
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from common.backends import (
    AisBenchBackend,
    Backend,
    OnnxRuntimeBackend,
    TensorSpec,
    ais_bench_backend,
    make_backend,
    natural_key,
    natural_sorted,
    onnxruntime_backend,
)
from common.benchsummary import parse_ais_summary
from common.errors import ToolError
from common.resultfiles import read_results
from common.spec import OutputSpec

IMAGE_SHAPE = (3, 4, 4)
IMAGE_BYTES = 3 * 4 * 4 * 4
PER_IMAGE_OUTPUTS = (OutputSpec("mixed", "float32", IMAGE_SHAPE), OutputSpec("cls", "int64", ()))


def reference(batch: np.ndarray) -> list[np.ndarray]:
    """What the tiny model computes: x + sum over the batch (so outputs reveal batch-mates), argmax class."""
    mixed = batch + batch.sum(axis=0, keepdims=True)
    cls = batch.sum(axis=(2, 3)).argmax(axis=1).astype(np.int64)
    return [mixed.astype(np.float32), cls]


def build_onnx(path: Path, batch: int | str = "N", broken_output: bool = False) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *IMAGE_SHAPE])
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["bsum"], axes=[0], keepdims=1),
        helper.make_node("Add", ["x", "bsum"], ["mixed"]),
        helper.make_node("ReduceSum", ["x"], ["csum"], axes=[2, 3], keepdims=0),
        helper.make_node("ArgMax", ["csum"], ["cls"], axis=1, keepdims=0),
    ]
    outputs = [helper.make_tensor_value_info("mixed", TensorProto.FLOAT, [batch, *IMAGE_SHAPE]),
               helper.make_tensor_value_info("cls", TensorProto.INT64, [batch])]
    if broken_output:  # a scalar: cannot be split per image
        nodes.append(helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0))
        outputs.append(helper.make_tensor_value_info("total", TensorProto.FLOAT, []))
    graph = helper.make_graph(nodes, "tiny", [x], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def write_inputs(directory: Path, stems=("img10", "img2", "img1"), seed=0) -> dict[str, np.ndarray]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = {}
    for stem in stems:  # written out of order on purpose
        data[stem] = rng.random(IMAGE_SHAPE, dtype=np.float32)
        data[stem].tofile(directory / f"{stem}.bin")
    return data


def expected_outputs(data: dict[str, np.ndarray], order: list[str], batch: int) -> dict[str, list]:
    """Per image outputs when ``order`` is grouped by ``batch``, the last run padded with its first file."""
    result = {}
    for start in range(0, len(order), batch):
        chunk = order[start:start + batch]
        padded = chunk + [chunk[0]] * (batch - len(chunk))
        outs = reference(np.stack([data[s] for s in padded]))
        for j, stem in enumerate(chunk):
            result[stem] = [outs[0][j], outs[1][j]]
    return result


def check_results(result_dir: Path, data: dict, order: list[str], batch: int) -> None:
    files = sorted(p.name for p in result_dir.iterdir())
    assert files == sorted(f"{s}_{k}.bin" for s in order for k in (0, 1))  # padding not saved
    results = read_results(result_dir, order, PER_IMAGE_OUTPUTS)
    for stem, (mixed, cls) in expected_outputs(data, order, batch).items():
        np.testing.assert_allclose(results[stem][0], mixed, rtol=1e-6)
        assert results[stem][1] == cls


def test_natural_sort_matches_ais_bench():
    names = ["img10.bin", "img2.bin", "IMG1.bin", "img1.bin", "a.bin", "img2b.bin"]
    assert [p.name for p in natural_sorted(names)] == ["a.bin", "IMG1.bin", "img1.bin", "img2.bin",
                                                        "img2b.bin", "img10.bin"]
    assert natural_key("x/img007_3.bin") == ["x/img", 7, "_", 3, ".bin"]


def test_tensor_spec_shapes():
    spec = TensorSpec("x", "float32", (None, 3, 4, 4))
    assert spec.run_shape(2) == (2, 3, 4, 4) and spec.run_bytes(2) == 2 * IMAGE_BYTES
    with pytest.raises(ToolError, match="fixed batch of 1"):
        TensorSpec("x", "float32", (1, 3, 4, 4)).run_shape(4)
    with pytest.raises(ToolError, match="dynamic dimensions"):
        TensorSpec("x", "float32", (1, 3, None, None)).run_shape(1)


# --- ONNX Runtime ------------------------------------------------------------------------------------

def test_onnxruntime_batches_pads_and_writes_ais_layout(tmp_path, capsys):
    model = build_onnx(tmp_path / "tiny.onnx")
    data = write_inputs(tmp_path / "prep")
    backend = OnnxRuntimeBackend(model)
    assert isinstance(backend, Backend) and backend.name == "onnxruntime"
    assert backend.input_specs() == [TensorSpec("x", "float32", (None, 3, 4, 4))]
    assert [s.name for s in backend.output_specs()] == ["mixed", "cls"]
    inputs = [tmp_path / "prep" / f"{s}.bin" for s in ("img2", "img10", "img1")]
    result_dir = backend.run(inputs, tmp_path / "out", "tiny_bs2", 2, loop=2, warmup=1)
    assert result_dir == tmp_path / "out" / "tiny_bs2"
    check_results(result_dir, data, ["img1", "img2", "img10"], batch=2)  # natural order: img2 before img10
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tiny_bs2", "tiny_bs2_summary.json"]
    raw = json.loads((tmp_path / "out" / "tiny_bs2_summary.json").read_text())
    assert raw["NPU_compute_time"]["count"] == 4  # 2 runs x loop 2 (warmup not counted)
    assert len(raw["warmup_compute_ms"]) == 1 and raw["warmup_compute_ms"][0] > 0  # timed, reported apart
    summary = parse_ais_summary(tmp_path / "out")
    assert (summary["backend"], summary["device"], summary["batchsize"]) == ("onnxruntime", "cpu", 2)
    assert summary["model"] == str(model)
    assert summary["throughput"] == pytest.approx(1000 * 2 / summary["npu_compute_time"]["mean"])
    assert "onnxruntime inference: 2/2 batches in " in capsys.readouterr().err


def test_onnxruntime_static_batch_and_directory_input(tmp_path):
    model = build_onnx(tmp_path / "tiny_b3.onnx", batch=3)
    data = write_inputs(tmp_path / "prep", stems=[f"im{i}" for i in range(4)])
    backend = make_backend("onnxruntime", model, 0)  # device 0 without a CUDA provider: CPU, said on stderr
    check_results(backend.run(tmp_path / "prep", tmp_path / "out", "r", 3), data,
                  ["im0", "im1", "im2", "im3"], batch=3)
    with pytest.raises(ToolError, match="fixed batch of 3.*BATCH=1"):
        backend.run(tmp_path / "prep", tmp_path / "out", "r1", 1)


def test_onnxruntime_refuses_wrong_inputs(tmp_path):
    backend = OnnxRuntimeBackend(build_onnx(tmp_path / "tiny.onnx"))
    write_inputs(tmp_path / "prep")
    half = tmp_path / "half" / "h.bin"
    half.parent.mkdir()
    np.zeros(IMAGE_SHAPE, np.float16).tofile(half)  # float16 data for a float32 model
    with pytest.raises(ToolError, match=rf"{half} has 96 bytes .* takes {IMAGE_BYTES} bytes per image"):
        backend.run([half], tmp_path / "out", "r", 1)
    odd = tmp_path / "prep" / "odd.bin"
    np.zeros(10, np.float32).tofile(odd)
    wrong = rf"1 input file\(s\) have the wrong size, first {odd}.*expected {IMAGE_BYTES}"
    with pytest.raises(ToolError, match=wrong):
        backend.run(sorted((tmp_path / "prep").glob("*.bin")), tmp_path / "out", "r", 1)
    odd.unlink()
    np.zeros(IMAGE_SHAPE, np.float32).tofile(half.parent / "img1.x.bin")  # stem = name up to the first dot
    with pytest.raises(ToolError, match="share the result stem 'img1'"):
        backend.run([tmp_path / "prep" / "img1.bin", half.parent / "img1.x.bin"], tmp_path / "out", "r", 1)
    with pytest.raises(ToolError, match="not found"):
        backend.run([tmp_path / "prep" / "nope.bin"], tmp_path / "out", "r", 1)
    with pytest.raises(ToolError, match="BATCH=0"):
        backend.run([tmp_path / "prep" / "img1.bin"], tmp_path / "out", "r", 0)
    with pytest.raises(ToolError, match="directory name"):
        backend.run([tmp_path / "prep" / "img1.bin"], tmp_path / "out", "../r", 1)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_failed_run_leaves_nothing_and_results_are_never_clobbered(tmp_path):
    write_inputs(tmp_path / "prep")
    broken = OnnxRuntimeBackend(build_onnx(tmp_path / "broken.onnx", broken_output=True))
    with pytest.raises(ToolError, match=r"output 2 \('total'\) .* cannot be split per image"):
        broken.run(tmp_path / "prep", tmp_path / "out", "r", 2)
    assert list((tmp_path / "out").iterdir()) == []  # the staging directory is gone too
    good = OnnxRuntimeBackend(build_onnx(tmp_path / "tiny.onnx"))
    good.run(tmp_path / "prep", tmp_path / "out", "r", 1)
    with pytest.raises(ToolError, match="already exists"):
        good.run(tmp_path / "prep", tmp_path / "out", "r", 1)


def test_onnxruntime_load_errors(tmp_path, monkeypatch):
    with pytest.raises(ToolError, match="model file .* not found"):
        OnnxRuntimeBackend(tmp_path / "none.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ToolError, match=r"junk\.onnx"):  # through common.customops when present
        OnnxRuntimeBackend(junk).input_specs()
    monkeypatch.setattr(onnxruntime_backend, "customops_available", lambda: False)
    with pytest.raises(ToolError, match=r"onnxruntime cannot load .*junk\.onnx"):
        OnnxRuntimeBackend(junk).input_specs()


def test_plain_session_without_customops_gives_same_results(tmp_path, monkeypatch):
    model = build_onnx(tmp_path / "tiny.onnx")
    data = write_inputs(tmp_path / "prep")
    monkeypatch.setattr(onnxruntime_backend, "customops_available", lambda: False)
    check_results(OnnxRuntimeBackend(model).run(tmp_path / "prep", tmp_path / "out", "r", 2), data,
                  ["img1", "img2", "img10"], batch=2)


def test_make_backend_checks_names_and_extensions(tmp_path):
    onnx_model = build_onnx(tmp_path / "m.onnx")
    om_model = tmp_path / "m.om"
    om_model.write_bytes(b"om")
    assert isinstance(make_backend("onnxruntime", onnx_model, None), OnnxRuntimeBackend)
    ais = make_backend("ais_bench", om_model, 2)
    assert isinstance(ais, AisBenchBackend) and ais.device == 2
    with pytest.raises(ToolError, match=r"unknown backend 'trt' \(valid: onnxruntime, ais_bench\)"):
        make_backend("trt", onnx_model, None)
    with pytest.raises(ToolError, match="backend 'onnxruntime' cannot run .*m.om: use BACKEND=ais_bench"):
        make_backend("onnxruntime", om_model, None)
    with pytest.raises(ToolError, match="use BACKEND=onnxruntime"):
        make_backend("ais_bench", onnx_model, 0)
    with pytest.raises(ToolError, match=r"extension '.pt'.*\.onnx -> onnxruntime, \.om -> ais_bench"):
        make_backend("onnxruntime", tmp_path / "m.pt", None)
    with pytest.raises(ToolError, match="DEVICE=-1"):
        AisBenchBackend(om_model, -1)


# --- ais_bench through its Python API (a fake module standing in for ais_bench + aclruntime) ---------

class _Desc:
    def __init__(self, name, datatype, shape):
        self.name, self.datatype, self.shape = name, datatype, shape
        self.realsize = self.size = int(np.prod(shape)) * np.dtype(datatype.split(".")[-1]).itemsize


def _fake_api(batch: int, pairs: bool, fail: str | None = None):
    class InferSession:
        def __init__(self, device_id, model_path):
            if fail:
                raise RuntimeError(fail)
            self.device_id, self.model_path, self.times, self.clock = device_id, model_path, [], 100.0

        def get_inputs(self):
            return [_Desc("x", "dtype.float32", [batch, *IMAGE_SHAPE])]

        def get_outputs(self):
            return [_Desc("mixed", "dtype.float32", [batch, *IMAGE_SHAPE]),
                    _Desc("cls", "dtype.int64", [batch])]

        def infer(self, feeds, mode="static"):
            assert mode == "static" and feeds[0].shape == (batch, *IMAGE_SHAPE)
            self.times.append((self.clock, self.clock + 5.0) if pairs else 5.0)
            self.clock += 10.0
            return reference(feeds[0])

        def _summary(self):
            return types.SimpleNamespace(exec_time_list=list(self.times))

    if pairs:
        InferSession.summary = InferSession._summary
    else:
        InferSession.sumary = InferSession._summary  # the 2022-2023 spelling
    return InferSession


def _install_fake_api(monkeypatch, session_class) -> None:
    interface = types.ModuleType("ais_bench.infer.interface")
    interface.InferSession = session_class
    monkeypatch.setitem(sys.modules, "ais_bench", types.ModuleType("ais_bench"))
    monkeypatch.setitem(sys.modules, "ais_bench.infer", types.ModuleType("ais_bench.infer"))
    monkeypatch.setitem(sys.modules, "ais_bench.infer.interface", interface)


@pytest.mark.parametrize("pairs", [True, False])
def test_ais_bench_python_api(tmp_path, monkeypatch, pairs):
    _install_fake_api(monkeypatch, _fake_api(batch=2, pairs=pairs))
    om = tmp_path / "tiny_bs2.om"
    om.write_bytes(b"om")
    data = write_inputs(tmp_path / "prep")
    backend = AisBenchBackend(om, device=3)
    assert backend.input_specs() == [TensorSpec("x", "float32", (2, 3, 4, 4))]
    check_results(backend.run(tmp_path / "prep", tmp_path / "out", "r", 2, loop=3, warmup=2), data,
                  ["img1", "img2", "img10"], batch=2)
    summary = parse_ais_summary(tmp_path / "out" / "r_summary.json")
    assert summary["npu_compute_time"]["mean"] == 5.0 and summary["npu_compute_time"]["count"] == 6
    assert (summary["device"], summary["throughput"], summary["backend"]) == ("npu:3", 400.0, "ais_bench")


def test_ais_bench_python_api_refuses_dynamic_om(tmp_path, monkeypatch):
    _install_fake_api(monkeypatch, _fake_api(batch=-1, pairs=True))
    om = tmp_path / "dyn.om"
    om.write_bytes(b"om")
    write_inputs(tmp_path / "prep")
    with pytest.raises(ToolError, match="dynamic input shapes \\(x\\)"):
        AisBenchBackend(om).run(tmp_path / "prep", tmp_path / "out", "r", 2)


def test_ais_bench_python_api_device_failure(tmp_path, monkeypatch):
    _install_fake_api(monkeypatch, _fake_api(2, True, fail="aclrtSetDevice failed, ret=507033"))
    om = tmp_path / "m.om"
    om.write_bytes(b"om")
    write_inputs(tmp_path / "prep")
    with pytest.raises(ToolError, match="device 1.*npu-smi info"):
        AisBenchBackend(om, device=1).run(tmp_path / "prep", tmp_path / "out", "r", 2)


# --- ais_bench CLI (a fake `python -m ais_bench` package put on PYTHONPATH) -------------------------

FAKE_CLI = textwrap.dedent('''
    """Stand-in for `python3 -m ais_bench`: same flags, same output layout, same printed summary."""
    import argparse, json, os, re, sys
    import numpy as np

    p = argparse.ArgumentParser()
    for flag in ("--model", "--input", "--output", "--output_dirname", "--outfmt", "--device"):
        p.add_argument(flag)
    for flag in ("--batchsize", "--loop", "--warmup_count"):
        p.add_argument(flag, type=int, default=1)
    args = p.parse_args()
    cfg = json.load(open(args.model))
    print("[INFO] acl init success")
    if cfg.get("fail") == "device":
        print("[ERROR] open device " + args.device + " failed, runtime result = 507033")
        print("[ERROR] acl set device " + args.device + " failed")
        sys.exit(1)
    if cfg.get("fail") == "crash":
        print("Traceback (most recent call last):")
        print("RuntimeError: something else")
        sys.exit(3)
    key = lambda s: [int(t) if i % 2 else t.lower() for i, t in enumerate(re.split("([0-9]+)", s))]
    if os.path.isdir(args.input):
        names = [f for f in os.listdir(args.input) if f.endswith(".bin")]
        files = sorted((os.path.join(args.input, f) for f in names), key=key)
    else:
        files = args.input.split(",")
    per_run = cfg["input_bytes"]
    fpb = per_run // os.path.getsize(files[0])
    out_dir = os.path.join(args.output, args.output_dirname)
    os.makedirs(out_dir)
    times = []
    for start in range(0, len(files), fpb):
        chunk = files[start:start + fpb]
        padded = chunk + [chunk[0]] * (fpb - len(chunk))
        x = np.stack([np.fromfile(f, dtype=np.float32).reshape(3, 4, 4) for f in padded])
        outs = [x + x.sum(axis=0, keepdims=True), x.sum(axis=(2, 3)).argmax(axis=1).astype(np.int64)]
        for k, out in enumerate(outs):
            for j, f in enumerate(chunk):
                np.array_split(out, fpb, 0)[j].tofile(
                    os.path.join(out_dir, os.path.basename(f).split(".")[0] + "_%d.bin" % k))
        times.append(8.0)
    summary = {"filesinfo": {}, "args": sys.argv,
               "NPU_compute_time": {"min": 8.0, "max": 8.0, "mean": 8.0, "median": 8.0,
                                    "percentile(99%)": 8.0, "count": len(times)},
               "H2D_latency": {"min": 1.0, "max": 1.0, "mean": 1.0, "median": 1.0, "percentile(99%)": 1.0,
                               "count": len(times)},
               "D2H_latency": {"min": 0.5, "max": 0.5, "mean": 0.5, "median": 0.5, "percentile(99%)": 0.5,
                               "count": len(times)},
               "throughput": 1000.0 * fpb / 8.0, "npu_compute_time_list": times, "pid": os.getpid()}
    json.dump(summary, open(os.path.join(args.output, args.output_dirname + "_summary.json"), "w"))
    print("[INFO] -----------------Performance Summary------------------")
    print("[INFO] NPU_compute_time (ms): min = 8.0, max = 8.0, mean = 8.0, median = 8.0, "
          "percentile(99%) = 8.0")
    print("[INFO] throughput 1000*batchsize.mean(%d)/NPU_compute_time.mean(8.0): %s"
          % (fpb, 1000.0 * fpb / 8.0))
    print("[INFO] ------------------------------------------------------")
''')


@pytest.fixture
def fake_cli(tmp_path, monkeypatch):
    pkg = tmp_path / "fakepkgs" / "ais_bench"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(FAKE_CLI)
    monkeypatch.setenv("PYTHONPATH", str(pkg.parent))
    monkeypatch.setattr(AisBenchBackend, "_api_class", staticmethod(lambda: None))  # no aclruntime here

    def make_model(name="m.om", batch=2, fail=None):
        om = tmp_path / name
        om.write_text(json.dumps({"input_bytes": batch * IMAGE_BYTES, "fail": fail}))
        return om
    return make_model


def test_ais_bench_cli_directory_input(tmp_path, fake_cli, capsys):
    data = write_inputs(tmp_path / "prep")
    backend = AisBenchBackend(fake_cli(), device=0, python=sys.executable)  # auto: no API, CLI found
    result_dir = backend.run(tmp_path / "prep", tmp_path / "out", "cli_bs2", 2)
    check_results(result_dir, data, ["img1", "img2", "img10"], batch=2)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cli_bs2", "cli_bs2_summary.json"]
    summary = parse_ais_summary(tmp_path / "out")
    assert (summary["backend"], summary["device"], summary["batchsize"]) == ("ais_bench", "npu:0", 2)
    assert summary["throughput"] == 250.0 and summary["h2d_latency"]["mean"] == 1.0
    err = capsys.readouterr().err
    assert f"--input {tmp_path / 'prep'}" in err and "Performance Summary" in err


@pytest.mark.parametrize("max_arg", [100_000, 10])
def test_ais_bench_cli_file_list_and_linked_inputs(tmp_path, fake_cli, monkeypatch, max_arg):
    monkeypatch.setattr(ais_bench_backend, "MAX_INPUT_ARG", max_arg)  # 10: too long for one argument -> linked dir
    data = write_inputs(tmp_path / "prep", stems=["a1", "a2", "a3", "zz_not_used"])
    chosen = [tmp_path / "prep" / f"{s}.bin" for s in ("a3", "a1", "a2")]
    result_dir = AisBenchBackend(fake_cli(), python=sys.executable, mode="cli").run(
        chosen, tmp_path / "out", "r", 2)
    check_results(result_dir, data, ["a1", "a2", "a3"], batch=2)
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == []


def test_ais_bench_cli_failure_shows_exit_code_hint_and_log_tail(tmp_path, fake_cli):
    write_inputs(tmp_path / "prep")
    backend = AisBenchBackend(fake_cli(fail="device"), device=5, python=sys.executable)
    with pytest.raises(ToolError, match=r"exit code 1 .*device 5 busy.*npu-smi info") as err:
        backend.run(tmp_path / "prep", tmp_path / "out", "r", 2)
    assert err.value.detail.splitlines()[-1] == "[ERROR] acl set device 5 failed"
    assert list((tmp_path / "out").iterdir()) == []
    other = AisBenchBackend(fake_cli("c.om", fail="crash"), python=sys.executable)
    with pytest.raises(ToolError, match="exit code 3 .*see its output below") as err:
        other.run(tmp_path / "prep", tmp_path / "out", "r", 2)
    assert "RuntimeError: something else" in err.value.detail


def test_ais_bench_missing_prints_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(AisBenchBackend, "_api_class", staticmethod(lambda: None))
    om = tmp_path / "m.om"
    om.write_bytes(b"om")
    write_inputs(tmp_path / "prep")
    backend = AisBenchBackend(om, device=1, python="python3-that-does-not-exist")
    with pytest.raises(ToolError, match="ais_bench is not installed") as err:
        backend.run(tmp_path / "prep", tmp_path / "out", "res", 4, loop=5)
    assert (f"python3 -m ais_bench --model {om} --input {tmp_path / 'prep'} --output {tmp_path / 'out'} "
            "--output_dirname res --outfmt BIN --batchsize 4 --device 1 --loop 5") in str(err.value)
    with pytest.raises(ToolError, match="Python API .* not importable"):
        backend.input_specs()


def test_ais_bench_cli_refuses_paths_it_would_reject(tmp_path, fake_cli):
    write_inputs(tmp_path / "my prep")
    backend = AisBenchBackend(fake_cli(), python=sys.executable, mode="cli")
    with pytest.raises(ToolError, match="ais_bench refuses the path .*my prep"):
        backend.run(tmp_path / "my prep", tmp_path / "out", "r", 2)


@pytest.mark.parametrize("log, hint", [
    ("[ERROR] aclrtSetDevice failed, ret 507033", "npu-smi info"),
    ("EE1001 open device 3 failed, runtime result = 107001", "device 7 busy"),
    ("ImportError: libascendcl.so: cannot open shared object file", "set_env.sh"),
    ("ModuleNotFoundError: No module named 'aclruntime'", "aclruntime wheel"),
    ("[ERROR] arg0 tensorsize: 100 filesize: 30 not match", "do not match the model input size"),
    ("Segmentation fault", "see its output below"),
])
def test_failure_hints(log, hint):
    assert hint in ais_bench_backend.failure_hint(log, 7)


def test_customops_import_error_falls_back_and_custom_graphs_get_a_hint(tmp_path, monkeypatch, capsys):
    import onnx
    from onnx import TensorProto, helper

    broken = types.ModuleType("common.customops")

    def cpu_session(model, providers=None, options=None):
        raise ImportError("No module named 'onnxruntime_extensions'")

    broken.cpu_session = cpu_session
    monkeypatch.setitem(sys.modules, "common.customops", broken)
    monkeypatch.setattr(onnxruntime_backend, "customops_available", lambda: True)
    data = write_inputs(tmp_path / "prep")
    plain = OnnxRuntimeBackend(build_onnx(tmp_path / "tiny.onnx"))
    check_results(plain.run(tmp_path / "prep", tmp_path / "out", "r", 1), data, ["img1", "img2", "img10"], 1)
    assert "custom-op kernels unavailable" in capsys.readouterr().err

    boxes = helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 8, 1, 4])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 8, 2])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("b", "s", "c", "n")]
    node = helper.make_node("BatchMultiClassNMS", ["boxes", "scores"], ["b", "s", "c", "n"],
                            score_threshold=0.05, iou_threshold=0.5, max_size_per_class=10, max_total_size=10)
    graph = helper.make_graph([node], "nms", [boxes, scores], outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    onnx.save(model, str(tmp_path / "nms.onnx"))
    with pytest.raises(ToolError, match="Ascend custom ops: install onnxruntime-extensions"):
        OnnxRuntimeBackend(tmp_path / "nms.onnx").input_specs()
