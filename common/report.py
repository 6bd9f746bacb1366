"""Accuracy/throughput reports set beside the published figures.

A report must let a reader tell at a glance what was measured here and what was only
published elsewhere, and reproduce the run: so every published number carries its source,
and the report records the command line, backend, device, batch size, package versions and
the exact dataset (including any skipped files).
"""

from __future__ import annotations

import math
import os
import platform
import shlex
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from common.errors import ToolError
from common.fsutil import read_json, write_json_atomic, write_text_atomic

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
DEFAULT_TOLERANCE = 0.01
#: relative slack so that a value exactly on the 1% boundary is not failed by float rounding
_EPS = 1e-9
#: a measurement this far (relative) above a published figure is not a pass but a sign of a wrong
#: evaluation (subset, wrong annotations, leaked labels): the published figures of one model differ by
#: under 3% between backends (FCOS 35.0 / 35.7 / 35.9, EfficientDet 33.4 / 33.6, PSPNet 76.18 / 76.778)
SUSPICIOUS_ABOVE_REL = 0.05
SUSPICIOUS = "SUSPICIOUS (far above published)"
#: report.md lists this many skipped files; report.json always has them all
_MAX_SKIPPED_SHOWN = 20

#: label -> candidate distribution names (first installed one wins)
VERSION_PACKAGES: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
    "torch": ("torch",),
    "torchvision": ("torchvision",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "onnxruntime-extensions": ("onnxruntime-extensions", "onnxruntime_extensions"),
    "onnxsim": ("onnx-simplifier", "onnxsim"),
    "opencv": ("opencv-python-headless", "opencv-python"),
    "pillow": ("Pillow", "pillow"),
    "pycocotools": ("pycocotools",),
    "mmcv": ("mmcv-full", "mmcv"),
    "mmdet": ("mmdet",),
    "mmsegmentation": ("mmsegmentation",),
    "detectron2": ("detectron2",),
    "effdet": ("effdet",),
    "timm": ("timm",),
    "ais_bench": ("ais_bench", "ais-bench"),
}


def collect_versions(extra: Iterable[str] = ()) -> dict[str, str | None]:
    """Python/platform and package versions from installed metadata (None = not installed).

    Reads metadata only, so it is fast and never fails on a package that is missing or
    broken on import.
    """
    from importlib import metadata

    versions: dict[str, str | None] = {"python": platform.python_version(), "platform": platform.platform()}
    wanted = dict(VERSION_PACKAGES)
    wanted.update({name: (name,) for name in extra})
    for label, dists in wanted.items():
        found = None
        for dist in dists:
            try:
                found = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
            except Exception:  # a corrupt dist-info must not break a report
                continue
        versions[label] = found
    return versions


def compare(measured: float, published: float, tolerance_rel: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """The seeds' acceptance rule: pass when measured >= published * (1 - tolerance).

    Being a little higher passes (recorded as ``higher``); more than SUSPICIOUS_ABOVE_REL above
    the published figure does not (``suspicious``): no reproduction beats its recipe by that much.
    An undefined measurement (nan) neither passes nor fails (``within_tolerance`` is None).
    """
    if not (0.0 <= tolerance_rel < 1.0):
        raise ToolError(f"tolerance_rel {tolerance_rel} must be in [0, 1) (0.01 means 1% relative)")
    given = published
    try:
        published = float(given)
    except (TypeError, ValueError):
        published = float("nan")
    if not (math.isfinite(published) and published > 0):
        raise ToolError(f"published figure {given!r} must be a positive number: fix it in model.toml")
    result: dict[str, Any] = {"measured": None, "published": published, "delta": None, "relative": None,
                              "tolerance_rel": tolerance_rel, "within_tolerance": None, "higher": None,
                              "suspicious": None}
    try:
        measured = float(measured)
    except (TypeError, ValueError):
        raise ToolError(f"measured value {measured!r} is not a number") from None
    if not math.isfinite(measured):
        return result
    delta = measured - published
    suspicious = delta > SUSPICIOUS_ABOVE_REL * published
    result.update(
        measured=measured, delta=delta, relative=delta / published,
        within_tolerance=not suspicious and measured >= published * (1.0 - tolerance_rel) - _EPS * published,
        higher=measured > published, suspicious=suspicious,
    )
    return result


@dataclass
class PublishedFigure:
    """A number from a published recipe: never measured here, always with its source."""

    metric: str
    value: float
    source: str
    backend: str = ""
    device: str = ""

    @property
    def label(self) -> str:
        what = " on ".join(x for x in (self.backend, self.device) if x)
        return f"published ({what})" if what else "published"


@dataclass
class DatasetInfo:
    path: str
    num_images: int
    #: a subset run (--limit) or one with skipped files; set automatically when files were skipped
    partial: bool = False
    #: file names, or the manifest's ``{"source": ..., "reason": ...}`` records
    skipped: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.skipped:
            self.partial = True


@dataclass
class ThroughputRow:
    backend: str
    device: str
    batch: int
    fps: float
    source: str = "measured"


@dataclass
class Provenance:
    command: str
    backend: str
    device: str
    batch_size: int
    versions: dict[str, str | None]
    timestamp: str
    weights: str | None = None  # common.weights.describe_weights of the model's export record
    #: the export's PyTorch-vs-ONNX Runtime check behind the model file (:func:`parity_summary`)
    parity: dict[str, Any] | None = None

    @classmethod
    def capture(cls, backend: str, device: str, batch_size: int,
                argv: Sequence[str] | None = None) -> Provenance:
        """Provenance of the running process: its command line, versions and the time now (UTC)."""
        args = list(sys.argv if argv is None else argv)
        return cls(command=shlex.join(args), backend=backend, device=device, batch_size=int(batch_size),
                   versions=collect_versions(),
                   timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"))


@dataclass
class Report:
    model: str
    task: str
    metrics: dict[str, float]
    provenance: Provenance
    dataset: DatasetInfo
    published: list[PublishedFigure] = field(default_factory=list)
    tolerance_rel: float = DEFAULT_TOLERANCE
    throughput: list[ThroughputRow] = field(default_factory=list)
    published_throughput: list[ThroughputRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def comparisons(self) -> list[dict[str, Any]]:
        """One entry per published figure; a metric that was not measured is listed as such."""
        rows = []
        for fig in self.published:
            if fig.metric in self.metrics:
                cmp = compare(self.metrics[fig.metric], fig.value, self.tolerance_rel)
            else:
                cmp = compare(float("nan"), fig.value, self.tolerance_rel)
            row = {"metric": fig.metric, "label": fig.label, "source": fig.source,
                   "measured_here": fig.metric in self.metrics, **cmp}
            rows.append(row | {"verdict": _verdict(row)})
        return rows

    def to_dict(self) -> dict[str, Any]:
        comps = self.comparisons()
        return _json_safe({
            "model": self.model, "task": self.task, "metrics": self.metrics,
            "published": [asdict(p) | {"label": p.label} for p in self.published],
            "tolerance_rel": self.tolerance_rel,
            "comparisons": comps,
            "all_within_tolerance": bool(comps) and all(c["within_tolerance"] is True for c in comps),
            "throughput": [asdict(r) for r in self.throughput],
            "published_throughput": [asdict(r) for r in self.published_throughput],
            "provenance": asdict(self.provenance), "dataset": asdict(self.dataset), "notes": self.notes,
        })

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Report:
        def num(v: Any) -> float:
            return float("nan") if v is None else float(v)

        return cls(
            model=d["model"], task=d["task"], metrics={k: num(v) for k, v in d["metrics"].items()},
            provenance=Provenance(**d["provenance"]), dataset=DatasetInfo(**d["dataset"]),
            published=[PublishedFigure(p["metric"], p["value"], p["source"], p.get("backend", ""),
                                       p.get("device", "")) for p in d.get("published", [])],
            tolerance_rel=d.get("tolerance_rel", DEFAULT_TOLERANCE),
            throughput=[ThroughputRow(**r) for r in d.get("throughput", [])],
            published_throughput=[ThroughputRow(**r) for r in d.get("published_throughput", [])],
            notes=list(d.get("notes", [])),
        )


#: the columns every parity row has (tools add detection-aware extras, kept in the export's own JSON)
PARITY_COLUMNS = ("name", "shape", "max_abs_diff", "max_rel_diff", "atol", "rtol", "ok")


def command_argv() -> list[str]:
    """The command line as the user typed it (`python -m tools.<model>` shows as a __main__.py path)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith("__main__.py"):
        argv[:1] = ["python", "-m", f"tools.{Path(argv[0]).parent.name}"]
    return argv


def provenance(backend: str, batch: int, device: str, model_path: str | os.PathLike | None = None):
    """What produced a number: command line, backend, device, batch size and versions."""
    prov = Provenance.capture(backend, device, batch, argv=command_argv())
    if model_path:
        prov.command += f"  # model file: {model_path}"
    return prov


def parity_summary(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The part of an export's parity record a report shows: the verdict and one row per output."""
    if not isinstance(record, Mapping) or "ok" not in record:
        return None
    rows = [{k: r.get(k) for k in PARITY_COLUMNS} for r in record.get("rows", []) if isinstance(r, Mapping)]
    return {"ok": bool(record["ok"]), "rows": rows}


def published_from_spec(published: Mapping[str, Any], where: str = "model.toml"
                        ) -> tuple[list[PublishedFigure], list[ThroughputRow], float]:
    """Read a model data file's ``[published]`` table: accuracy figures, throughput rows, tolerance.

    Throughput entries hold ``fps = { <batch> = <fps>, ... }`` per device.
    """
    try:
        tol = float(published.get("tolerance_rel", DEFAULT_TOLERANCE))
        figures = [PublishedFigure(metric=str(a["metric"]), value=float(a["value"]), source=str(a["source"]),
                                   backend=str(a.get("backend", "")), device=str(a.get("device", "")))
                   for a in published.get("accuracy", [])]
        rows = [ThroughputRow(backend=str(t.get("backend", "")), device=str(t["device"]), batch=int(b),
                              fps=float(fps), source=str(t["source"]))
                for t in published.get("throughput", []) for b, fps in t["fps"].items()]
    except KeyError as err:
        raise ToolError(f"{where}: a [published] entry lacks {err}") from None
    except (TypeError, ValueError, AttributeError) as err:
        raise ToolError(f"{where}: a [published] entry has a malformed value ({err})") from None
    return figures, rows, tol


# --------------------------------------------------------------------------- rendering

def _json_safe(obj: Any) -> Any:
    """Strict JSON: nan/inf become null (json.dumps would write the invalid token NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _fmt(value: float | None, digits: int = 3, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _cell(text: Any) -> str:
    """Markdown table cell: pipes and newlines would break the table."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _verdict(c: Mapping[str, Any]) -> str:
    if c.get("suspicious"):
        return SUSPICIOUS
    if c["within_tolerance"] is None:
        return "n/a (undefined)" if c["measured_here"] else "n/a (not measured)"
    if not c["within_tolerance"]:
        return "NO"
    return "yes (higher)" if c["higher"] else "yes"


def _coerce_row(row: ThroughputRow | Mapping[str, Any], default_source: str) -> ThroughputRow:
    if isinstance(row, ThroughputRow):
        r = row
    else:
        try:
            r = ThroughputRow(backend=str(row.get("backend", "")), device=str(row["device"]),
                              batch=int(row["batch"]), fps=float(row["fps"]),
                              source=str(row.get("source", default_source)))
        except KeyError as err:
            raise ToolError(f"throughput row {dict(row)} lacks {err} (need device, batch, fps)") from None
        except (TypeError, ValueError):
            raise ToolError(f"throughput row {dict(row)}: batch must be an integer, fps a number") from None
    if r.batch < 1 or not math.isfinite(r.fps) or r.fps < 0:
        raise ToolError(f"throughput row {asdict(r)}: batch must be >= 1 and fps a finite number >= 0")
    return r


def throughput_table(rows: Iterable[ThroughputRow | Mapping[str, Any]],
                     published_rows: Iterable[ThroughputRow | Mapping[str, Any]] = ()) -> str:
    """Markdown table of fps per batch size, measured rows first, published ones beside them."""
    measured = [("measured", _coerce_row(r, "measured")) for r in rows]
    published = [("published", _coerce_row(r, "published")) for r in published_rows]
    if not measured and not published:
        return "_no throughput figures_\n"
    order = {"measured": 0, "published": 1}
    entries = sorted(measured + published, key=lambda e: (e[1].batch, order[e[0]], e[1].device, e[1].backend))
    lines = ["| batch | kind | backend | device | fps | source |", "|---:|---|---|---|---:|---|"]
    for kind, r in entries:
        lines.append(f"| {r.batch} | {kind} | {_cell(r.backend or '—')} | {_cell(r.device)} | "
                     f"{_fmt(r.fps, 2)} | {_cell(r.source)} |")
    return "\n".join(lines) + "\n"


def _skipped_item(item: Any) -> str:
    if isinstance(item, Mapping) and "source" in item:
        reason = item.get("reason")
        return f"`{item['source']}`" + (f" ({reason})" if reason else "")
    return f"`{item}`"


def _parity_lines(parity: Mapping[str, Any]) -> list[str]:
    lines = ["## Export parity (PyTorch vs ONNX Runtime)", "",
             f"Verdict: **{'OK' if parity.get('ok') else 'FAIL'}** (the export behind the model file, "
             "on the same random input in both runtimes)", ""]
    rows = parity.get("rows") or []
    if rows:
        lines += ["| output | shape | max abs diff | max rel diff | atol | rtol | ok |",
                  "|---|---|---:|---:|---:|---:|---|"]
        lines += [f"| {_cell(r.get('name'))} | {_cell(r.get('shape'))} | {_sci(r.get('max_abs_diff'))} | "
                  f"{_sci(r.get('max_rel_diff'))} | {_sci(r.get('atol'))} | {_sci(r.get('rtol'))} | "
                  f"{'yes' if r.get('ok') else 'NO'} |" for r in rows]
    return lines + [""]


def _sci(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else _cell(value)


def render_markdown(report: Report) -> str:
    """The human-readable report: metrics beside published figures, then provenance."""
    tol_pct = f"{report.tolerance_rel * 100:g}%"
    lines = [f"# {report.model}: {report.task}", ""]
    if report.notes:  # e.g. the pipeline-demonstration label: first thing a reader sees
        lines += [f"> **{n}**" for n in report.notes] + [""]
    if report.dataset.partial:
        lines += [f"**Partial run**: {report.dataset.num_images} images evaluated"
                  + (f", {len(report.dataset.skipped)} skipped" if report.dataset.skipped else "")
                  + ". Figures are not comparable to full-dataset published ones.", ""]
    lines += ["## Accuracy", "",
              f"| metric | measured | published | delta | within tol ({tol_pct}) |",
              "|---|---:|---:|---:|---|"]
    comps = report.comparisons()
    sources: list[str] = []
    for name, value in report.metrics.items():
        mine = [c for c in comps if c["metric"] == name]
        if not mine:
            lines.append(f"| {_cell(name)} | {_fmt(value)} | — | — | — |")
        for c in mine:
            sources.append(f"{c['label']}: {c['source']}")
            rel = "" if c["relative"] is None else f" ({c['relative'] * 100:+.2f}%)"
            lines.append(f"| {_cell(name)} | {_fmt(c['measured'])} | "
                         f"{_fmt(c['published'])} [{len(sources)}] | "
                         f"{_fmt(c['delta'], signed=True)}{rel} | {c['verdict']} |")
    for c in comps:  # published figures this run did not measure
        if c["metric"] not in report.metrics:
            sources.append(f"{c['label']}: {c['source']}")
            lines.append(f"| {_cell(c['metric'])} | not measured | {_fmt(c['published'])} [{len(sources)}] | "
                         f"— | {c['verdict']} |")
    lines.append("")
    if sources:
        lines += ["Published figures were not measured here; their sources:", ""]
        lines += [f"{i}. {_cell(s)}" for i, s in enumerate(sources, 1)] + [""]
    if report.throughput or report.published_throughput:
        lines += ["## Throughput", "", throughput_table(report.throughput, report.published_throughput)]
    p, d = report.provenance, report.dataset
    if p.parity:
        lines += _parity_lines(p.parity)
    lines += ["## Provenance", "",
              f"- command: `{p.command}`", f"- backend: {p.backend}", f"- device: {p.device}",
              f"- batch size: {p.batch_size}", f"- timestamp (UTC): {p.timestamp}",
              *([f"- weights: {p.weights}"] if p.weights else []),
              f"- dataset: `{d.path}` ({d.num_images} images{', partial' if d.partial else ''})"]
    if d.skipped:
        shown = ", ".join(_skipped_item(s) for s in d.skipped[:_MAX_SKIPPED_SHOWN])
        more = len(d.skipped) - _MAX_SKIPPED_SHOWN
        tail = f" and {more} more (all listed in {REPORT_JSON})" if more > 0 else ""
        lines.append(f"- skipped files ({len(d.skipped)}): {shown}{tail}")
    installed = ", ".join(f"{k} {v}" for k, v in p.versions.items() if v)
    lines.append(f"- versions: {installed}")
    return "\n".join(lines) + "\n"


def write_report(report: Report, out_dir: str | Path, *, force: bool = False) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` atomically; refuse to replace them unless ``force``."""
    out = Path(out_dir)
    json_path, md_path = out / REPORT_JSON, out / REPORT_MD
    if out.exists() and not out.is_dir():
        raise ToolError(f"report directory {out} is a file: choose a directory")
    existing = [p for p in (json_path, md_path) if p.exists()]
    if existing and not force:
        raise ToolError(f"report {existing[0]} already exists: pass --force to overwrite it, "
                        "or choose another OUT")
    data = report.to_dict()
    markdown = render_markdown(report)
    write_json_atomic(json_path, data)
    write_text_atomic(md_path, markdown)
    return json_path, md_path


def report_location(out_dir: str | Path) -> str:
    """The line a command prints last, so that the user knows where the report went."""
    out = Path(out_dir)
    return f"report: {out / REPORT_MD} (and {out / REPORT_JSON})"


def read_report(path: str | Path) -> Report:
    """Load a ``report.json`` written by :func:`write_report` (e.g. to aggregate runs)."""
    data = read_json(path, what="report")
    try:
        return Report.from_dict(data)  # type: ignore[arg-type]
    except (KeyError, TypeError, AttributeError) as err:
        raise ToolError(f"report {path} is not a report.json written by this tool ({err}): "
                        "regenerate it") from None
