"""Throughput per batch size, in ais_bench's summary terms, beside the published figures."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from common.errors import ToolError
from common.fsutil import read_json, write_json_atomic, write_text_atomic
from common.manifest import Manifest
from common.progress import StepProgress
from common.spec import ModelSpec
from common.tensors import np_dtype, write_tensor


def _synthetic_inputs(spec: ModelSpec, directory: Path, count: int) -> list[Path]:
    """Random tensors of the model's input shape: timing does not depend on content."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        p = directory / f"synthetic_{i:04d}.bin"
        if not p.exists():
            write_tensor(p, rng.standard_normal(spec.input.shape).astype(np_dtype(spec.input.dtype)))
        paths.append(p)
    return paths


def measure_throughput(spec: ModelSpec, model_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                       backend: str, batches: list[int], device: int = 0, loop: int = 5, warmup: int = 1,
                       prep_dir: str | os.PathLike | None = None, force: bool = False,
                       argv: list[str] | None = None) -> str:
    """Run the backend for each batch size; add the rows to perf.json + perf.md; return the Markdown.

    Rows accumulate across calls, one per (backend, batch size): static models need one file per
    batch size, so ``make M-perf BATCH="1 4 8"`` measures three files into one table. A row that
    is already there is only measured again with ``force``. The first ``warmup`` runs (graph load,
    first allocations; ais_bench's ``--warmup_count``) are timed apart and never averaged in.
    """
    from common.backends import make_backend
    from common.benchsummary import parse_ais_summary
    from common.report import Provenance, published_from_spec, throughput_table

    out = Path(out_dir)
    rows = _load_rows(out / "perf.json", spec.name)
    runner = make_backend(backend, model_path, device)
    for batch in batches:
        spec.check_batch(batch)
        if not force and any(r["backend"] == runner.name and r["batch"] == batch for r in rows):
            raise ToolError(f"{out / 'perf.json'} already has {runner.name} bs{batch}: pass --force to measure again")
    with StepProgress(f"{spec.name} perf", len(batches), "batch sizes") as progress:
        for batch in batches:
            if prep_dir:
                manifest = Manifest.load(prep_dir)
                inputs = [manifest.tensor_path(prep_dir, e) for e in manifest.entries]
            else:
                inputs = _synthetic_inputs(spec, out / "synthetic_inputs", batch)
            dirname = f"perf_{spec.name}_{runner.name}_bs{batch}"
            shutil.rmtree(out / dirname, ignore_errors=True)  # the guard above decides about reuse
            (out / f"{dirname}_summary.json").unlink(missing_ok=True)
            runner.run(inputs, out, dirname, batch, loop=loop, warmup=warmup)
            summary = parse_ais_summary(out / f"{dirname}_summary.json")
            prov = Provenance.capture(runner.name, summary.get("device", str(device)), batch, argv=argv)
            rows = [r for r in rows if not (r["backend"] == runner.name and r["batch"] == batch)]
            rows.append({"backend": runner.name, "device": prov.device, "batch": batch, "fps": summary["throughput"],
                         "source": f"measured: {out / (dirname + '_summary.json')}", "model_file": str(model_path),
                         "inputs": "dataset" if prep_dir else "synthetic", "loop": loop, "warmup": warmup,
                         "warmup_ms": summary.get("warmup_compute_ms"), "command": prov.command,
                         "timestamp": prov.timestamp, "versions": prov.versions})
            rows.sort(key=lambda r: (r["backend"], r["batch"]))
            write_json_atomic(out / "perf.json", {"model": spec.name, "rows": rows})  # each size kept as it lands
            progress.advance()
    _, published_rows, _ = published_from_spec(spec.published, where=str(spec.path))
    table = throughput_table(rows, published_rows)
    write_text_atomic(out / "perf.md", table + "\n" + _provenance_lines(rows))
    return table


def _load_rows(path: Path, model: str) -> list[dict]:
    """Rows measured before for this model; a file of another model is refused, never mixed."""
    if not path.exists():
        return []
    data = read_json(path, what="perf results")
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ToolError(f"{path} is not a perf results file: move it away or delete it")
    if data.get("model") != model:
        raise ToolError(f"{path} holds perf rows of model '{data.get('model')}', not '{model}': use another --out")
    return data["rows"]


def _provenance_lines(rows: list[dict]) -> str:
    """What produced each measured row: the honest-numbers rule."""
    lines = ["## Provenance of the measured rows", ""]
    for r in rows:
        versions = ", ".join(f"{k} {v}" for k, v in r.get("versions", {}).items() if v)
        warm = r.get("warmup_ms")
        cold = f", warm-up excluded: {', '.join(f'{v:.1f}' for v in warm)} ms" if warm else ""
        lines.append(f"- {r['backend']} bs{r['batch']} on {r['device']} ({r['inputs']} inputs, loop {r['loop']}{cold}, "
                     f"{r['timestamp']}): `{r['command']}`; model `{r['model_file']}`; {versions}")
    return "\n".join(lines) + "\n"
