"""The results page: every model's latest accuracy and throughput results on one page.

    python -m common.resultspage --out OUT [--dest OUT/report]            # make report
    python -m common.resultspage fleet --results DIR [--dest DIR/report]  # make fleet-report

A reader must see in one place what was measured here, what was only published (the seeds'
figures, labelled "published (seed)"), what produced each measured figure (command, backend,
device, batch size, versions) and what is still missing (with the make command that makes it).
The page is derived data: it is read from the report.json / perf.json / job.json files the steps
wrote, and regenerating it replaces it (index.md, index.html, throughput.png in DEST, written
atomically). A result file that cannot be read is one line in the page's problems section.
"""

from __future__ import annotations

import argparse
import html
import io
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from common.errors import ToolError
from common.fsutil import DEMO_DIR, REPORT_DIR, read_json, run_main, write_bytes_atomic, write_text_atomic
from common.modeltable import HEADER as MODEL_HEADER
from common.modeltable import model_rows
from common.report import REPORT_JSON, Report, ThroughputRow, _coerce_row, published_from_spec, read_report
from common.spec import MODELS, ModelSpec, load_spec

PAGE_MD, PAGE_HTML, CHART_PNG = "index.md", "index.html", "throughput.png"
PUBLISHED = "published (seed)"
JOB_JSON = "job.json"
#: the keys common.fleet record-job writes into <RESULTS>/<job>/job.json
JOB_KEYS = ("job", "model", "chip", "batch", "shards", "backend", "image", "namespace")
DATA_HINT = "DATA=<dataset root>"


@dataclass(frozen=True)
class AccuracyKind:
    """One kind of accuracy result: the Makefile's folders that hold it and the target that makes it."""

    label: str
    folders: tuple[str, ...]
    make_args: str
    uint8: bool = False


#: where the Makefile writes reports under OUT/<model>/ (eval: M-eval / M-all; stream: M-stream; merge: M-merge
#: after SHARD=I/N runs)
ACCURACY_KINDS = (
    AccuracyKind("accuracy (float input)", ("eval", "stream", "merge"), "{m}-all " + DATA_HINT),
    AccuracyKind("accuracy (uint8 input)", ("eval_uint8", "stream_uint8", "merge_uint8"),
                 "{m}-all INPUT=uint8 " + DATA_HINT, uint8=True),
)


@dataclass
class Table:
    headers: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)


@dataclass
class Section:
    """A heading with Markdown-ish lines (`code` spans only), an optional table and image."""

    title: str
    lines: list[str] = field(default_factory=list)
    table: Table | None = None
    image: str | None = None


@dataclass
class Bar:
    """One bar of the chart: a model's images/s at a batch size, measured here or published."""

    model: str
    series: str
    batch: int
    fps: float
    published: bool


@dataclass
class Gathered:
    """What the result files hold, in page order, plus what is missing and what could not be read."""

    accuracy: list[tuple[str, ...]] = field(default_factory=list)
    fleet: list[tuple[str, ...]] = field(default_factory=list)
    throughput: list[tuple[str, ...]] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- labels

def versions_text(versions: dict[str, Any] | None) -> str:
    return ", ".join(f"{k} {v}" for k, v in (versions or {}).items() if v)


def _num(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}".rstrip("0").rstrip(".")


def measured_text(report: Report) -> str:
    return "; ".join(f"{k} {_num(v)}" for k, v in report.metrics.items()) or "no metrics"


def published_text(report: Report) -> str:
    """The report's comparisons with the seeds' figures, each labelled as published, with the verdict."""
    parts = [f"{PUBLISHED} {c['metric']} {_num(c['published'])} {c['label'].removeprefix('published ')}: "
             f"{c['verdict']}" for c in report.comparisons()]
    return "; ".join(parts) or "—"


def notes_text(report: Report) -> str:
    notes = list(report.notes) + (["partial dataset"] if report.dataset.partial else [])
    return "; ".join(notes)


# --------------------------------------------------------------------------- local results (make report)

def _accuracy_row(model: str, folder: str, report: Report, path: Path) -> tuple[str, ...]:
    p = report.provenance
    return (model, f"`{folder}`", measured_text(report), published_text(report), p.backend, p.device,
            str(p.batch_size), f"`{p.command}`", versions_text(p.versions), p.timestamp, notes_text(report),
            f"`{path}`")


def _noted(problems: list[str], load: Callable[..., Any], *args: Any) -> Any:
    """``load(*args)``, or None with its one-line error added to ``problems`` (the page goes on)."""
    try:
        return load(*args)
    except ToolError as err:
        problems.append(str(err))
        return None


def _load_report(path: Path, model: str, problems: list[str]) -> Report | None:
    """The report at ``path``, or None with one problem line when it is unreadable or another model's."""
    report = _noted(problems, read_report, path)
    if report is None:
        return None
    if report.model != model:
        problems.append(f"report {path} holds model '{report.model}', not '{model}': move it to OUT/{report.model}")
        return None
    return report


def _perf_rows(path: Path, model: str, problems: list[str]) -> list[dict[str, Any]]:
    """perf.json's rows, each checked; an unreadable file or row is one problem line."""
    try:
        data = read_json(path, what="perf results")
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise ToolError(f"perf results {path} has no list of rows: rerun make {model}-perf FORCE=1")
        if data.get("model") != model:
            raise ToolError(f"perf results {path} hold model '{data.get('model')}', not '{model}'")
        rows = data["rows"]
        for row in rows:
            if not isinstance(row, dict):
                raise ToolError(f"perf results {path}: a row is not an object: rerun make {model}-perf FORCE=1")
            _coerce_row(row, "measured")
    except ToolError as err:
        message = str(err)
        problems.append(message if str(path) in message else f"perf results {path}: {message}")
        return []
    return rows


def _throughput_row(model: str, row: ThroughputRow, measured: dict[str, Any] | None) -> tuple[str, ...]:
    if measured is None:
        return (model, str(row.batch), PUBLISHED, row.backend or "—", row.device, _num(row.fps), row.source,
                "—", "—")
    return (model, str(row.batch), "measured", row.backend, row.device, _num(row.fps),
            f"`{measured.get('command', '?')}`", versions_text(measured.get("versions")),
            str(measured.get("timestamp", "?")))


def _published_throughput(spec: ModelSpec) -> list[ThroughputRow]:
    _, rows, _ = published_from_spec(spec.published, where=str(spec.path))
    return rows


def _missing_accuracy(spec: ModelSpec, found: set[str], out: Path) -> list[str]:
    lines = []
    for kind in ACCURACY_KINDS:
        if kind.uint8 and not spec.capabilities.uint8_input:
            continue
        if not found.intersection(kind.folders):
            where = " or ".join(f"{out / spec.name / f}/{REPORT_JSON}" for f in kind.folders)
            cmd = f"make {kind.make_args.format(m=spec.name)} OUT={out}"
            lines.append(f"{spec.name}: {kind.label}: no {where}: `{cmd}`")
    return lines


def _missing_perf(spec: ModelSpec, measured_batches: set[int], out: Path) -> list[str]:
    absent = [b for b in spec.input.batch_sizes if b not in measured_batches]
    if not absent:
        return []
    sizes = " ".join(map(str, absent))
    return [f"{spec.name}: throughput at batch size {', '.join(map(str, absent))}: no row in "
            f"{out / spec.name / 'perf' / 'perf.json'}: `make {spec.name}-perf BATCH=\"{sizes}\" OUT={out}`"]


def _report_paths(out: Path, model: str) -> list[tuple[str, Path]]:
    """(result label, report.json) of a model: the Makefile's folders, then `make demo`'s report (shown with its
    PIPELINE DEMONSTRATION note, never counted as the model's accuracy result)."""
    folders = dict.fromkeys(f for kind in ACCURACY_KINDS for f in kind.folders)
    return [(f, out / model / f / REPORT_JSON) for f in folders] + [
        (f"{DEMO_DIR}/{model}/eval", out / DEMO_DIR / model / "eval" / REPORT_JSON)]


def _gather_model(spec: ModelSpec, out: Path, got: Gathered) -> None:
    found: set[str] = set()
    for folder, path in _report_paths(out, spec.name):
        if not path.exists():
            continue
        report = _load_report(path, spec.name, got.problems)
        if report is not None:
            found.add(folder)
            got.accuracy.append(_accuracy_row(spec.name, folder, report, path))
    perf = out / spec.name / "perf" / "perf.json"
    rows = _perf_rows(perf, spec.name, got.problems) if perf.exists() else []
    for raw in rows:
        row = _coerce_row(raw, "measured")
        got.throughput.append(_throughput_row(spec.name, row, raw))
        got.bars.append(Bar(spec.name, f"measured: {row.backend} on {row.device}", row.batch, row.fps, published=False))
    for row in _noted(got.problems, _published_throughput, spec) or []:
        got.throughput.append(_throughput_row(spec.name, row, None))
        got.bars.append(Bar(spec.name, f"{PUBLISHED}: {row.device}", row.batch, row.fps, published=True))
    if spec.status == "ready":
        got.missing += _missing_accuracy(spec, found, out)
        got.missing += _missing_perf(spec, {int(r["batch"]) for r in rows}, out)


def gather(out: Path, models: Iterable[str] = MODELS) -> Gathered:
    """Read every model's results under OUT (the Makefile's folders) beside its data file's figures."""
    got = Gathered()
    for name in models:
        spec = _noted(got.problems, load_spec, name)
        if spec is not None:
            _gather_model(spec, out, got)
    return got


ACCURACY_HEADER = ("model", "result", "measured", "published (seed) and verdict", "backend", "device", "batch",
                   "command", "versions", "when (UTC)", "notes", "file")
THROUGHPUT_HEADER = ("model", "batch", "figure", "backend", "device", "images/s", "command or source", "versions",
                     "when (UTC)")


def local_page(out: Path, got: Gathered) -> list[Section]:
    chart = Section("Throughput chart", [
        f"Images/s per batch size, per model and backend: solid bars were measured here (perf.json), "
        f"hatched bars are {PUBLISHED} figures from each tool's model.toml."], image=CHART_PNG)
    return [
        Section("Accuracy (latest report of each result folder)",
                [] if got.accuracy else [f"_no report.json under {out}_"], Table(ACCURACY_HEADER, got.accuracy)),
        chart,
        Section("Throughput", [], Table(THROUGHPUT_HEADER, got.throughput)),
        Section("Missing results", _bullets(got.missing, "none: every ready model has every result")
                + ["Each command needs the model file of its batch size (make M-onnx BATCH=b; M-om for "
                   "BACKEND=ais_bench); add BACKEND=ais_bench on an Ascend host."]),
        Section(f"Published figures ({PUBLISHED}, from model.toml; not measured here)", [],
                Table(MODEL_HEADER, model_rows())),
        Section("Problems", _bullets(got.problems, "none: every result file was read")),
    ]


# --------------------------------------------------------------------------- fleet results (make fleet-report)

def _load_job(path: Path) -> dict[str, Any]:
    data = read_json(path, what="job record")
    if not isinstance(data, dict):
        raise ToolError(f"job record {path} is not a JSON object: rerun the merge Job's record-job step")
    absent = [k for k in JOB_KEYS if k not in data]
    if absent:
        raise ToolError(f"job record {path} lacks {', '.join(absent)}: rerun the merge Job's record-job step")
    try:
        data["batch"] = int(data["batch"])
    except (TypeError, ValueError):
        raise ToolError(f"job record {path}: batch {data['batch']!r} is not an integer") from None
    return data


def _fleet_row(job: dict[str, Any], report: Report, path: Path) -> tuple[str, ...]:
    p = report.provenance
    return (str(job["job"]), str(job["model"]), str(job["chip"]), str(job["batch"]), str(job["backend"]),
            str(job["shards"]), measured_text(report), published_text(report), p.device, f"`{p.command}`",
            versions_text(p.versions), f"`{job['image']}`", p.timestamp, notes_text(report), f"`{path}`")


FLEET_HEADER = ("Job", "model", "chip", "batch", "backend", "shards", "measured", "published (seed) and verdict",
                "device", "command", "versions", "image", "when (UTC)", "notes", "file")


def gather_fleet(results: Path) -> Gathered:
    """One row per model x chip x batch from <results>/*/job.json and the report.json beside it."""
    records = sorted(results.glob(f"*/{JOB_JSON}"))
    if not records:
        raise ToolError(f"no {results}/*/{JOB_JSON} found: point RESULTS at the fleet's results volume")
    got = Gathered()
    latest: dict[tuple[str, str, int], tuple[str, tuple[str, ...]]] = {}
    for record in records:
        job = _noted(got.problems, _load_job, record)
        if job is None:
            continue
        report_path = record.parent / REPORT_JSON
        if not report_path.exists():
            got.missing.append(f"Job {job['job']} ({job['model']}, {job['chip']}, bs{job['batch']}): merge Job not "
                               f"finished (no {report_path})")
            continue
        report = _load_report(report_path, str(job["model"]), got.problems)
        if report is None:
            continue
        key = (str(job["model"]), str(job["chip"]), job["batch"])
        row = (report.provenance.timestamp, _fleet_row(job, report, report_path))
        if key in latest:
            older, newer = sorted([latest[key], row])
            got.problems.append(f"Jobs {older[1][0]} and {newer[1][0]} both hold {key[0]} on {key[1]} bs{key[2]}: "
                                f"the page shows the newer, {newer[1][0]}")
            row = newer
        latest[key] = row
    got.fleet = [latest[k][1] for k in sorted(latest)]
    return got


def fleet_page(results: Path, got: Gathered) -> list[Section]:
    return [
        Section("Fleet results (one row per model x chip x batch)",
                [f"From {results}/*/{JOB_JSON} and the merged {REPORT_JSON} beside each."]
                + ([] if got.fleet else ["_no merged report yet_"]), Table(FLEET_HEADER, got.fleet)),
        Section("Missing results", _bullets(got.missing, "none: every Job has its merged report")),
        Section("Problems", _bullets(got.problems, "none: every job record and report was read")),
    ]


# --------------------------------------------------------------------------- chart

def throughput_chart(bars: list[Bar]):
    """One subplot per model: bars of images/s per batch size, one colour per series; published hatched."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    models = list(dict.fromkeys(b.model for b in bars))
    fig = Figure(figsize=(10, 1 + 3.2 * max(1, len(models))), dpi=90)
    if not models:
        fig.text(0.5, 0.5, "no throughput figures", ha="center", va="center")
        return fig
    axes = fig.subplots(len(models), 1, squeeze=False)[:, 0]
    for ax, model in zip(axes, models):
        _model_bars(ax, model, [b for b in bars if b.model == model])
    fig.tight_layout()
    return fig


def _model_bars(ax, model: str, bars: list[Bar]) -> None:
    batches = sorted({b.batch for b in bars})
    series = list(dict.fromkeys(b.series for b in sorted(bars, key=lambda b: b.published)))
    width = 0.8 / len(series)
    for i, name in enumerate(series):
        mine = [b for b in bars if b.series == name]
        published = mine[0].published
        xs = [batches.index(b.batch) - 0.4 + width * (i + 0.5) for b in mine]
        drawn = ax.bar(xs, [b.fps for b in mine], width, label=name, color=f"C{i % 10}",
                       alpha=0.45 if published else 1.0, hatch="//" if published else None, edgecolor="black",
                       linewidth=0.5)
        if not published:  # a CPU figure beside the NPU's is too short to read from the axis
            ax.bar_label(drawn, fmt="%.3g", fontsize=7)
    ax.set_xticks(range(len(batches)), [str(b) for b in batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel("images/s")
    ax.set_title(model)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")  # the legends sit right of the axes
    return buf.getvalue()


# --------------------------------------------------------------------------- rendering

def _bullets(items: list[str], empty: str) -> list[str]:
    return [f"- {item}" for item in items] if items else [f"_{empty}_"]


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, intro: list[str], sections: list[Section]) -> str:
    lines = [f"# {title}", "", *intro, ""]
    for s in sections:
        lines += [f"## {s.title}", "", *s.lines, ""]
        if s.image:
            lines += [f"![{s.title}]({s.image})", ""]
        if s.table and s.table.rows:
            lines += ["| " + " | ".join(s.table.headers) + " |", "|" + "---|" * len(s.table.headers)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in s.table.rows] + [""]
    return "\n".join(lines)


_CODE = re.compile(r"`([^`]+)`")
_EMPH = re.compile(r"^_(.*)_$")
_STYLE = ("body{font-family:sans-serif;margin:1.5em;}table{border-collapse:collapse;font-size:0.85em;}"
          "td,th{border:1px solid #bbb;padding:2px 6px;vertical-align:top;}code{font-size:0.95em;}")


def _inline_html(text: str) -> str:
    """Escape, then the two Markdown forms the page uses: `code` and a whole-line _emphasis_."""
    escaped = _CODE.sub(r"<code>\1</code>", html.escape(str(text), quote=False))
    return _EMPH.sub(r"<em>\1</em>", escaped)


def _html_lines(lines: list[str]) -> list[str]:
    items = [line[2:] for line in lines if line.startswith("- ")]
    out = [f"<p>{_inline_html(line)}</p>" for line in lines if line and not line.startswith("- ")]
    if items:
        out.insert(0, "<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in items) + "</ul>")
    return out


def render_html(title: str, intro: list[str], sections: list[Section]) -> str:
    """A self-contained page: inline style, the chart referenced relatively, no script."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>", *_html_lines(intro)]
    for s in sections:
        parts += [f"<h2>{html.escape(s.title)}</h2>", *_html_lines(s.lines)]
        if s.image:
            parts.append(f'<p><img src="{html.escape(s.image)}" alt="{html.escape(s.title)}"></p>')
        if s.table and s.table.rows:
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in s.table.headers) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in row) + "</tr>" for row in s.table.rows]
            parts.append("</table>")
    return "\n".join(parts + ["</body></html>", ""])


def write_page(dest: Path, title: str, intro: list[str], sections: list[Section], chart: bytes | None) -> Path:
    """Write the chart, then index.md, then index.html (each atomically): a rerun replaces them."""
    if chart is not None:
        write_bytes_atomic(dest / CHART_PNG, chart)
    write_text_atomic(dest / PAGE_MD, render_markdown(title, intro, sections))
    write_text_atomic(dest / PAGE_HTML, render_html(title, intro, sections))
    return dest / PAGE_HTML


# --------------------------------------------------------------------------- commands

def _intro(source: str) -> list[str]:
    return [f"Derived from the result files under `{source}`; regenerating this page replaces it. Figures labelled "
            f"{PUBLISHED} come from the recipes (model.toml) and were not measured here."]


def _existing_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise ToolError(f"{what} {path} is not a folder: point it at the folder the steps wrote")
    return path


def _chart_png(bars: list[Bar]) -> bytes:
    try:
        return png_bytes(throughput_chart(bars))
    except ImportError:
        raise ToolError(f"matplotlib is not installed in {sys.executable}: run `make report` (the base "
                        "environment has it)") from None


def report_command(out: Path, dest: Path | None) -> str:
    out = _existing_dir(out, "OUT")
    got = gather(out)
    page = write_page(dest or out / REPORT_DIR, "Results", _intro(str(out)), local_page(out, got),
                      _chart_png(got.bars))
    return f"results page: {page} (and {page.with_name(PAGE_MD)}); {len(got.missing)} missing, " \
           f"{len(got.problems)} problem(s)"


def fleet_command(results: Path, dest: Path | None) -> str:
    results = _existing_dir(results, "RESULTS")
    got = gather_fleet(results)
    page = write_page(dest or results / REPORT_DIR, "Fleet results", _intro(str(results)), fleet_page(results, got),
                      None)
    return f"fleet results page: {page} (and {page.with_name(PAGE_MD)}); {len(got.fleet)} row(s), " \
           f"{len(got.missing)} missing, {len(got.problems)} problem(s)"


_REGEN = "The page is derived data: regenerating it replaces index.md, index.html and throughput.png in DEST."


def _parser(fleet: bool) -> argparse.ArgumentParser:
    if fleet:
        p = argparse.ArgumentParser(prog="python -m common.resultspage fleet", description=(
            "Gather the fleet's merged reports (<RESULTS>/<job>/job.json + report.json) into one page, one row "
            "per model x chip x batch, each labelled with its Job. " + _REGEN))
        p.add_argument("--results", type=Path, required=True, help="the fleet's results volume")
        p.add_argument("--dest", type=Path, help="where the page goes (default: RESULTS/report)")
        return p
    p = argparse.ArgumentParser(prog="python -m common.resultspage", description=(
        "Gather every model's latest accuracy and throughput results under OUT into one page with a chart, "
        "beside the published (seed) figures, listing what is missing. `fleet --results DIR` does the same "
        "for a fleet's results volume. " + _REGEN))
    p.add_argument("--out", type=Path, default=Path("out"), help="the steps' output folder (make's OUT)")
    p.add_argument("--dest", type=Path, help="where the page goes (default: OUT/report)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    fleet = bool(args) and args[0] == "fleet"
    ns = _parser(fleet).parse_args(args[1:] if fleet else args)
    step: Callable[[], str] = ((lambda: fleet_command(ns.results, ns.dest)) if fleet
                               else (lambda: report_command(ns.out, ns.dest)))
    return run_main(step, ns.dest)


if __name__ == "__main__":
    sys.exit(main())
