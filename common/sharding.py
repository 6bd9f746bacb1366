"""Inference over several devices: ``DEVICE=0,1,2,3`` splits the dataset into one shard per device.

A 310 card holds four chips and a 310P host often several cards; the published figures multiply
one chip's rate by four instead of measuring. Here every shard runs in its own process on its own
device (ais_bench: ``--device N``; onnxruntime: one worker process per listed id, on the CPU), the
result files are merged into the one result directory a single run writes (ais_bench's layout:
a file per image and output, so shards cannot collide), and the summary reports the *measured*
aggregate rate (images / wall time of the whole run) beside each device's own figures.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

from common.backends.base import publish, staging_dir
from common.benchsummary import SUMMARY_SUFFIX
from common.errors import ToolError
from common.fsutil import read_json, write_json_atomic


def parse_devices(value: str | int | Sequence[int]) -> list[int]:
    """``"0"``, ``"0,1,2,3"`` (or ints) -> distinct device ids, refusing anything else with the fix."""
    if isinstance(value, int) and not isinstance(value, bool):
        parts = [str(value)]
    elif isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
    else:
        parts = [str(v) for v in value]
    if not parts or not all(p.isdigit() for p in parts):
        raise ToolError(f"DEVICE={value!r} is invalid: use NPU ids from `npu-smi info`, e.g. 0 or 0,1,2,3")
    devices = [int(p) for p in parts]
    if len(set(devices)) != len(devices):
        raise ToolError(f"DEVICE={value!r} lists a device twice: each shard needs its own device")
    return devices


def shard(items: Sequence, index: int, count: int) -> list:
    """Shard ``index`` of ``count``: contiguous, sizes differing by at most one, the same on every run."""
    if not 0 <= index < count:
        raise ToolError(f"shard {index} of {count} does not exist (valid: 0..{count - 1})")
    n = len(items)
    return list(items[index * n // count:(index + 1) * n // count])


def _run_shard(backend: str, model_path: str, device: int, inputs: list[str], out: str, dirname: str,
               batch: int, loop: int) -> str:
    """One shard in its own process (top level, so the spawn start method can import it)."""
    from common.backends import make_backend

    runner = make_backend(backend, model_path, device)
    return str(runner.run([Path(p) for p in inputs], Path(out), dirname, batch, loop=loop))


class ShardedRunner:
    """A backend that runs one shard per device in parallel processes, then merges (``run`` as a backend's)."""

    def __init__(self, backend: str, model_path: str | os.PathLike, devices: Sequence[int]) -> None:
        from common.backends import make_backend

        self.backend, self.model_path, self.devices = backend, Path(model_path), list(devices)
        self.name = make_backend(backend, model_path, self.devices[0]).name  # checks the model and backend

    def run(self, inputs: Sequence[Path], out_dir: Path, dirname: str, batch: int, loop: int = 1) -> Path:
        out = Path(out_dir)
        work = staging_dir(out, dirname)  # refuses earlier results, as a single run does
        try:
            shards = [(d, shard(list(inputs), i, len(self.devices))) for i, d in enumerate(self.devices)]
            shards = [(d, files) for d, files in shards if files]
            start = time.perf_counter()
            context = multiprocessing.get_context("spawn")  # no forked ORT/ACL state in the children
            with ProcessPoolExecutor(max_workers=len(shards), mp_context=context) as pool:
                futures = [pool.submit(_run_shard, self.backend, str(self.model_path), d, [str(f) for f in files],
                                       str(work / f"device{d}"), dirname, batch, loop) for d, files in shards]
                shard_dirs = [Path(f.result()) for f in futures]
            wall = time.perf_counter() - start
            merged = work / dirname
            merged.mkdir()
            for folder in shard_dirs:
                for item in folder.iterdir():
                    os.replace(item, merged / item.name)
            summaries = [read_json(work / f"device{d}" / f"{dirname}{SUMMARY_SUFFIX}", what="shard summary")
                         for d, _ in shards]
            per_device = [{"device": d, "images": len(files), "throughput": s.get("throughput"),
                           "NPU_compute_time": s.get("NPU_compute_time")} for (d, files), s in zip(shards, summaries)]
            images = sum(len(files) for _, files in shards)
            write_json_atomic(out / f"{dirname}{SUMMARY_SUFFIX}", {
                "throughput": images / wall,
                "throughput_kind": f"measured aggregate over {len(shards)} devices: images / wall time of the run",
                "wall_s": wall, "images": images, "batchsize": batch, "backend": self.name,
                "devices": [d for d, _ in shards], "per_device": per_device,
                "sum_of_device_throughputs": sum(float(p["throughput"] or 0.0) for p in per_device),
                "model": str(self.model_path), "loop": loop,
            })
            publish(merged, out / dirname)
            return out / dirname
        finally:
            shutil.rmtree(work, ignore_errors=True)
