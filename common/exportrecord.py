"""Export records: the JSON written beside each model file saying what it was built from (an .onnx's
parity report with its checkpoint record; an .om's ``.source.json`` naming its ONNX), written by
:func:`export_checked` and read back by the eval step and the demo for their reports.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from common.errors import ToolError
from common.fsutil import make_temp_dir, read_json, write_json_atomic
from common.report import parity_summary
from common.weights import weights_record


def export_record_path(model_file: Path) -> Path:
    """The JSON beside a model file saying what it was built from (.onnx: the parity report)."""
    return model_file.with_suffix(".parity.json" if model_file.suffix == ".onnx" else ".source.json")


def read_export_record(model_file: Path) -> dict | None:
    """The JSON beside ``model_file`` (None when there is none)."""
    path = export_record_path(model_file)
    if not path.is_file():
        return None
    record = read_json(path, what="export record")
    return record if isinstance(record, dict) else None


def weights_of(model_file: Path) -> dict | None:
    """The checkpoint record of the export behind ``model_file`` (None when there is no record)."""
    record = read_export_record(model_file)
    return record.get("weights") if record else None


def parity_of(model_file: Path) -> dict | None:
    """The parity check of the export behind ``model_file``: an .onnx's own, or that of a .om's ONNX."""
    record = read_export_record(model_file)
    if record and model_file.suffix != ".onnx":
        record = read_export_record(Path(record["onnx"])) if record.get("onnx") else None
    return parity_summary(record)


def format_parity(parity: dict) -> str:
    """One line per output: what a reader checks first (max abs diff against the tolerance)."""
    rows = parity.get("rows", [])
    lines = [f"parity PyTorch vs ONNX Runtime: {'OK' if parity.get('ok') else 'FAIL'}"]
    if rows:
        width = max(len(str(r.get("name", ""))) for r in rows)
        for r in rows:
            extra = "  ".join(f"{k}={v}" for k, v in r.items()
                              if k not in {"name", "shape", "max_abs_diff", "max_rel_diff", "atol", "rtol", "ok"}
                              and v not in ("", None, 0.0, "array", "float32")
                              and not (k == "got_shape" and v == r.get("shape")))
            lines.append(f"  {str(r.get('name', '')):<{width}}  shape={r.get('shape')}  "
                         f"max_abs_diff={_num(r.get('max_abs_diff'))}  max_rel_diff={_num(r.get('max_rel_diff'))}  "
                         f"atol={r.get('atol')} rtol={r.get('rtol')}  {'ok' if r.get('ok') else 'MISMATCH'}"
                         + (f"  {extra}" if extra else ""))
    return "\n".join(lines)


def _num(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def export_checked(t, weights: Path, path: Path, *, verified: bool, **options) -> dict:
    """Export into a staging folder; the ONNX takes its final name only when parity holds.

    A model file under its final name is taken as finished (``make M-all`` keeps it), so a failed
    export leaves its parity report as ``<stem>.parity-failed.json`` and no model file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = make_temp_dir(path.parent, prefix=f".{path.stem}.")
    try:
        parity = t.export(weights, staging / path.name, **options)
        parity["weights"] = weights_record(weights, verified=verified)  # carried into every later report
        print(format_parity(parity), file=sys.stderr)
        failed = path.with_name(f"{path.stem}.parity-failed.json")
        if not parity.get("ok", False):
            write_json_atomic(failed, parity)
            raise ToolError(f"{path.name}: ONNX Runtime outputs differ from PyTorch beyond tolerance, so no "
                            f"model file was written (see {failed})")
        write_json_atomic(path.with_suffix(".parity.json"), parity)
        os.replace(staging / path.name, path)
        failed.unlink(missing_ok=True)
        return parity
    finally:
        shutil.rmtree(staging, ignore_errors=True)
