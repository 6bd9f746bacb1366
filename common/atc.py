"""ATC (ONNX -> Ascend .om) and AOE tuning command lines, built from the model data file.

The command is always built in full first, so that on a machine without CANN we can still
print exactly what to run on an Ascend host. Everything comes from model.toml and the ONNX file
(input name and shape, output names), never from the tool's code, so this step runs in the light
``base`` environment, not the tool's (whose mmcv-full build takes many minutes):

    python -m common.atc --model fcos --onnx out/fcos/onnx/fcos_ascend_bs1.onnx --out out/fcos/om \
        --chip 310P3 --batch 1 --target ascend
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from common.aipp import aipp_config, aipp_params, check_input_format
from common.cann import set_env_script, soc_version
from common.errors import ToolError
from common.fsutil import run_main, write_json_atomic, write_text_atomic
from common.spec import MODELS, ModelSpec, load_spec

TUNE_JOB_TYPES = {"subgraph": 1, "op": 2}  # AOE --job_type (seed 004 §4)


@dataclass
class CompileJob:
    """A ready-to-run atc/aoe command plus the side files it needs."""

    argv: list[str]
    output: Path  # the .om ATC will write (ATC appends .om to --output)
    side_files: dict[Path, str] = field(default_factory=dict)

    @property
    def command(self) -> str:
        """The command as the recipes print it (``--flag="a;b"``), safe to paste into a shell."""
        return " ".join(_shell_word(a) for a in self.argv)


def _shell_word(arg: str) -> str:
    if shlex.quote(arg) == arg:
        return arg
    flag, eq, value = arg.partition("=")
    if eq and flag.startswith("--") and shlex.quote(flag) == flag:
        escaped = "".join("\\" + c if c in '"$`\\' else c for c in value)
        return f'{flag}="{escaped}"'
    return shlex.quote(arg)


def om_stem(spec: ModelSpec, target: str, batch: int, chip: str, input_format: str = "float") -> str:
    """``fcos_ascend_bs1_Ascend310P3``: the target is in the name (both targets compile), the chip
    in its one normalised spelling (so CHIP=310P3 and CHIP=Ascend310P3 name the same file);
    ``_uint8`` marks a model that takes uint8 canvases (AIPP normalises, common.aipp)."""
    if target not in spec.outputs:
        raise ToolError(f"unknown TARGET '{target}' (valid: {', '.join(sorted(spec.outputs))})")
    suffix = "_uint8" if check_input_format(input_format) == "uint8" else ""
    return f"{spec.name}_{target}_bs{batch}{suffix}_{soc_version(chip)}"


def _common_flags(spec: ModelSpec, onnx_path: Path, chip: str, batch: int, input_name: str | None) -> list[str]:
    c, h, w = spec.input.shape
    name = input_name or spec.input.name
    return [
        "--framework=5",
        f"--model={onnx_path}",
        f"--input_format={spec.input.layout}",
        f'--input_shape={name}:{batch},{c},{h},{w}',
        f"--soc_version={soc_version(chip)}",
    ]


def build_atc(spec: ModelSpec, onnx_path: str | os.PathLike, out_dir: str | os.PathLike, *, chip: str,
              batch: int, target: str = "ascend", out_nodes: list[str] | None = None,
              input_name: str | None = None, log: str = "error", input_format: str = "float") -> CompileJob:
    """The atc command for this model, target, chip and batch size, from the [atc] table of model.toml.

    ``input_format="uint8"`` adds ``--insert_op_conf`` with the static AIPP config that normalises
    on the NPU (common.aipp); the .om then takes uint8 NHWC canvases (``data --input uint8``).
    """
    spec.check_batch(batch)
    out_dir = Path(out_dir)
    stem = om_stem(spec, target, batch, chip, input_format)
    prefix = out_dir / stem
    argv = ["atc", *_common_flags(spec, Path(onnx_path), chip, batch, input_name), f"--output={prefix}",
            f"--log={log}"]
    side: dict[Path, str] = {}
    atc = spec.atc
    if out_nodes:
        argv.append("--out_nodes=" + ";".join(out_nodes))
    if atc.get("precision_mode"):
        argv.append(f"--precision_mode={atc['precision_mode']}")
    if atc.get("modify_mixlist"):
        mixlist = out_dir / f"{spec.name}_mixlist.json"
        side[mixlist] = json.dumps(atc["modify_mixlist"], indent=2) + "\n"
        argv.append(f"--modify_mixlist={mixlist}")
    if input_format == "uint8":
        config = out_dir / f"{stem}_aipp.cfg"
        side[config] = aipp_config(aipp_params(spec.input))
        argv.append(f"--insert_op_conf={config}")
    elif atc.get("input_fp16_nodes"):  # an AIPP input is uint8: no fp16 input then
        argv.append(f"--input_fp16_nodes={atc['input_fp16_nodes']}")
    argv.extend(atc.get("extra", []))
    return CompileJob(argv=argv, output=prefix.with_suffix(".om"), side_files=side)


def build_aoe(spec: ModelSpec, onnx_path: str | os.PathLike, out_dir: str | os.PathLike, *, chip: str,
              batch: int, tune: str, target: str = "ascend", device: int = 0,
              input_name: str | None = None) -> CompileJob:
    """AOE tuning (``aoe --job_type=1`` subgraph / ``2`` operator), which also writes an .om."""
    if tune not in TUNE_JOB_TYPES:
        raise ToolError(f"unknown TUNE '{tune}' (valid: {', '.join(TUNE_JOB_TYPES)})")
    spec.check_batch(batch)
    prefix = Path(out_dir) / f"{om_stem(spec, target, batch, chip)}_aoe_{tune}"
    argv = ["aoe", *_common_flags(spec, Path(onnx_path), chip, batch, input_name),
            f"--job_type={TUNE_JOB_TYPES[tune]}", f"--output={prefix}", f"--device={device}"]
    return CompileJob(argv=argv, output=prefix.with_suffix(".om"))


def graph_io(spec: ModelSpec, onnx_path: Path, *, target: str, batch: int) -> tuple[str, list[str]]:
    """(input name, ATC ``--out_nodes``) read from the exported graph, checked against model.toml.

    Out nodes are the graph's output names (never exporter node ids like ``Cast_1673``); a graph
    whose outputs or input shape differ from what the data file says for this target and batch is
    another model or another export, and ATC would compile it into a wrong .om.
    """
    from common import graph

    model = graph.load(onnx_path)
    outputs = graph.output_names(model)
    expected = [o.name for o in spec.outputs_for(target)]
    if outputs != expected:
        raise ToolError(f"{onnx_path} has outputs {', '.join(outputs)}, expected {', '.join(expected)}: it is not "
                        f"a {spec.name} TARGET={target} export of this tool; re-export it")
    inputs = [i for i in model.graph.input if i.name in graph.input_names(model)]
    if len(inputs) != 1:
        raise ToolError(f"{onnx_path} has {len(inputs)} inputs, expected 1: re-export it")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    want = [batch, *spec.input.shape]
    if len(dims) != len(want) or any(d is not None and d != w for d, w in zip(dims, want)):
        shown = "x".join("?" if d is None else str(d) for d in dims)
        raise ToolError(f"{onnx_path} takes input {shown}, expected {'x'.join(map(str, want))} for BATCH={batch}: "
                        f"export it with BATCH={batch}")
    return inputs[0].name, outputs


def compile_om(spec: ModelSpec, onnx_path: str | os.PathLike, out_dir: str | os.PathLike, *, chip: str,
               batch: int = 1, target: str = "ascend", tune: str | None = None, device: int = 0,
               force: bool = False, input_format: str = "float") -> Path:
    """The om step of every tool: ONNX -> .om (ATC, or AOE with ``tune``) + a record of its source.

    Without the ONNX file the command is still built (input and out nodes from model.toml) and
    shown with the error, so the user sees what will run before exporting.
    """
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    if onnx_path.is_file():
        input_name, out_nodes = graph_io(spec, onnx_path, target=target, batch=batch)
    else:  # the export guarantees these names
        input_name, out_nodes = spec.input.name, [o.name for o in spec.outputs_for(target)]
    if tune and input_format != "float":
        raise ToolError("AOE tuning here compiles float inputs only: drop TUNE or use INPUT=float")
    if tune:
        job = build_aoe(spec, onnx_path, out_dir, chip=chip, batch=batch, tune=tune, target=target,
                        device=device, input_name=input_name)
    else:
        job = build_atc(spec, onnx_path, out_dir, chip=chip, batch=batch, target=target,
                        out_nodes=out_nodes or None, input_name=input_name, input_format=input_format)
    if not onnx_path.is_file():
        raise ToolError(f"ONNX model {onnx_path} not found: run `make {spec.name}-onnx"
                        f"{'' if target == 'ascend' else ' TARGET=' + target}"
                        f"{'' if batch == 1 else f' BATCH={batch}'}` first; the command this step runs is below",
                        detail=job.command)
    built = run(job, out_dir / (job.output.stem + ".log"), force=force)
    _write_source_record(built, onnx_path)
    return built


def _write_source_record(built: Path, onnx_path: Path) -> None:
    """Which ONNX (and so which checkpoint) this .om came from, read by the eval report."""
    from common.exportrecord import export_record_path, weights_of

    write_json_atomic(export_record_path(built), {"onnx": str(onnx_path), "weights": weights_of(onnx_path)})


def run(job: CompileJob, log_path: str | os.PathLike, *, force: bool = False) -> Path:
    """Run the job (sourcing CANN's set_env.sh when found); clear errors when the tool is absent or fails."""
    tool = job.argv[0]
    if job.output.exists() and not force:
        raise ToolError(f"{job.output} already exists: pass --force to rebuild it")
    set_env = set_env_script()
    if shutil.which(tool) is None and set_env is None:
        raise ToolError(
            f"{tool} not found: install CANN or source its set_env.sh (set ASCEND_TOOLKIT_HOME); "
            "on an Ascend host run the command below",
            detail=job.command,
        )
    for path, text in job.side_files.items():
        write_text_atomic(path, text)
    script = (f"source {shlex.quote(str(set_env))} >/dev/null 2>&1; " if set_env else "") + "exec " + job.command
    log = Path(log_path)
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"running: {job.command}", file=sys.stderr)
    with open(log, "w") as f:
        proc = subprocess.run(["bash", "-c", script], stdout=f, stderr=subprocess.STDOUT)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    if proc.returncode == 127:
        raise ToolError(f"{tool} not found even after sourcing {set_env}: check the CANN install",
                        detail=job.command)
    if proc.returncode != 0:
        raise ToolError(f"{tool} failed with exit code {proc.returncode} (full log: {log})", detail=tail)
    if not job.output.exists():
        raise ToolError(f"{tool} reported success but {job.output} was not written (log: {log})", detail=tail)
    return job.output


def main(argv: list[str] | None = None) -> int:
    """``python -m common.atc``: the om step of ``make M-om``, in the ``base`` environment."""
    parser = argparse.ArgumentParser(prog="python -m common.atc", description=main.__doc__)
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--onnx", required=True, type=Path, help="the exported ONNX")
    parser.add_argument("--out", required=True, type=Path, help="folder for the .om, its log and source record")
    parser.add_argument("--chip", required=True, help="SoC name from `npu-smi info`, e.g. 310P3")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--target", default="ascend", help="the export target of the ONNX: ascend | onnx")
    parser.add_argument("--tune", help="AOE tuning: subgraph | op")
    parser.add_argument("--device", type=int, default=0)
    parser.add_argument("--input", default="float", dest="input_format",
                        help="float (the data step's tensors) | uint8 (AIPP normalises on the NPU)")
    parser.add_argument("--force", action="store_true", help="rebuild an existing .om")
    args = parser.parse_args(argv)
    return run_main(lambda: compile_om(load_spec(args.model), args.onnx, args.out, chip=args.chip, batch=args.batch,
                                       target=args.target, tune=args.tune, device=args.device, force=args.force,
                                       input_format=args.input_format), args.out)

if __name__ == "__main__":
    sys.exit(main())
