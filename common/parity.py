"""PyTorch vs ONNX Runtime parity: the check every export prints and saves beside its .onnx.

An export that silently changes the numbers (a wrong opset rewrite, a -inf pad, a bad cast)
only shows up much later as lost mAP on the NPU, so each tool compares the PyTorch forward
with ONNX Runtime on the same input right after exporting. Detection outputs are compared as
sets: NMS may legitimately emit equal-score boxes in a different order.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from common.errors import ToolError
from common.fsutil import write_json_atomic

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3


def to_numpy(value: Any) -> np.ndarray:
    """numpy array from a numpy value or a torch tensor (duck-typed so torch is not imported here)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _num(x: float) -> float | None:
    """JSON-safe float: NaN/inf become None rather than invalid JSON."""
    return None if x is None or not math.isfinite(x) else float(x)


def _fmt(x: float) -> str:
    return "nan" if x is None or math.isnan(x) else f"{x:.3g}"


@dataclass
class ParityResult:
    """Element-wise comparison of one output tensor."""

    name: str
    shape: tuple[int, ...]
    got_shape: tuple[int, ...]
    dtype: str
    max_abs: float
    atol: float
    rtol: float
    max_rel: float  # over elements with |ref| > atol
    mismatch: float  # fraction of elements outside atol + rtol * |ref|
    mismatch_tol: float
    ok: bool
    note: str = ""

    def to_dict(self) -> dict:
        return {"kind": "array", "name": self.name, "shape": list(self.shape),
                "got_shape": list(self.got_shape), "dtype": self.dtype,
                "max_abs_diff": _num(self.max_abs), "max_rel_diff": _num(self.max_rel),
                "atol": self.atol, "rtol": self.rtol, "mismatch_fraction": _num(self.mismatch),
                "mismatch_tol": self.mismatch_tol, "ok": self.ok, "note": self.note}

    def format(self) -> str:
        shape = "x".join(map(str, self.shape)) or "scalar"
        tol = f"atol {self.atol:g} + rtol {self.rtol:g}"
        if self.mismatch_tol:
            tol += f", {self.mismatch:.2%} off (allowed {self.mismatch_tol:.2%})"
        note = f"  ({self.note})" if self.note else ""
        return (f"{self.name:<28} {shape:<20} max_abs {_fmt(self.max_abs):<9} "
                f"max_rel {_fmt(self.max_rel):<9} tol {tol:<28} {'OK' if self.ok else 'FAIL'}{note}")


def compare_arrays(name: str, ref: Any, got: Any, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
                   *, mismatch_tol: float = 0.0) -> ParityResult:
    """Compare ``got`` with the reference like ``np.allclose(got, ref, rtol, atol)``.

    NaN must sit at the same positions in both; equal infinities count as equal. ``mismatch_tol``
    allows that fraction of elements to differ (argmax maps flip a few near-tie pixels).
    """
    r, g = to_numpy(ref), to_numpy(got)
    base = dict(name=name, shape=tuple(r.shape), got_shape=tuple(g.shape), dtype=str(r.dtype),
                atol=float(atol), rtol=float(rtol), mismatch_tol=float(mismatch_tol))
    if r.shape != g.shape:
        return ParityResult(**base, max_abs=float("nan"), max_rel=float("nan"), mismatch=1.0, ok=False,
                            note=f"shape {list(r.shape)} vs {list(g.shape)}")
    if r.size == 0:
        return ParityResult(**base, max_abs=0.0, max_rel=0.0, mismatch=0.0, ok=True, note="empty")
    rf = r.astype(np.float64)
    gf = g.astype(np.float64)
    nan_r, nan_g = np.isnan(rf), np.isnan(gf)
    same = (rf == gf) | (nan_r & nan_g)  # covers equal infinities
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(same, 0.0, np.abs(gf - rf))
        diff = np.where(np.isnan(diff), np.inf, diff)  # NaN on one side only, or inf vs finite
        mag = np.abs(np.where(np.isfinite(rf), rf, 0.0))
        bad = diff > atol + rtol * mag
        # relative diff only where |ref| > atol: near-zero references would make it meaningless
        rel = np.where((mag > atol) & (diff > 0), diff / np.maximum(mag, np.finfo(np.float64).tiny), 0.0)
    mismatch = float(bad.mean())
    note = ""
    if (nan_r != nan_g).any():
        note = "NaN in only one of the outputs"
    elif (nan_r | nan_g).any():
        note = "NaN at the same positions"
    ok = mismatch <= mismatch_tol and not (nan_r != nan_g).any()
    return ParityResult(**base, max_abs=float(diff.max()), max_rel=float(rel.max()), mismatch=mismatch,
                        ok=bool(ok), note=note)


# --------------------------------------------------------------------------- detections

@dataclass
class DetectionParity:
    """Set comparison of two detection lists (boxes matched per label by IoU)."""

    name: str
    ref_count: int
    got_count: int
    matched: int
    unmatched_ref: int
    unmatched_got: int
    max_box_diff: float
    max_score_diff: float
    min_iou: float
    iou_thr: float
    score_atol: float
    max_unmatched: int
    ok: bool
    note: str = ""

    def to_dict(self) -> dict:
        return {"kind": "detections", "name": self.name, "ref_count": self.ref_count,
                "got_count": self.got_count, "matched": self.matched, "unmatched_ref": self.unmatched_ref,
                "unmatched_got": self.unmatched_got,
                "max_box_diff": _num(self.max_box_diff), "max_score_diff": _num(self.max_score_diff),
                "min_iou": _num(self.min_iou), "iou_thr": self.iou_thr, "score_atol": self.score_atol,
                "max_unmatched": self.max_unmatched, "ok": self.ok, "note": self.note}

    def format(self) -> str:
        counts = f"{self.ref_count} vs {self.got_count} boxes"
        note = f"  ({self.note})" if self.note else ""
        return (f"{self.name:<28} {counts:<20} matched {self.matched}, unmatched {self.unmatched_ref}/"
                f"{self.unmatched_got}, max box diff {_fmt(self.max_box_diff)}, max score diff "
                f"{_fmt(self.max_score_diff)} (iou>={self.iou_thr:g}, score atol {self.score_atol:g}) "
                f"{'OK' if self.ok else 'FAIL'}{note}")


def _squeeze_batch(arr: np.ndarray, ndim: int, what: str) -> np.ndarray:
    while arr.ndim > ndim and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != ndim:
        raise ToolError(f"compare_detections: {what} has shape {list(arr.shape)}, expected {ndim} dims "
                        "(one image at a time)")
    return arr


def _valid_rows(boxes: Any, scores: Any, labels: Any, count: int | None, what: str):
    b = _squeeze_batch(to_numpy(boxes).astype(np.float64), 2, f"{what} boxes")
    s = _squeeze_batch(to_numpy(scores).astype(np.float64), 1, f"{what} scores")
    # NMS ops return class ids as floats (nmsed_classes): round before comparing
    lab = _squeeze_batch(np.rint(to_numpy(labels).astype(np.float64)).astype(np.int64), 1, f"{what} labels")
    if b.shape[1] != 4 or not (len(b) == len(s) == len(lab)):
        raise ToolError(f"compare_detections: {what} boxes {list(b.shape)}, scores {list(s.shape)} "
                        f"and labels {list(lab.shape)} do not describe the same N boxes of 4 coordinates")
    keep = s > 0  # fixed-size outputs pad with zero-score rows
    if count is not None:
        n = int(np.asarray(count).reshape(-1)[0])
        keep &= np.arange(len(s)) < n
    return b[keep], s[keep], lab[keep]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes, (len(a), len(b))."""
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    union = area_a[:, None] + area_b[None, :] - inter
    identical = np.all(a[:, None, :] == b[None, :, :], axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return np.where(identical, 1.0, iou)  # degenerate (zero-area) but identical boxes still match


def compare_detections(ref_boxes: Any, ref_scores: Any, ref_labels: Any,
                       got_boxes: Any, got_scores: Any, got_labels: Any,
                       iou_thr: float = 0.99, score_atol: float = 1e-3, *, name: str = "detections",
                       ref_count: int | None = None, got_count: int | None = None,
                       max_unmatched: int = 0) -> DetectionParity:
    """Match detections as sets: same label, IoU >= ``iou_thr``, greedy by IoU then score closeness.

    Rows with score <= 0 and rows at or beyond ``*_count`` are padding and ignored. ``ok`` needs
    every box matched (up to ``max_unmatched`` on each side, for boxes at the score-threshold or
    top-k boundary) and matched scores within ``score_atol``.
    """
    rb, rs, rl = _valid_rows(ref_boxes, ref_scores, ref_labels, ref_count, "reference")
    gb, gs, gl = _valid_rows(got_boxes, got_scores, got_labels, got_count, "ONNX")
    used_ref = np.zeros(len(rb), bool)
    used_got = np.zeros(len(gb), bool)
    box_diffs, score_diffs, ious = [], [], []
    for label in np.union1d(rl, gl):
        ri, gi = np.flatnonzero(rl == label), np.flatnonzero(gl == label)
        if not len(ri) or not len(gi):
            continue
        iou = _iou(rb[ri], gb[gi])
        sdiff = np.abs(rs[ri][:, None] - gs[gi][None, :])
        cand = np.argwhere(iou >= iou_thr)
        order = np.lexsort((sdiff[cand[:, 0], cand[:, 1]], -iou[cand[:, 0], cand[:, 1]]))
        for a, b in cand[order]:
            r, g = ri[a], gi[b]
            if used_ref[r] or used_got[g]:
                continue
            used_ref[r] = used_got[g] = True
            box_diffs.append(float(np.abs(rb[r] - gb[g]).max()))
            score_diffs.append(float(sdiff[a, b]))
            ious.append(float(iou[a, b]))
    un_ref, un_got = int((~used_ref).sum()), int((~used_got).sum())
    max_score = max(score_diffs, default=0.0)
    ok = un_ref <= max_unmatched and un_got <= max_unmatched and max_score <= score_atol
    notes = []
    if un_ref or un_got:
        top = max(rs[~used_ref].max(initial=0.0), gs[~used_got].max(initial=0.0))
        notes.append(f"highest unmatched score {top:.3g}")
    if max_score > score_atol:
        notes.append("score difference above tolerance")
    return DetectionParity(
        name=name, ref_count=len(rb), got_count=len(gb), matched=int(used_ref.sum()), unmatched_ref=un_ref,
        unmatched_got=un_got, max_box_diff=max(box_diffs, default=0.0), max_score_diff=max_score,
        min_iou=min(ious, default=float("nan")), iou_thr=float(iou_thr), score_atol=float(score_atol),
        max_unmatched=int(max_unmatched), ok=bool(ok), note="; ".join(notes))


# --------------------------------------------------------------------------- report

@dataclass
class ParityReport:
    """All rows of one export's parity check; ``ok`` only if every row passed."""

    rows: list = field(default_factory=list)
    title: str = "PyTorch vs ONNX Runtime"

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows)

    @property
    def failed(self) -> list[str]:
        return [r.name for r in self.rows if not r.ok]

    def add(self, row: ParityResult | DetectionParity) -> ParityReport:
        self.rows.append(row)
        return self

    def to_dict(self) -> dict:
        return {"title": self.title, "ok": self.ok, "failed": self.failed,
                "rows": [r.to_dict() for r in self.rows]}

    def format(self) -> str:
        lines = [f"parity {self.title}: {'OK' if self.ok else 'FAIL'}"]
        lines += ["  " + r.format() for r in self.rows]
        if not self.rows:
            lines.append("  (no outputs compared)")
        return "\n".join(lines)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the report as JSON (atomically), e.g. ``model.onnx`` -> ``model.parity.json``."""
        write_json_atomic(path, self.to_dict())
        return Path(path)


def report_path(onnx_path: str | os.PathLike) -> Path:
    """Where a model's parity report lives: beside it, ``<stem>.parity.json``."""
    p = Path(onnx_path)
    return p.with_name(p.stem + ".parity.json")


def _flatten(values: Any) -> list:
    """Flatten nested lists/tuples in order, as torch.onnx.export flattens a forward's outputs."""
    if isinstance(values, (list, tuple)):
        return [leaf for v in values for leaf in _flatten(v)]
    return [values]


def _named(outputs: Mapping | Sequence | Any, names: Sequence[str] | None) -> dict[str, Any]:
    if isinstance(outputs, Mapping):
        return dict(outputs)
    flat = _flatten(outputs)
    if names is None:
        names = [f"output_{i}" for i in range(len(flat))]
    if len(names) != len(flat):
        raise ToolError(f"parity: {len(flat)} outputs but {len(names)} names ({', '.join(names)}): "
                        "pass one name per output")
    return dict(zip(names, flat))


def check_parity(torch_outputs: Mapping | Sequence, onnx_outputs: Mapping | Sequence, *,
                 atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
                 tolerances: Mapping[str, tuple[float, float]] | None = None,
                 mismatch_tol: Mapping[str, float] | None = None,
                 names: Sequence[str] | None = None, skip: Iterable[str] = (),
                 title: str = "PyTorch vs ONNX Runtime") -> ParityReport:
    """Compare every output by name (dicts) or position (lists; names from ``names`` or the ONNX dict).

    ``tolerances`` overrides ``(atol, rtol)`` per output; ``mismatch_tol`` allows a fraction of
    differing elements per output; ``skip`` names outputs compared elsewhere (e.g. as detections).
    """
    onnx_names = list(onnx_outputs) if isinstance(onnx_outputs, Mapping) else None
    ref = _named(torch_outputs, names or onnx_names)
    got = _named(onnx_outputs, names or list(ref))
    missing = [n for n in ref if n not in got]
    extra = [n for n in got if n not in ref]
    if missing or extra:
        raise ToolError(f"parity: PyTorch outputs {', '.join(ref)} do not match ONNX outputs "
                        f"{', '.join(got)}: export with output_names in forward() order")
    tolerances = dict(tolerances or {})
    mismatch_tol = dict(mismatch_tol or {})
    unknown = [n for n in list(tolerances) + list(mismatch_tol) + list(skip) if n not in ref]
    if unknown:
        raise ToolError(f"parity: tolerance/skip given for unknown output(s) {', '.join(unknown)} "
                        f"(outputs: {', '.join(ref)})")
    report = ParityReport(title=title)
    skipped = set(skip)
    for name, value in ref.items():
        if name in skipped:
            continue
        a, r = tolerances.get(name, (atol, rtol))
        report.add(compare_arrays(name, value, got[name], a, r, mismatch_tol=mismatch_tol.get(name, 0.0)))
    return report


# --------------------------------------------------------------------------- inputs

def parity_input(spec, batch: int, *, seed: int = 0, top_band: int = 0, left_band: int = 0):
    """A torch batch shaped like the tool's preprocessed files, for the export's parity check.

    Uniform pixels normalised with the data file's mean/std, in its input dtype, with a zero band
    standing in for letterbox padding (zero after normalisation): the top ``1/top_band`` of the
    rows and the left ``1/left_band`` of the columns (0: none). Bands are fractions, not pixels,
    so tests that shrink the canvas get the same picture. Deterministic for a given ``seed``.
    """
    import torch

    _, height, width = spec.input.shape
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.rand((batch, 3, height, width), generator=gen) * 255.0
    mean = torch.tensor(spec.input.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(spec.input.std, dtype=torch.float32).view(1, 3, 1, 1)
    x = (pixels - mean) / std
    if top_band:
        x[:, :, : height // top_band] = 0
    if left_band:
        x[:, :, :, : width // left_band] = 0
    return x.to(getattr(torch, spec.input.dtype))


# --------------------------------------------------------------------------- ONNX Runtime

def _plain_session(model: Any):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def _load_session(model: Any, label: str):
    """A CPU session for a path or an in-memory model: ``common.customops.cpu_session`` when available, so
    graphs with Ascend custom ops (BatchMultiClassNMS, RoiExtractor) run too; else a plain one."""
    try:
        from common.customops import cpu_session
    except ImportError:
        cpu_session = None
    try:
        session = None
        if cpu_session is not None:
            try:
                session = cpu_session(model)
            except ImportError:  # onnxruntime-extensions missing: plain graphs still run
                session = None
        if session is None:
            source = str(model) if isinstance(model, (str, os.PathLike)) else model.SerializeToString()
            session = _plain_session(source)
    except ToolError:
        raise
    except Exception as err:
        raise ToolError(f"ONNX Runtime cannot load {label}: {' '.join(str(err).split())[:300]}") from None
    return session


@functools.lru_cache(maxsize=2)
def _session_of_file(path: str, inode: int, mtime_ns: int, size: int):
    """The session of a model file, kept for the next run of the same file (same inode, modification time
    and size: a re-export, in place or renamed over it, is a new file). Loading Mask R-CNN's graph costs
    more than running it once, and parity checks run a model several times. Errors are not cached."""
    return _load_session(Path(path), path)


def run_onnx(model_path_or_proto: Any, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Run a model once on CPU and return ``{output name: array}`` in graph-output order.

    Uses ``common.customops.cpu_session`` when available so graphs with Ascend custom ops
    (BatchMultiClassNMS, RoiExtractor) run too; otherwise a plain ONNX Runtime session.
    """
    model = model_path_or_proto
    label = str(model) if isinstance(model, (str, os.PathLike)) else "in-memory ONNX model"
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise ToolError(f"ONNX model {model} not found: export it first")
        stat = path.stat()
        session = _session_of_file(str(path.resolve()), stat.st_ino, stat.st_mtime_ns, stat.st_size)
    else:
        session = _load_session(model, label)
    expected = [i.name for i in session.get_inputs()]
    missing = [n for n in expected if n not in feeds]
    extra = [n for n in feeds if n not in expected]
    if missing or extra:
        raise ToolError(f"feeds {', '.join(feeds) or '(none)'} do not match the inputs of {label} "
                        f"({', '.join(expected)}): rename them")
    arrays = {n: to_numpy(v) for n, v in feeds.items()}
    out_names = [o.name for o in session.get_outputs()]
    try:
        values = session.run(out_names, arrays)
    except Exception as err:
        raise ToolError(f"ONNX Runtime failed running {label}: {' '.join(str(err).split())[:300]}") from None
    return dict(zip(out_names, values))
