"""One typer CLI for every tool: ``python -m tools.<model> <command>``.

Commands call the generic steps in common/ with the model's hooks, so every tool has the
same commands and flags. Expected failures (ToolError) print ``error: ...`` and exit 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from common.errors import ToolError

TARGETS = ("ascend", "onnx")
BACKENDS = ("onnxruntime", "ais_bench")


def _fail(err: ToolError) -> None:
    print(f"error: {err}", file=sys.stderr)
    if err.detail:
        print(err.detail, file=sys.stderr)
    raise typer.Exit(2)


def _choice(value: str, valid: tuple[str, ...], name: str) -> str:
    if value not in valid:
        raise ToolError(f"unknown {name} '{value}' (valid: {', '.join(valid)})")
    return value


def command_argv() -> list[str]:
    """The command line as the user typed it (`python -m tools.<model>` shows as a __main__.py path)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith("__main__.py"):
        argv[:1] = ["python", "-m", f"tools.{Path(argv[0]).parent.name}"]
    return argv


def provenance(backend: str, batch: int, device: str, model_path: str | os.PathLike | None = None):
    """What produced a number: command line, backend, device, batch size and versions."""
    from common.report import Provenance

    prov = Provenance.capture(backend, device, batch, argv=command_argv())
    if model_path:
        prov.command += f"  # model file: {model_path}"
    return prov


def export_record_path(model_file: Path) -> Path:
    """The JSON beside a model file saying what it was built from (.onnx: the parity report)."""
    return model_file.with_suffix(".parity.json" if model_file.suffix == ".onnx" else ".source.json")


def _weights_of(model_file: Path) -> dict | None:
    """The checkpoint record of the export behind ``model_file`` (None when there is no record)."""
    from common.fsutil import read_json

    path = export_record_path(model_file)
    if not path.is_file():
        return None
    record = read_json(path, what="export record")
    return record.get("weights") if isinstance(record, dict) else None


#: every command that writes results refuses to overwrite them unless asked
FORCE = typer.Option(False, "--force", help="overwrite existing outputs")


def build_app(model: str) -> typer.Typer:
    app = typer.Typer(add_completion=False, no_args_is_help=True,
                      help=f"{model}: export, compile, preprocess, infer, evaluate, benchmark.")

    def tool():
        from common.pipeline import load_tool

        return load_tool(model)

    @app.command()
    def checkpoint(out: Path = typer.Option(..., help="where to write the random-weight checkpoint"),
                   seed: int = 0, force: bool = FORCE) -> None:
        """Write a random-weight checkpoint in the upstream file format (for demos and tests)."""
        try:
            if out.exists() and not force:
                raise ToolError(f"{out} already exists: pass --force to overwrite it")
            print(tool().random_checkpoint(out, seed=seed))
        except ToolError as err:
            _fail(err)

    @app.command()
    def export(out: Path = typer.Option(..., help="output directory"),
               weights: Optional[Path] = typer.Option(None, help="local checkpoint (default: verified download)"),
               batch: int = 1, target: str = typer.Option("ascend", help="ascend | onnx"),
               no_verify: bool = typer.Option(False, "--no-verify", help="skip the checksum check of --weights"),
               dynamic_batch: bool = typer.Option(False, "--dynamic-batch",
                                                   help="symbolic batch axis (targets that allow it)"),
               force: bool = FORCE) -> None:
        """PyTorch checkpoint -> static ONNX (+ parity report against PyTorch)."""
        import inspect

        from common.fsutil import write_json_atomic
        from common.weights import fetch, weights_record

        try:
            t = tool()
            _choice(target, TARGETS, "TARGET")
            t.SPEC.check_batch(batch)
            extra = {}
            if dynamic_batch:
                if "dynamic_batch" not in inspect.signature(t.export).parameters:
                    raise ToolError(f"the {model} export has static shapes only (what ATC compiles); "
                                    "drop --dynamic-batch")
                extra["dynamic_batch"] = True
            path = out / f"{model}_{target}_{'dynbatch' if dynamic_batch else f'bs{batch}'}.onnx"
            if path.exists() and not force:
                raise ToolError(f"{path} already exists: pass --force to overwrite it")
            w = fetch(t.SPEC.weights, weights, verify_checksum=not no_verify)
            parity = t.export(w, path, batch=batch, target=target, **extra)
            parity["weights"] = weights_record(w, verified=not no_verify)  # carried into every later report
            write_json_atomic(path.with_suffix(".parity.json"), parity)
            print(_format_parity(parity), file=sys.stderr)
            if not parity.get("ok", False):
                raise ToolError(f"{path}: ONNX Runtime outputs differ from PyTorch beyond tolerance "
                                f"(see {path.with_suffix('.parity.json')})")
            print(path)
        except ToolError as err:
            _fail(err)

    @app.command()
    def om(onnx: Path = typer.Option(..., help="exported ONNX"), out: Path = typer.Option(...),
           chip: str = typer.Option(..., help="SoC name from `npu-smi info`, e.g. 310P3"),
           batch: int = 1, tune: Optional[str] = typer.Option(None, help="AOE tuning: subgraph | op"),
           device: int = 0, force: bool = FORCE) -> None:
        """ONNX -> .om with ATC (or AOE tuning); prints the exact command when CANN is absent."""
        from common import atc
        from common.fsutil import write_json_atomic

        try:
            t = tool()
            if onnx.is_file() and hasattr(t, "atc_out_nodes"):
                out_nodes = t.atc_out_nodes(onnx)  # from the graph's output names
            else:  # the export guarantees these names; lets us show the command before exporting
                out_nodes = [o.name for o in t.SPEC.outputs.get("ascend", ())] or None
            job = (atc.build_aoe(t.SPEC, onnx, out, chip=chip, batch=batch, tune=tune, device=device) if tune
                   else atc.build_atc(t.SPEC, onnx, out, chip=chip, batch=batch, out_nodes=out_nodes))
            if not onnx.is_file():
                raise ToolError(f"ONNX model {onnx} not found: run `make {model}-onnx` first; "
                                "the command this step runs is below", detail=job.command)
            built = atc.run(job, out / (job.output.stem + ".log"), force=force)
            if built.suffix == ".om":  # which ONNX (and so which checkpoint) this .om came from
                write_json_atomic(export_record_path(built), {"onnx": str(onnx), "weights": _weights_of(onnx)})
            print(built)
        except ToolError as err:
            _fail(err)

    @app.command()
    def data(data: Path = typer.Option(..., help="COCO root (val2017/ + annotations/) or VOC2012 root"),
             out: Path = typer.Option(...), limit: Optional[int] = None,
             skip_bad: bool = typer.Option(False, "--skip-bad",
                                           help="leave out unreadable images (recorded; mAP partial)"),
             workers: int = typer.Option(0, help="images preprocessed at once (0: one per CPU core, at most 8)"),
             force: bool = FORCE) -> None:
        """Preprocess a dataset into .bin tensors + manifest.json + .info files (resumable)."""
        from common.pipeline import preprocess_dataset

        if workers == 0:
            workers = min(8, os.cpu_count() or 1)

        try:
            m = preprocess_dataset(tool(), data, out, limit=limit, skip_bad=skip_bad, force=force,
                                   workers=workers)
            print(f"{len(m.entries)} tensors in {out}" + (f" ({len(m.skipped)} skipped)" if m.skipped else ""))
        except ToolError as err:
            _fail(err)

    @app.command()
    def infer(model_file: Path = typer.Option(..., "--model", help=".onnx or .om"),
              prep: Path = typer.Option(..., help="preprocessed dataset directory"),
              out: Path = typer.Option(...), backend: str = "onnxruntime", batch: int = 1, device: int = 0,
              force: bool = FORCE) -> None:
        """Run inference; writes ais_bench's layout (<out>/<dirname>/<stem>_<k>.bin + summary)."""
        from common.pipeline import run_inference

        try:
            _choice(backend, BACKENDS, "BACKEND")
            print(run_inference(tool().SPEC, model_file, prep, out, backend=backend, batch=batch,
                                device=device, force=force))
        except ToolError as err:
            _fail(err)

    @app.command(name="eval")
    def evaluate_cmd(prep: Path = typer.Option(...), results: Path = typer.Option(..., help="result directory"),
                     out: Path = typer.Option(...), target: str = "ascend",
                     annotations: Optional[Path] = typer.Option(None, help="default: the one used by the data step"),
                     backend: str = "onnxruntime", batch: int = 1, device: str = "cpu",
                     model_file: Optional[Path] = typer.Option(None, "--model"), force: bool = FORCE) -> None:
        """Postprocess results and evaluate (COCO mAP); report.json + report.md beside the published figures."""
        from common.pipeline import evaluate
        from common.weights import describe_weights

        try:
            _choice(target, TARGETS, "TARGET")
            prov = provenance(backend, batch, device, model_file)
            notes: tuple[str, ...] = ()
            if model_file is not None:
                record = _weights_of(model_file)
                prov.weights = describe_weights(record)
                if record and not record.get("verified"):
                    notes = (f"UNVERIFIED WEIGHTS: {prov.weights}",)
            evaluate(tool(), prep, results, out, target=target, annotation_file=annotations,
                     provenance=prov, notes=notes, force=force)
            print((out / "report.md").read_text())
        except ToolError as err:
            _fail(err)

    @app.command()
    def perf(model_file: Path = typer.Option(..., "--model"), out: Path = typer.Option(...),
             prep: Optional[Path] = typer.Option(None, help="dataset to run on (default: synthetic inputs)"),
             backend: str = "onnxruntime", batch: list[int] = typer.Option([1]), device: int = 0,
             loop: int = 5, force: bool = FORCE) -> None:
        """Throughput per batch size (ais_bench summary fields), beside the published figures.

        Rows add up in OUT/perf.json across calls, one per backend and batch size.
        """
        from common.perf import measure_throughput

        try:
            _choice(backend, BACKENDS, "BACKEND")
            print(measure_throughput(tool().SPEC, model_file, out, backend=backend, batches=batch,
                                     device=device, loop=loop, prep_dir=prep, force=force, argv=command_argv()))
        except ToolError as err:
            _fail(err)

    @app.command()
    def demo(out: Path = typer.Option(Path("out/demo"), help="output directory"),
             weights: Optional[Path] = typer.Option(None, help="real checkpoint (default: random weights)"),
             data: Optional[Path] = typer.Option(None, help="real COCO/VOC root (default: generated mini set)"),
             images: int = 4, chip: str = "310P3", target: str = "ascend", force: bool = FORCE) -> None:
        """Whole pipeline: export -> atc command -> onnxruntime -> postprocess -> report."""
        from common.demo import run_demo

        try:
            run_demo(tool(), out, weights=weights, data=data, n_images=images, chip=chip, target=target,
                     force=force)
        except ToolError as err:
            _fail(err)

    return app


def _format_parity(parity: dict) -> str:
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


def main_for(model: str) -> None:
    build_app(model)(prog_name=f"python -m tools.{model}")
