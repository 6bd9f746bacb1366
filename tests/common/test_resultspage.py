"""The results page (make report, make fleet-report) from result files written by the real writers.

Torch-free: it runs in the base environment and in common-py312. The reports come from
common.report.write_report, the perf rows from common.throughput.measure_throughput on a tiny ONNX
with onnxruntime; the page is made by the command a user runs, in a subprocess.
"""

from __future__ import annotations

import dataclasses
import platform
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("matplotlib")

from onnx import TensorProto, helper  # noqa: E402

from common.demo import DEMO_NOTE  # noqa: E402
from common.report import (  # noqa: E402
    DatasetInfo,
    Provenance,
    Report,
    collect_versions,
    published_from_spec,
    write_report,
)
from common.spec import MODELS, REPO_ROOT, load_spec  # noqa: E402
from common.throughput import measure_throughput  # noqa: E402

SPECS = [load_spec(m) for m in MODELS]
READY = [s for s in SPECS if s.status == "ready"]
#: a ready model with two batch sizes (its perf is measured at the first two), and another ready model
MULTI = next(s for s in READY if len(s.input.batch_sizes) >= 2)
OTHER = next(s for s in READY if s.name != MULTI.name)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_page(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "common.resultspage", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)


def tiny_onnx(path: Path, batch: int) -> Path:
    """A model taking ``batch`` 3x8x8 images: throughput does not depend on what it computes."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 8, 8])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["out"])], "tiny", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return path


def measure(out: Path, spec, batch: int, tmp: Path) -> None:
    """Real perf rows for ``spec`` (its name and batch sizes) on a tiny input shape."""
    small = dataclasses.replace(spec, input=dataclasses.replace(spec.input, shape=(3, 8, 8)))
    model = tiny_onnx(tmp / f"{spec.name}_bs{batch}.onnx", batch)
    measure_throughput(small, model, out / spec.name / "perf", backend="onnxruntime", batches=[batch], loop=2,
                       argv=["python", "-m", f"tools.{spec.name}", "perf", "--batch", str(batch)])


def report_for(spec, value: float, *, backend="onnxruntime", device="cpu", batch=1, command=None,
               timestamp="2026-11-29T05:00:00+00:00", notes=()) -> Report:
    figures, _, tol = published_from_spec(spec.published)
    metric = figures[0].metric
    prov = Provenance(command=command or f"python -m tools.{spec.name} eval --batch {batch}", backend=backend,
                      device=device, batch_size=batch, versions=collect_versions(), timestamp=timestamp)
    return Report(model=spec.name, task=spec.task, metrics={metric: value}, provenance=prov,
                  dataset=DatasetInfo(path="/data/coco", num_images=5000), published=figures, tolerance_rel=tol,
                  notes=list(notes))


def table_rows(md: str, first_cell: str) -> list[list[str]]:
    """The Markdown table rows whose first cell is ``first_cell``, split into cells."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("| ")]
    return [r for r in rows if r[0] == first_cell]


def section(md: str, title: str) -> str:
    return md.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def scratch_out(tmp_path_factory) -> Path:
    """OUT with MULTI's eval report + perf at two batch sizes; for OTHER a corrupt and a misplaced report and
    `make demo`'s report (shown, labelled, but no accuracy result)."""
    tmp = tmp_path_factory.mktemp("results")
    out = tmp / "out"
    write_report(report_for(MULTI, 12.5, command="python -m tools.x eval --backend onnxruntime --batch 1"),
                 out / MULTI.name / "eval")
    for batch in MULTI.input.batch_sizes[:2]:
        measure(out, MULTI, batch, tmp)
    (out / OTHER.name / "stream").mkdir(parents=True)
    (out / OTHER.name / "stream" / "report.json").write_text('{"model": "trunc')
    write_report(report_for(MULTI, 1.0), out / OTHER.name / "eval")  # another model's report in OTHER's folder
    write_report(report_for(OTHER, 5.0, notes=[DEMO_NOTE]), out / "demo" / OTHER.name / "eval")  # make demo
    return out


@pytest.fixture(scope="module")
def page(scratch_out) -> dict:
    result = run_page("--out", str(scratch_out))
    assert result.returncode == 0, result.stderr
    dest = scratch_out / "report"
    return {"stdout": result.stdout, "stderr": result.stderr, "md": (dest / "index.md").read_text(),
            "html": (dest / "index.html").read_text(), "png": (dest / "throughput.png").read_bytes(),
            "dest": dest}


def test_accuracy_row_carries_its_provenance_and_the_published_seed_figure(page):
    rows = table_rows(section(page["md"], "Accuracy"), MULTI.name)
    assert len(rows) == 1
    row = rows[0]
    figures, _, _ = published_from_spec(MULTI.published)
    assert row[1] == "`eval`" and row[2] == f"{figures[0].metric} 12.5"
    assert row[3].count("published (seed)") == len(figures) and "NO" in row[3]  # 12.5 is far below every seed
    assert row[4:7] == ["onnxruntime", "cpu", "1"]
    assert row[7] == "`python -m tools.x eval --backend onnxruntime --batch 1`"
    assert f"python {platform.python_version()}" in row[8]


def test_demo_report_is_shown_with_its_label_but_is_no_accuracy_result(page):
    rows = table_rows(section(page["md"], "Accuracy"), OTHER.name)
    assert [r[1] for r in rows] == [f"`demo/{OTHER.name}/eval`"]
    assert DEMO_NOTE in rows[0][10]
    assert f"- {OTHER.name}: accuracy (float input): no " in section(page["md"], "Missing results")


def test_measured_throughput_rows_and_published_rows_are_labelled(page):
    rows = table_rows(section(page["md"], "Throughput\n"), MULTI.name)
    measured = [r for r in rows if r[2] == "measured"]
    assert [int(r[1]) for r in measured] == list(MULTI.input.batch_sizes[:2])
    for r in measured:
        assert r[3] == "onnxruntime" and float(r[5]) > 0
        assert r[6] == f"`python -m tools.{MULTI.name} perf --batch {r[1]}`" and "onnxruntime" in r[7]
    _, published, _ = published_from_spec(MULTI.published)
    assert len([r for r in rows if r[2] == "published (seed)"]) == len(published)


def test_missing_lists_each_absent_result_of_every_ready_model_with_its_make_command(page, scratch_out):
    missing = section(page["md"], "Missing results")
    for spec in READY:
        mine = [line for line in missing.splitlines() if line.startswith(f"- {spec.name}: ")]
        float_missing = spec.name != MULTI.name  # OTHER's two reports are unreadable / another model's
        uint8_missing = spec.capabilities.uint8_input
        perf_missing = spec.input.batch_sizes if spec.name != MULTI.name else spec.input.batch_sizes[2:]
        assert len(mine) == float_missing + uint8_missing + bool(perf_missing), mine
        if float_missing:
            assert f"`make {spec.name}-all DATA=<dataset root> OUT={scratch_out}`" in missing
        if perf_missing:
            sizes = " ".join(map(str, perf_missing))
            assert f"`make {spec.name}-perf BATCH=\"{sizes}\" OUT={scratch_out}`" in missing
    assert not any(line.startswith(f"- {s.name}: ") for s in SPECS if s.status != "ready" for line in
                   missing.splitlines())


def test_unreadable_or_misplaced_result_files_are_one_problem_line_each(page, scratch_out):
    problems = [line for line in section(page["md"], "Problems").splitlines() if line.startswith("- ")]
    corrupt = scratch_out / OTHER.name / "stream" / "report.json"
    misplaced = scratch_out / OTHER.name / "eval" / "report.json"
    assert len(problems) == 2
    assert str(corrupt) in problems[1] or str(corrupt) in problems[0]
    assert any(str(misplaced) in p and f"'{MULTI.name}'" in p for p in problems)
    assert "Traceback" not in page["stderr"] + page["md"]
    assert "2 problem(s)" in page["stdout"]


def test_chart_is_a_real_png_with_one_bar_per_figure_published_ones_hatched(page, scratch_out):
    from common.resultspage import gather, throughput_chart

    width, height = png_size(page["png"])
    assert width > 400 and height > 300 and len(page["png"]) > 10_000
    published = sum(len(published_from_spec(s.published)[1]) for s in SPECS)
    fig = throughput_chart(gather(scratch_out).bars)
    bars = [patch for ax in fig.axes for c in ax.containers for patch in c]
    assert len(bars) == published + 2
    assert sum(patch.get_hatch() == "//" for patch in bars) == published
    labels = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert "measured: onnxruntime on cpu" in labels and all(
        lab.startswith("published (seed): ") for lab in labels if lab != "measured: onnxruntime on cpu")


def test_html_is_self_contained_and_shows_the_same_rows(page):
    html = page["html"]
    assert '<img src="throughput.png"' in html
    assert "<script" not in html and "<link" not in html and "http" not in html.split("<body>")[0]
    assert "<code>python -m tools.x eval --backend onnxruntime --batch 1</code>" in html
    assert html.count("<tr>") == page["md"].count("\n| ")  # header and data rows of every table


def test_regenerating_replaces_the_page_atomically(scratch_out, page, tmp_path):
    other_batch = OTHER.input.batch_sizes[0]
    measure(scratch_out, OTHER, other_batch, tmp_path)
    try:
        result = run_page("--out", str(scratch_out))
        assert result.returncode == 0, result.stderr
        md = (page["dest"] / "index.md").read_text()
        assert any(r[2] == "measured" for r in table_rows(section(md, "Throughput\n"), OTHER.name))
        rest = " ".join(map(str, OTHER.input.batch_sizes[1:]))
        assert (f'make {OTHER.name}-perf BATCH="{rest}"' in md) if rest else (f"make {OTHER.name}-perf" not in md)
        assert sorted(p.name for p in page["dest"].iterdir()) == ["index.html", "index.md", "throughput.png"]
    finally:
        shutil.rmtree(scratch_out / OTHER.name / "perf")


def test_bad_out_is_one_error_line(tmp_path):
    result = run_page("--out", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: OUT {tmp_path / 'nowhere'} is not a folder: point it at "
                                                  "the folder the steps wrote"]


def test_make_clean_accepts_an_out_holding_the_results_page(tmp_path):
    out = tmp_path / "out"
    write_report(report_for(MULTI, 30.0), out / MULTI.name / "eval")
    assert run_page("--out", str(out)).returncode == 0
    clean = subprocess.run([sys.executable, "-m", "common.fsutil", "clean", str(out)], cwd=REPO_ROOT,
                           capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- fleet-report

def job_record(results: Path, job: str, spec, chip: str, batch: int) -> Path:
    """<RESULTS>/<job>/job.json, written as the merge Job writes it (`python -m common.fleet record-job`)."""
    folder = results / job
    folder.mkdir(parents=True, exist_ok=True)
    record = subprocess.run([sys.executable, "-m", "common.fleet", "record-job", "--out", str(folder), "--job", job,
                             "--model", spec.name, "--chip", chip, "--batch", str(batch), "--shards", "4",
                             "--backend", "ais_bench", "--image", "reg/av:1", "--namespace", "vision"],
                            cwd=REPO_ROOT, capture_output=True, text=True)
    assert record.returncode == 0, record.stderr
    return folder


def test_fleet_report_has_one_row_per_model_chip_batch_labelled_with_its_job(tmp_path):
    results = tmp_path / "results"
    b0, b1 = MULTI.input.batch_sizes[:2]
    for job, chip, batch, ts in (("j-old", "310P3", b0, "2026-11-28T01:00:00+00:00"),
                                 ("j-new", "310P3", b0, "2026-11-29T01:00:00+00:00"),
                                 ("j-b1", "310P3", b1, "2026-11-29T01:00:00+00:00"),
                                 ("j-310b", "310B1", b0, "2026-11-29T01:00:00+00:00")):
        folder = job_record(results, job, MULTI, chip, batch)
        write_report(report_for(MULTI, 20.0 + batch, backend="ais_bench", device="npu:0", batch=batch,
                                command=f"python -m tools.{MULTI.name} merge --count 4 # {job}", timestamp=ts),
                     folder)
    job_record(results, "j-running", OTHER, "310P3", OTHER.input.batch_sizes[0])
    (results / "j-broken").mkdir()
    (results / "j-broken" / "job.json").write_text("{")
    result = run_page("fleet", "--results", str(results))
    assert result.returncode == 0, result.stderr
    md = (results / "report" / "index.md").read_text()
    rows = [r for job in ("j-old", "j-new", "j-b1", "j-310b") for r in table_rows(md, job)]
    assert sorted((r[0], r[1], r[2], int(r[3])) for r in rows) == sorted(
        [("j-new", MULTI.name, "310P3", b0), ("j-b1", MULTI.name, "310P3", b1), ("j-310b", MULTI.name, "310B1", b0)])
    new = table_rows(md, "j-new")[0]
    assert new[4:6] == ["ais_bench", "4"] and "published (seed)" in new[7] and new[8] == "npu:0"
    assert "# j-new`" in new[9] and new[11] == "`reg/av:1`"
    missing = section(md, "Missing results")
    assert f"Job j-running ({OTHER.name}, 310P3, bs{OTHER.input.batch_sizes[0]}): merge Job not finished" in missing
    problems = section(md, "Problems")
    assert str(results / "j-broken" / "job.json") in problems and "j-old and j-new" in problems
    assert "Traceback" not in result.stderr


def test_fleet_report_without_job_records_is_one_error_line(tmp_path):
    result = run_page("fleet", "--results", str(tmp_path))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(f"error: no {tmp_path}/*/job.json found")
