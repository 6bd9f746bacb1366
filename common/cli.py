"""One typer CLI for every tool: ``python -m tools.<model> <command>``.

Commands call the generic steps in common/ with the model's hooks, so every tool has the
same commands and flags. Expected failures (ToolError) print ``error: ...`` and exit 2.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from common.backends import BACKENDS
from common.contract import check_target
from common.errors import ToolError
from common.exportrecord import export_checked, parity_of, weights_of
from common.report import command_argv, provenance


def _fail(err: ToolError) -> None:
    print(f"error: {err}", file=sys.stderr)
    if err.detail:
        print(err.detail, file=sys.stderr)
    raise typer.Exit(2)


@contextlib.contextmanager
def _user_errors(path: Path | None = None):
    """Expected failures and OS errors (read-only OUT, full disk, permissions) as one ``error:`` line.

    ``path`` (the command's output) is named when the OS error itself names no file.
    """
    from common.fsutil import os_error_message

    try:
        yield
    except ToolError as err:
        _fail(err)
    except OSError as err:
        _fail(ToolError(os_error_message(err, path)))


def _choice(value: str, valid: tuple[str, ...], name: str) -> str:
    if value not in valid:
        raise ToolError(f"unknown {name} '{value}' (valid: {', '.join(valid)})")
    return value


#: every command that writes results refuses to overwrite them unless asked
FORCE = typer.Option(False, "--force", help="overwrite existing outputs")
SKIP_BAD = typer.Option(False, "--skip-bad", help="leave out unreadable images (recorded; mAP partial)")
#: images preprocessed at once by the data and stream steps (see :func:`_workers`)
WORKERS = typer.Option(0, help="images preprocessed at once (0: one per CPU core, at most 8)")
#: a deterministic part of the dataset, for one pod of a Kubernetes Indexed Job (common.shardmerge)
SHARD = typer.Option(None, "--shard", help="I/N (0 <= I < N) or auto/N (I from $JOB_COMPLETION_INDEX): run only "
                     "that shard of the dataset, resumable; `merge` evaluates the shards")
#: what the data step writes and the .om takes (common.aipp)
INPUT = typer.Option("float", "--input", help="float (normalised tensors) | uint8 (canvas; AIPP normalises on the NPU)")


def _shard(text: str | None):
    """``--shard`` parsed (None when not given)."""
    from common.shardmerge import parse_shard

    return None if text is None else parse_shard(text)


def _workers(requested: int) -> int:
    """``--workers 0``: one per CPU core, at most 8."""
    return requested or min(8, os.cpu_count() or 1)


def _model_provenance(backend: str, batch: int, device: str, model_file: Path | None):
    """(provenance, notes) of a report: what ran, and the checkpoint and parity behind the model file."""
    from common.weights import describe_weights

    prov = provenance(backend, batch, device, model_file)
    notes: tuple[str, ...] = ()
    if model_file is not None:
        record = weights_of(model_file)
        prov.weights = describe_weights(record)
        prov.parity = parity_of(model_file)
        if record and not record.get("verified"):
            notes = (f"UNVERIFIED WEIGHTS: {prov.weights}",)
    return prov, notes


def _device_label(backend: str, device) -> str:
    """The device a report names: onnxruntime runs on the CPU."""
    return "cpu" if backend == "onnxruntime" else f"npu:{device}"


def _print_report(out: Path) -> None:
    from common.report import report_location

    print((out / "report.md").read_text())
    print(report_location(out))


def build_app(model: str) -> typer.Typer:
    app = typer.Typer(add_completion=False, no_args_is_help=True,
                      help=f"{model}: export, compile, preprocess, infer, evaluate, benchmark.")

    def tool():
        from common.contract import load_tool

        return load_tool(model)

    @app.command()
    def checkpoint(out: Path = typer.Option(..., help="where to write the random-weight checkpoint"),
                   seed: int = 0, force: bool = FORCE) -> None:
        """Write a random-weight checkpoint in the upstream file format (for demos and tests)."""
        with _user_errors(out):
            if out.exists() and not force:
                raise ToolError(f"{out} already exists: pass --force to overwrite it")
            print(tool().random_checkpoint(out, seed=seed))

    @app.command()
    def export(out: Path = typer.Option(..., help="output directory"),
               weights: Optional[Path] = typer.Option(None, help="local checkpoint (default: verified download)"),
               batch: int = 1, target: str = typer.Option("ascend", help="ascend | onnx"),
               no_verify: bool = typer.Option(False, "--no-verify", help="skip the checksum check of --weights"),
               dynamic_batch: bool = typer.Option(False, "--dynamic-batch",
                                                   help="symbolic batch axis (targets that allow it)"),
               force: bool = FORCE) -> None:
        """PyTorch checkpoint -> static ONNX (+ parity report against PyTorch)."""
        from common.spec import load_spec
        from common.weights import fetch

        with _user_errors(out):
            check_target(target)
            extra = {}
            if dynamic_batch:  # declared in model.toml: refused before the tool's packages are imported
                if not load_spec(model).capabilities.dynamic_batch:
                    raise ToolError(f"the {model} export has static shapes only (what ATC compiles); "
                                    "drop --dynamic-batch")
                extra["dynamic_batch"] = True
            t = tool()
            t.SPEC.check_batch(batch)
            path = out / f"{model}_{target}_{'dynbatch' if dynamic_batch else f'bs{batch}'}.onnx"
            if path.exists() and not force:
                raise ToolError(f"{path} already exists: pass --force to overwrite it")
            w = fetch(t.SPEC.weights, weights, verify_checksum=not no_verify)
            export_checked(t, w, path, verified=not no_verify, batch=batch, target=target, **extra)
            print(path)

    @app.command()
    def om(onnx: Path = typer.Option(..., help="exported ONNX"), out: Path = typer.Option(...),
           chip: str = typer.Option(..., help="SoC name from `npu-smi info`, e.g. 310P3"),
           batch: int = 1, target: str = typer.Option("ascend", help="the ONNX's export target: ascend | onnx"),
           tune: Optional[str] = typer.Option(None, help="AOE tuning: subgraph | op"),
           device: int = 0, input_format: str = INPUT, force: bool = FORCE) -> None:
        """ONNX -> .om with ATC (or AOE tuning); prints the exact command when CANN is absent.

        The same step as ``python -m common.atc`` (what `make M-om` runs, without this tool's packages).
        """
        from common.atc import compile_om
        from common.spec import load_spec

        with _user_errors(out):
            print(compile_om(load_spec(model), onnx, out, chip=chip, batch=batch, target=target, tune=tune,
                             device=device, force=force, input_format=input_format))

    @app.command()
    def data(data: Path = typer.Option(..., help="COCO root (val2017/ + annotations/) or VOC2012 root"),
             out: Path = typer.Option(...), limit: Optional[int] = None,
             skip_bad: bool = SKIP_BAD,
             workers: int = WORKERS,
             input_format: str = INPUT, shard: Optional[str] = SHARD, force: bool = FORCE) -> None:
        """Preprocess a dataset into .bin tensors + manifest.json + .info files (resumable)."""
        from common.pipeline import preprocess_dataset

        with _user_errors(out):
            m = preprocess_dataset(tool(), data, out, limit=limit, skip_bad=skip_bad, force=force,
                                   workers=_workers(workers), input_format=input_format, shard=_shard(shard))
            print(f"{len(m.entries)} tensors in {out}" + (f" ({len(m.skipped)} skipped)" if m.skipped else ""))

    @app.command()
    def infer(model_file: Path = typer.Option(..., "--model", help=".onnx or .om"),
              prep: Path = typer.Option(..., help="preprocessed dataset directory"),
              out: Path = typer.Option(...), backend: str = "onnxruntime", batch: int = 1,
              device: str = typer.Option("0", help="NPU id, or several (0,1,2,3): one shard per device"),
              shard: Optional[str] = typer.Option(None, "--shard", help="I/N or auto/N: --prep is that shard's "
                                                  "`data --shard` folder; writes OUT/shard.json for `merge`"),
              force: bool = FORCE) -> None:
        """Run inference; writes ais_bench's layout (<out>/<dirname>/<stem>_<k>.bin + summary)."""
        from common.pipeline import run_inference
        from common.shardmerge import infer_shard

        with _user_errors(out):
            _choice(backend, BACKENDS, "BACKEND")
            part = _shard(shard)
            if part is None:
                print(run_inference(tool().SPEC, model_file, prep, out, backend=backend, batch=batch,
                                    device=device, force=force))
            else:
                print(infer_shard(tool().SPEC, model_file, prep, out, part, backend=backend, batch=batch,
                                  device=device, force=force))

    @app.command(name="eval")
    def evaluate_cmd(prep: Path = typer.Option(...), results: Path = typer.Option(..., help="result directory"),
                     out: Path = typer.Option(...), target: str = "ascend",
                     annotations: Optional[Path] = typer.Option(None, help="default: the one used by the data step"),
                     backend: str = "onnxruntime", batch: int = 1, device: str = "cpu",
                     model_file: Optional[Path] = typer.Option(None, "--model"), force: bool = FORCE) -> None:
        """Postprocess results and evaluate (COCO mAP); report.json + report.md beside the published figures."""
        from common.pipeline import evaluate

        with _user_errors(out):
            check_target(target)
            prov, notes = _model_provenance(backend, batch, device, model_file)
            evaluate(tool(), prep, results, out, target=target, annotation_file=annotations,
                     provenance=prov, notes=notes, force=force)
            _print_report(out)

    @app.command()
    def stream(model_file: Path = typer.Option(..., "--model", help=".onnx (onnxruntime) or .om (ais_bench API)"),
               data: Path = typer.Option(..., help="COCO root (val2017/ + annotations/) or VOC2012 root"),
               out: Path = typer.Option(...), target: str = "ascend", backend: str = "onnxruntime",
               batch: int = 1, device: int = 0,
               workers: int = WORKERS,
               limit: Optional[int] = None,
               skip_bad: bool = SKIP_BAD,
               input_format: str = INPUT,
               annotations: Optional[Path] = typer.Option(None, help="default: the dataset's own"),
               shard: Optional[str] = typer.Option(None, "--shard", help="I/N or auto/N: only that shard, "
                                                   "resumable, its results and shard.json into OUT; no report "
                                                   "(`merge` evaluates all shards)"),
               force: bool = FORCE) -> None:
        """data + infer + eval in one pass, in overlapping stages, writing no tensor or result files."""
        from common.streaming import stream_evaluate

        with _user_errors(out):
            check_target(target)
            _choice(backend, BACKENDS, "BACKEND")
            part = _shard(shard)
            label = _device_label(backend, device)
            prov, notes = _model_provenance(backend, batch, label, model_file)
            stream_evaluate(tool(), data, model_file, out, target=target, provenance=prov, backend=backend,
                            batch=batch, device=device, workers=_workers(workers),
                            limit=limit, skip_bad=skip_bad, input_format=input_format,
                            annotation_file=annotations, notes=notes, force=force, shard=part)
            if part is None:
                _print_report(out)
            else:
                print(out / "shard.json")

    @app.command()
    def merge(shards: Path = typer.Option(..., help="folder holding the shard folders 0 .. N-1"),
              count: int = typer.Option(..., help="N, the number of shards the run was split into"),
              data: Path = typer.Option(..., help="the dataset root the shards ran on"),
              out: Path = typer.Option(..., help="where report.json / report.md (+ detections.json) go"),
              target: Optional[str] = typer.Option(None, help="default: the one the shards ran with (ascend)"),
              annotations: Optional[Path] = typer.Option(None, help="default: the shards' (the dataset's own)"),
              backend: Optional[str] = typer.Option(None, help="for the report (default: what the shards recorded)"),
              batch: Optional[int] = typer.Option(None, help="for the report (default: what the shards recorded)"),
              model_file: Optional[Path] = typer.Option(None, "--model", help="for the report (default: the "
                                                        "shards' model file)"),
              force: bool = FORCE) -> None:
        """Check that shards 0..N-1 are all complete, merge their results and evaluate once (stream or infer shards)."""
        from common.shardmerge import merge_shards

        def provenance_of(record: dict):
            used = backend or record.get("backend") or "onnxruntime"
            model = model_file or (Path(record["model_file"]) if record.get("model_file") else None)
            return _model_provenance(used, batch or record.get("batch") or 1,
                                     _device_label(used, record.get("device", 0)), model)

        with _user_errors(out):
            if target is not None:
                check_target(target)
            if backend is not None:
                _choice(backend, BACKENDS, "BACKEND")
            merge_shards(tool(), shards, count, data, out, provenance=provenance_of, target=target,
                         annotation_file=annotations, force=force)
            _print_report(out)

    @app.command()
    def perf(model_file: Path = typer.Option(..., "--model"), out: Path = typer.Option(...),
             prep: Optional[Path] = typer.Option(None, help="dataset to run on (default: synthetic inputs)"),
             backend: str = "onnxruntime", batch: list[int] = typer.Option([1]), device: int = 0,
             loop: int = 5,
             warmup: int = typer.Option(1, help="cold runs before timing (ais_bench --warmup_count), reported apart"),
             force: bool = FORCE) -> None:
        """Throughput per batch size (ais_bench summary fields), beside the published figures.

        Rows add up in OUT/perf.json across calls, one per backend and batch size.
        """
        from common.throughput import measure_throughput

        with _user_errors(out):
            _choice(backend, BACKENDS, "BACKEND")
            print(measure_throughput(tool().SPEC, model_file, out, backend=backend, batches=batch,
                                     device=device, loop=loop, warmup=warmup, prep_dir=prep, force=force,
                                     argv=command_argv()))

    @app.command()
    def demo(out: Optional[Path] = typer.Option(None, help=f"output directory (default: out/demo/{model}, "
                                                      "as `make demo`)"),
             weights: Optional[Path] = typer.Option(None, help="real checkpoint (default: random weights)"),
             data: Optional[Path] = typer.Option(None, help="real COCO/VOC root (default: generated mini set)"),
             images: int = 4, chip: str = "310P3", target: str = "ascend", force: bool = FORCE) -> None:
        """Whole pipeline: export -> atc command -> onnxruntime -> postprocess -> report."""
        from common.demo import run_demo

        out = out or Path("out") / "demo" / model
        with _user_errors(out):
            run_demo(tool(), out, weights=weights, data=data, n_images=images, chip=chip, target=target,
                     force=force)

    return app


def main_for(model: str) -> None:
    """Run the CLI; an OS error no command turned into a ToolError still gets one ``error:`` line."""
    from common.fsutil import os_error_message

    try:
        build_app(model)(prog_name=f"python -m tools.{model}")
    except OSError as err:
        print(f"error: {os_error_message(err)}", file=sys.stderr)
        sys.exit(2)
