"""ATC (ONNX -> Ascend .om) and AOE tuning command lines, built from the model data file.

The command is always built in full first, so that on a machine without CANN we can still
print exactly what to run on an Ascend host.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from common.cann import set_env_script, soc_version
from common.errors import ToolError
from common.fsutil import write_text_atomic
from common.spec import ModelSpec

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
              batch: int, out_nodes: list[str] | None = None, input_name: str | None = None,
              log: str = "error") -> CompileJob:
    """The atc command for this model, chip and batch size, from the [atc] table of model.toml."""
    spec.check_batch(batch)
    out_dir = Path(out_dir)
    prefix = out_dir / f"{spec.name}_bs{batch}_{soc_version(chip)}"
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
    if atc.get("input_fp16_nodes"):
        argv.append(f"--input_fp16_nodes={atc['input_fp16_nodes']}")
    argv.extend(atc.get("extra", []))
    return CompileJob(argv=argv, output=prefix.with_suffix(".om"), side_files=side)


def build_aoe(spec: ModelSpec, onnx_path: str | os.PathLike, out_dir: str | os.PathLike, *, chip: str,
              batch: int, tune: str, device: int = 0, input_name: str | None = None) -> CompileJob:
    """AOE tuning (``aoe --job_type=1`` subgraph / ``2`` operator), which also writes an .om."""
    if tune not in TUNE_JOB_TYPES:
        raise ToolError(f"unknown TUNE '{tune}' (valid: {', '.join(TUNE_JOB_TYPES)})")
    spec.check_batch(batch)
    prefix = Path(out_dir) / f"{spec.name}_bs{batch}_{soc_version(chip)}_aoe_{tune}"
    argv = ["aoe", *_common_flags(spec, Path(onnx_path), chip, batch, input_name),
            f"--job_type={TUNE_JOB_TYPES[tune]}", f"--output={prefix}", f"--device={device}"]
    return CompileJob(argv=argv, output=prefix.with_suffix(".om"))


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
