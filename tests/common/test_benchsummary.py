"""Parsing ais_bench / ais_infer / benchmark performance records (sample files in data/)."""

from __future__ import annotations

import copy
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from common import benchsummary as summary_module
from common.benchsummary import make_ais_summary, parse_ais_stdout, parse_ais_summary, parse_benchmark_perf
from common.errors import ToolError

DATA = Path(__file__).parent / "data"
NEW_OUT = DATA / "ais_summary" / "ais_bench_2023" / "output"
OLD_OUT = DATA / "ais_summary" / "ais_infer_2022" / "output"
PERF = DATA / "benchmark_perf"


def test_new_summary_from_file_output_dir_and_result_subdir(tmp_path):
    by_file = parse_ais_summary(NEW_OUT / "fcos_bs4_summary.json")
    assert by_file["format"] == "ais_bench"
    assert by_file["throughput"] == 320.0
    assert by_file["batchsize"] == 4  # from "--batchsize 4" in the recorded argv
    assert by_file["device"] == "1" and by_file["model"] == "fcos_bs4.om"
    assert by_file["npu_compute_time"] == {"min": 12.25, "max": 13.0, "mean": 12.5, "median": 12.5,
                                           "p99": 12.985, "count": 4}
    assert by_file["h2d_latency"]["mean"] == 2.0 and by_file["d2h_latency"]["p99"] == 0.745
    assert parse_ais_summary(NEW_OUT) == by_file
    # the result subdirectory itself: its summary sits beside it
    out = tmp_path / "out"
    shutil.copytree(NEW_OUT, out)
    (out / "fcos_bs4").mkdir()
    assert parse_ais_summary(out / "fcos_bs4")["throughput"] == 320.0


def test_old_sumary_json_inside_the_subdir():
    sub = OLD_OUT / "2022_08_08-03_56_49"
    for where in (OLD_OUT, sub, sub / "sumary.json"):
        s = parse_ais_summary(where)
        assert s["format"] == "ais_infer"
        assert s["batchsize"] == 1  # "--batchsize=1"
        assert s["device"] == "0"  # "--device_id 0"
        assert s["npu_compute_time"]["p99"] == 8.245
        assert s["npu_compute_time"]["count"] is None  # not written by that version
        assert s["throughput"] == 125.0


def test_percentile_key_with_blanks_and_derived_batch():
    s = parse_ais_summary(DATA / "ais_summary" / "split_key")
    assert s["npu_compute_time"]["p99"] == 59.8
    assert s["batchsize"] == 8  # 145.45... fps x 55 ms / 1000
    assert s["h2d_latency"]["count"] == 0


def test_multithread_summary_has_only_means():
    s = parse_ais_summary(DATA / "ais_summary" / "multithread" / "mt_summary.json")
    assert s["npu_compute_time"]["mean"] == 4.0 and s["npu_compute_time"]["min"] is None
    assert s["batchsize"] == 2 and s["model"] == "m.om"


def test_our_summary_round_trips_through_the_parser(tmp_path):
    times = [4.0, 5.0, 6.0, 9.0]
    summary = make_ais_summary(times, batchsize=2, extra={"backend": "onnxruntime", "device": "cpu",
                                                          "batchsize": 2, "model": "m.onnx"})
    (tmp_path / "r_summary.json").write_text(json.dumps(summary))
    s = parse_ais_summary(tmp_path)
    assert s["npu_compute_time"]["mean"] == pytest.approx(6.0)
    assert s["npu_compute_time"]["p99"] == pytest.approx(np.percentile(times, 99))
    assert s["npu_compute_time"]["median"] == pytest.approx(5.5)
    assert s["throughput"] == pytest.approx(1000 * 2 / 6.0)
    assert (s["backend"], s["device"], s["batchsize"], s["model"]) == ("onnxruntime", "cpu", 2, "m.onnx")
    assert s["h2d_latency"]["count"] == 0


def test_stats_of_no_timings_are_zero_like_ais_bench():
    zeros = {"min": 0.0, "max": 0.0, "mean": 0.0, "median": 0.0, "percentile(99%)": 0.0, "count": 0}
    assert summary_module.stats_ms([]) == zeros
    assert make_ais_summary([], batchsize=1)["throughput"] == 0.0


def test_ambiguous_missing_and_named_summaries(tmp_path):
    for name in ("a", "b"):
        shutil.copy(NEW_OUT / "fcos_bs4_summary.json", tmp_path / f"{name}_summary.json")
    with pytest.raises(ToolError, match="several summaries.*a_summary.json, b_summary.json"):
        parse_ais_summary(tmp_path)
    assert parse_ais_summary(tmp_path, dirname="b")["source"].endswith("b_summary.json")
    (tmp_path / "a").mkdir()  # a result subdir: its summary is the a_summary.json beside it
    assert parse_ais_summary(tmp_path / "a")["source"].endswith("a_summary.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ToolError, match="no ais_bench summary"):
        parse_ais_summary(tmp_path / "empty")
    with pytest.raises(ToolError, match="not found"):
        parse_ais_summary(tmp_path / "nothing_here")


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "not an ais_bench summary"),
    ('{"throughput": 3}', "not an ais_bench summary"),
    ('{"NPU_compute_time": {"mean": "12"}, "throughput": 1}', r"NPU_compute_time.mean is '12'"),
    ('{"NPU_compute_time": {"mean": 1.0}}', "no throughput"),
    ('{"NPU_compute_time": {"mean": NaN}, "throughput": 1}', "corrupt"),
    ('{"NPU_compute_time": {"mean": 2, "max": 1e999}, "throughput": 1}', "corrupt"),
    ('{"NPU_compute_time": {"mean": 2}, "throughput": 1, "args": ["--batchsize", "x"]}', "batch size"),
    ("{", "not valid JSON"),
])
def test_malformed_summaries_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad_summary.json"
    path.write_text(content)
    with pytest.raises(ToolError, match=message) as err:
        parse_ais_summary(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_stdout_block_matches_the_json_of_the_same_run():
    text = (DATA / "ais_stdout" / "ais_bench_2023.txt").read_text()
    printed = parse_ais_stdout(text)
    stored = parse_ais_summary(NEW_OUT)
    for key in ("throughput", "batchsize"):
        assert printed[key] == stored[key]
    for section in ("npu_compute_time", "h2d_latency", "d2h_latency"):
        assert {k: v for k, v in printed[section].items() if k != "count"} == \
               {k: v for k, v in stored[section].items() if k != "count"}


def test_stdout_of_old_ais_infer_and_multi_device():
    old = parse_ais_stdout((DATA / "ais_stdout" / "ais_infer_2022.txt").read_text())
    assert old["throughput"] == 125.0 and old["batchsize"] == 1  # derived: 125 fps x 8 ms
    multi = (DATA / "ais_stdout" / "multi_device.txt").read_text()
    last, first = parse_ais_stdout(multi), parse_ais_stdout(multi, which=0)
    assert (last["blocks"], last["npu_compute_time"]["mean"], last["throughput"]) == (2, 4.0, 250.0)
    assert first["npu_compute_time"]["p99"] == 3.99 and first["h2d_latency"] is None
    with pytest.raises(ToolError, match="not block 5"):
        parse_ais_stdout(multi, which=5)


def test_stdout_without_or_with_truncated_block():
    with pytest.raises(ToolError, match="no 'Performance Summary' block in run.log"):
        parse_ais_stdout("[ERROR] open device 0 failed\n", source="run.log")
    text = (DATA / "ais_stdout" / "ais_bench_2023.txt").read_text()
    cut = "\n".join(line for line in text.splitlines() if "throughput" not in line)
    with pytest.raises(ToolError, match="no throughput line"):
        parse_ais_stdout(cut)
    broken = text.replace("mean = 12.5,", "mean = twelve,")
    with pytest.raises(ToolError, match="not a number"):
        parse_ais_stdout(broken)


def test_benchmark_perf_files():
    bs1 = parse_benchmark_perf(PERF / "perf_vision_batchsize_1_device_0.txt")
    assert (bs1["batchsize"], bs1["device"], bs1["format"]) == (1, 0, "benchmark")
    assert bs1["interface_throughput"] == 8.5 and bs1["card_fps"] == 34.0  # 4 chips on a 310 card
    assert bs1["e2e_throughput"] == 6.125 and bs1["e2e_latency"] == 816326
    assert bs1["sections"]["data_read"]["moduleLatency"] == 153.846
    bs16 = parse_benchmark_perf(PERF / "perf_vision_batchsize_16_device_1.txt", chips_per_card=1)
    assert (bs16["batchsize"], bs16["device"]) == (16, 1)
    assert bs16["infer_throughput"] == 1.8 and bs16["card_fps"] == 2.25  # [inference] spelling
    assert bs16["e2e_latency"] == 2.857e6 and bs16["sections"]["post"]["throughputRate"] == 0.1125
    pure = parse_benchmark_perf(PERF / "PureInfer_perf_of_fcos_bs4_in_device_2.txt")
    assert (pure["format"], pure["batchsize"], pure["device"]) == ("benchmark-pureinfer", 4, 2)
    assert pure["interface_throughput"] == 320.5 and pure["latency_ms"] == 3.12 and pure["card_fps"] == 1282.0


def test_benchmark_perf_errors(tmp_path):
    good = (PERF / "perf_vision_batchsize_1_device_0.txt").read_text()
    bad = tmp_path / "perf_vision_batchsize_1_device_0.txt"
    bad.write_text(good.replace("Interface throughputRate: 8.5", "Interface throughputRate: fast"))
    with pytest.raises(ToolError, match=r"cannot read the \[infer\] line"):
        parse_benchmark_perf(bad)
    bad.write_text("\n".join(line for line in good.splitlines() if "[infer]" not in line))
    with pytest.raises(ToolError, match="no .*Interface throughputRate"):
        parse_benchmark_perf(bad)
    with pytest.raises(ToolError, match="chips_per_card"):
        parse_benchmark_perf(PERF / "perf_vision_batchsize_1_device_0.txt", chips_per_card=0)
    with pytest.raises(ToolError, match="cannot read benchmark perf file"):
        parse_benchmark_perf(tmp_path / "missing.txt")


# --- fuzzing: whatever the bytes, only ToolError may escape ------------------------------------------

def _only_tool_errors(parser, argument) -> None:
    try:
        result = parser(argument)
    except ToolError as err:
        assert str(err) and "\n" not in str(err)
    else:
        assert isinstance(result, dict)


def _mutations(rng: random.Random, data: bytes, count: int):
    for _ in range(count):
        raw = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            op = rng.random()
            pos = rng.randrange(len(raw) or 1)
            if op < 0.4 and raw:
                raw[pos] = rng.randrange(256)
            elif op < 0.7:
                raw[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
            else:
                del raw[pos:pos + rng.randint(1, 6)]
        yield bytes(raw)


def test_fuzz_parsers_with_random_and_mutated_bytes(tmp_path):
    rng = random.Random(20231123)
    samples = [NEW_OUT / "fcos_bs4_summary.json", DATA / "ais_summary" / "multithread" / "mt_summary.json",
               PERF / "perf_vision_batchsize_16_device_1.txt",
               PERF / "PureInfer_perf_of_fcos_bs4_in_device_2.txt",
               DATA / "ais_stdout" / "ais_bench_2023.txt"]
    target = tmp_path / "fuzz_summary.json"
    perf = tmp_path / "perf_vision_batchsize_1_device_0.txt"
    blobs = [bytes(rng.randrange(256) for _ in range(rng.randint(0, 300))) for _ in range(60)]
    for sample in samples:
        blobs += list(_mutations(rng, sample.read_bytes(), 60))
    for blob in blobs:
        target.write_bytes(blob)
        perf.write_bytes(blob)
        _only_tool_errors(parse_ais_summary, target)
        _only_tool_errors(parse_benchmark_perf, perf)
        _only_tool_errors(parse_ais_stdout, blob.decode("utf-8", errors="replace"))


def test_fuzz_summary_with_wrong_json_types(tmp_path):
    rng = random.Random(7)
    pool = [None, True, False, "x", "12", [], {}, [1, 2], {"mean": "a"}, -1, 0, 1e308, 10 ** 400,
            float("nan"), float("inf"), ["--batchsize"], {"batchsize": [3]}, "percentile(99%)"]
    base = json.loads((NEW_OUT / "fcos_bs4_summary.json").read_text())
    target = tmp_path / "t_summary.json"
    for _ in range(400):
        doc = json.loads(json.dumps(base))
        for _ in range(rng.randint(1, 3)):
            section = rng.choice(list(doc) + ["batchsize", "device", "model"])
            if isinstance(doc.get(section), dict) and doc[section] and rng.random() < 0.7:
                doc[section][rng.choice(list(doc[section]))] = copy.deepcopy(rng.choice(pool))
            else:
                doc[section] = copy.deepcopy(rng.choice(pool))
        target.write_text(json.dumps(doc))
        _only_tool_errors(parse_ais_summary, target)
