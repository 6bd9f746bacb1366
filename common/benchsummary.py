"""Readers (and one writer) for the performance records of Ascend inference tools.

Three producers exist in the published recipes, and a report must accept all of them:

* **ais_bench / msit benchmark** write ``<output>/<subdir>_summary.json`` (subdir = timestamp
  ``YYYY_MM_DD-HH_MM_SS`` or ``--output_dirname``); the older ``ais_infer`` front end wrote
  ``<output>/<subdir>/sumary.json`` (sic). Fields, from ``ais_bench/infer/summary.py``
  (Ascend/tools ``ais-bench_workload/tool/ais_infer``, Ascend/ait and Ascend/msit
  ``components/benchmark``): ``NPU_compute_time``, ``H2D_latency``, ``D2H_latency``, each
  ``{min, max, mean, median, "percentile(99%)", count}`` in ms (``count`` only in later
  versions; the multi-thread pipeline mode writes only ``mean`` and ``count``), ``throughput`` =
  1000 * batchsize / mean NPU time, ``npu_compute_time_list``, ``pid``, ``filesinfo`` and
  ``args`` (the tool's ``sys.argv``). No version writes the batch size itself: we take it from
  our own ``batchsize`` field, else from ``--batchsize`` in ``args``, else from throughput x mean.
  One 2023 version split the percentile key over a source line, so it reads
  ``"percentile(99%      )"`` with embedded blanks; we match that key ignoring whitespace.
* the same tools print a "Performance Summary" block on stdout (``[INFO] NPU_compute_time (ms):
  min = .., max = .., mean = .., median = .., percentile(99%) = ..`` and a ``throughput ...`` line
  whose wording changed three times); :func:`parse_ais_stdout` reads it.
* the old ``benchmark`` tool writes ``result/perf_vision_batchsize_{B}_device_{N}.txt`` with
  ``[e2e] throughputRate: X, latency: Y`` and ``[infer] throughputRate: X, Interface
  throughputRate: Y, moduleLatency: Z`` lines (``[inference]``/``[postprocess]`` in some builds),
  and in pure-inference mode ``result/PureInfer_perf_of_<om>_in_device_{N}.txt`` with
  ``ave_throughputRate = X samples/s, ave_latency = Y ms`` (ModelZoo-PyTorch ACL_PyTorch READMEs).

Everything malformed becomes a one-line :class:`ToolError` naming the file; nothing else escapes.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from common.errors import ToolError

PERCENTILE = 99
PERCENTILE_KEY = f"percentile({PERCENTILE}%)"
STAT_FIELDS = ("min", "max", "mean", "median", "p99", "count")
#: summary sections of ais_bench -> our normalised names
SECTIONS = {"NPU_compute_time": "npu_compute_time", "H2D_latency": "h2d_latency",
            "D2H_latency": "d2h_latency"}
OLD_SUMMARY_NAME = "sumary.json"  # the ais_infer spelling
SUMMARY_SUFFIX = "_summary.json"
#: chips on one inference card: an Atlas 300I (model 3000) card carries four Ascend 310 chips and the
#: benchmark tool measures one chip (``-device_id``), so the recipes report card fps as chip fps x 4
#: ("对于310，需要乘以4，710只有一颗芯片"); 310P (Atlas 300I Pro / Duo per chip) counts as 1.
CHIPS_PER_CARD_310 = 4

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf(?:inity)?)"


# --- building (our backends write the same file ais_bench writes) -------------------------------

def stats_ms(values: Sequence[float]) -> dict[str, float | int]:
    """min/max/mean/median/p99 of timings in ms, zeros for an empty list (as ais_bench does)."""
    import numpy as np

    vals = np.asarray(list(values), dtype=np.float64)
    if vals.size == 0:
        return {"min": 0.0, "max": 0.0, "mean": 0.0, "median": 0.0, PERCENTILE_KEY: 0.0, "count": 0}
    return {
        "min": float(vals.min()), "max": float(vals.max()), "mean": float(vals.mean()),
        "median": float(np.median(vals)), PERCENTILE_KEY: float(np.percentile(vals, PERCENTILE)),
        "count": int(vals.size),
    }


def make_ais_summary(compute_ms: Sequence[float], *, batchsize: int, h2d_ms: Sequence[float] = (),
                     d2h_ms: Sequence[float] = (), extra: Mapping[str, Any] | None = None) -> dict:
    """An ais_bench-compatible summary dict, so every consumer reads one format for every backend."""
    npu = stats_ms(compute_ms)
    throughput = 1000.0 * batchsize / npu["mean"] if npu["mean"] else 0.0
    summary: dict[str, Any] = {
        "NPU_compute_time": npu,
        "H2D_latency": stats_ms(h2d_ms),
        "D2H_latency": stats_ms(d2h_ms),
        "throughput": throughput,
        "npu_compute_time_list": [float(v) for v in compute_ms],
        "pid": os.getpid(),
    }
    summary.update(extra or {})
    return summary


# --- ais_bench summary JSON ---------------------------------------------------------------------

def find_ais_summary(path_or_dir: str | os.PathLike, dirname: str | None = None) -> Path:
    """Locate the summary file for a file, an ``--output`` directory or a result subdirectory."""
    p = Path(path_or_dir)
    if p.is_file():
        return p
    if not p.is_dir():
        raise ToolError(f"ais_bench summary {p} not found: pass the summary JSON or the inference output dir")
    if dirname is not None:
        candidates = [p / f"{dirname}{SUMMARY_SUFFIX}", p / dirname / OLD_SUMMARY_NAME]
    else:
        candidates = [p / OLD_SUMMARY_NAME, p.parent / f"{p.name}{SUMMARY_SUFFIX}"]
        found = sorted(p.glob(f"*{SUMMARY_SUFFIX}")) or sorted(p.glob(f"*/{OLD_SUMMARY_NAME}"))
        if len(found) > 1:
            names = ", ".join(str(f.relative_to(p)) for f in found)
            raise ToolError(f"{p} holds several summaries ({names}): pass the one you mean")
        candidates = found + candidates
    for c in candidates:
        if c.is_file():
            return c
    raise ToolError(
        f"no ais_bench summary (*{SUMMARY_SUFFIX} or */{OLD_SUMMARY_NAME}) in {p}: "
        "run inference with --output first"
    )


def parse_ais_summary(path_or_dir: str | os.PathLike, dirname: str | None = None) -> dict:
    """Read an ais_bench/ais_infer summary (either location or version) into one normalised dict.

    Returns ``{source, format, throughput, batchsize, npu_compute_time, h2d_latency, d2h_latency,
    backend, device, model}`` where each timing entry is ``{min, max, mean, median, p99, count}``
    in ms (``None`` for a value the file does not hold; h2d/d2h are ``None`` when absent).
    """
    path = find_ais_summary(path_or_dir, dirname)
    data = _load_json(path)
    fmt = "ais_infer" if path.name == OLD_SUMMARY_NAME else "ais_bench"
    if not isinstance(data, dict) or "NPU_compute_time" not in data:
        raise ToolError(f"{path} is not an ais_bench summary (no NPU_compute_time object): "
                        "pass the *_summary.json")
    npu = _stat_block(data.get("NPU_compute_time"), "NPU_compute_time", path)
    if npu["mean"] is None:
        raise ToolError(f"{path}: NPU_compute_time has no mean: the file is truncated or not a summary")
    throughput = _number(data.get("throughput"), "throughput", path)
    if throughput is None:
        raise ToolError(f"{path}: no throughput value: the file is truncated or not an ais_bench summary")
    args = data.get("args")
    batchsize = _number(data.get("batchsize"), "batchsize", path)
    if batchsize is None:
        batchsize = _arg_value(args, ("batchsize", "batch_size", "batch-size"), path)
    if batchsize == 0:
        raise ToolError(f"{path}: batchsize is 0: the file is corrupt")
    if batchsize is None and throughput > 0 and npu["mean"] > 0:
        batchsize = throughput * npu["mean"] / 1000.0
        if not math.isfinite(batchsize):
            raise ToolError(f"{path}: throughput {throughput} and mean time {npu['mean']} are absurd: "
                            "the file is corrupt")
    device = data.get("device", _arg_value(args, ("device", "device_id", "device-id"), path, numeric=False))
    model = data.get("model", _arg_value(args, ("model", "om", "om-model", "om_model"), path, numeric=False))
    return {
        "source": str(path),
        "format": fmt,
        "throughput": throughput,
        "batchsize": _tidy_batch(batchsize),
        "npu_compute_time": npu,
        "h2d_latency": _stat_block(data.get("H2D_latency"), "H2D_latency", path, optional=True),
        "d2h_latency": _stat_block(data.get("D2H_latency"), "D2H_latency", path, optional=True),
        "backend": _text(data.get("backend", "ais_bench"), "backend", path),
        "device": _text(device, "device", path),
        "model": _text(model, "model", path),
        # ours only (ais_bench excludes its --warmup_count runs without reporting them)
        "warmup_compute_ms": _warmup_times(data.get("warmup_compute_ms"), path),
    }


def _warmup_times(value: object, path: Path) -> list[float] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ToolError(f"{path}: warmup_compute_ms must be a list of milliseconds: rerun the measurement")
    return [float(v) for v in value]


def _load_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ToolError(f"cannot read ais_bench summary {path}: {err.strerror or err}") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ToolError(f"ais_bench summary {path} is not valid JSON: rerun inference to regenerate it"
                        ) from None


def _stat_block(block: object, name: str, path: Path, optional: bool = False) -> dict | None:
    if block is None and optional:
        return None
    if not isinstance(block, dict):
        raise ToolError(f"{path}: {name} is not an object of timings: the file is not an ais_bench summary")
    out: dict[str, float | int | None] = {}
    for key in ("min", "max", "mean", "median"):
        out[key] = _number(block.get(key), f"{name}.{key}", path)
    out["p99"] = None
    for key, value in block.items():
        squeezed = re.sub(r"\s+", "", key) if isinstance(key, str) else ""
        if re.fullmatch(rf"percentile\({PERCENTILE}(?:\.0+)?%\)", squeezed):
            out["p99"] = _number(value, f"{name}.{PERCENTILE_KEY}", path)
    count = _number(block.get("count"), f"{name}.count", path)
    out["count"] = int(count) if count is not None else None
    return out


def _number(value: object, what: str, path: Path) -> float | None:
    """A finite, non-negative JSON number (bools and strings are refused), or None when absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ToolError(f"{path}: {what} is {_short(value)}, not a number: the file is corrupt")
    try:
        number = float(value)
    except OverflowError:
        raise ToolError(f"{path}: {what} is out of range: the file is corrupt") from None
    if not math.isfinite(number) or number < 0:
        raise ToolError(f"{path}: {what} is {number}: the file is corrupt")
    return number


def _text(value: object, what: str, path: Path) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ToolError(f"{path}: {what} is {_short(value)}, not text: the file is corrupt")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _arg_value(args: object, names: Iterable[str], path: Path, numeric: bool = True) -> Any:
    """Find ``--name V`` / ``--name=V`` in the recorded ``sys.argv`` (or a dict of arguments)."""
    names = tuple(names)
    raw = None
    if isinstance(args, dict):
        raw = next((args[n] for n in names if n in args), None)
    elif isinstance(args, list) and all(isinstance(a, str) for a in args):
        flags = {f"--{n}" for n in names} | {f"-{n}" for n in names}
        for i, arg in enumerate(args):
            flag, eq, val = arg.partition("=")
            if flag in flags:
                raw = val if eq else (args[i + 1] if i + 1 < len(args) else None)
    if raw is None or not numeric:
        return raw if raw is None or isinstance(raw, (str, int)) else str(raw)
    try:
        value = float(raw)
    except (TypeError, ValueError, OverflowError):
        raise ToolError(f"{path}: recorded batch size {_short(raw)} is not a number: the file is corrupt"
                        ) from None
    if not math.isfinite(value) or value <= 0:
        raise ToolError(f"{path}: recorded batch size {value} is invalid: the file is corrupt")
    return value


def _tidy_batch(value: float | None) -> float | int | None:
    if value is None:
        return None
    rounded = round(value)
    return int(rounded) if abs(value - rounded) < 1e-3 else round(value, 3)


# --- ais_bench stdout -------------------------------------------------------------------------

_STAT_LINE = re.compile(r"(NPU_compute_time|H2D_latency|D2H_latency) \(ms\):\s*(.*)$")
_THROUGHPUT_LINES = (
    # 2023+: throughput 1000*batchsize.mean(B)/NPU_compute_time.mean(M): T
    # 2022:  throughput 1000*batchsize(B)/NPU_compute_time.mean(M): T
    re.compile(rf"throughput 1000\*batchsize(?:\.mean)?\(({_NUMBER})\)/NPU_compute_time\.mean\(({_NUMBER})\):"
               rf"\s*({_NUMBER})\s*$"),
    # ais_infer 2022: throughput (1000*batchsize/NPU_compute_time): T
    re.compile(rf"throughput \(1000\*batchsize/NPU_compute_time\):\s*({_NUMBER})\s*$"),
)


def parse_ais_stdout(text: str, *, source: str = "ais_bench output", which: int = -1) -> dict:
    """Parse a printed "Performance Summary" block (by default the last: multi-device runs print one each).

    Returns the same normalised dict as :func:`parse_ais_summary` plus ``blocks`` (how many were found).
    """
    if not isinstance(text, str):
        raise ToolError(f"{source}: expected text, got {type(text).__name__}")
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if "Performance Summary" in line and "---" in line:
            current = []
            blocks.append(current)
        elif current is not None:
            if re.search(r"-{10,}\s*$", line):
                current = None
            else:
                current.append(line)
    if not blocks:
        raise ToolError(f"no 'Performance Summary' block in {source}: ais_bench did not finish (see its log)")
    try:
        lines = blocks[which]
    except IndexError:
        raise ToolError(f"{source} has {len(blocks)} Performance Summary block(s), not block {which}"
                        ) from None
    result: dict[str, Any] = {
        "source": source, "format": "ais_bench stdout", "throughput": None, "batchsize": None,
        "npu_compute_time": None, "h2d_latency": None, "d2h_latency": None,
        "backend": "ais_bench", "device": None, "model": None, "blocks": len(blocks),
    }
    for line in lines:
        m = _STAT_LINE.search(line)
        if m:
            result[SECTIONS[m.group(1)]] = _stdout_stats(m.group(2), m.group(1), source)
            continue
        for pattern in _THROUGHPUT_LINES:
            t = pattern.search(line.strip())
            if t:
                values = [_stdout_number(v, "throughput line", source) for v in t.groups()]
                result["throughput"] = values[-1]
                if len(values) == 3:
                    result["batchsize"] = _tidy_batch(values[0])
                break
    if result["npu_compute_time"] is None or result["npu_compute_time"]["mean"] is None:
        raise ToolError(f"{source}: the Performance Summary block has no NPU_compute_time line: "
                        "output is truncated")
    if result["throughput"] is None:
        raise ToolError(f"{source}: the Performance Summary block has no throughput line: "
                        "output is truncated")
    if result["batchsize"] is None and result["throughput"] > 0 and result["npu_compute_time"]["mean"] > 0:
        derived = result["throughput"] * result["npu_compute_time"]["mean"] / 1000.0
        result["batchsize"] = _tidy_batch(derived) if math.isfinite(derived) else None
    return result


def _stdout_stats(body: str, name: str, source: str) -> dict:
    out: dict[str, float | int | None] = {k: None for k in STAT_FIELDS}
    for part in body.split(","):
        key, eq, value = part.partition("=")
        key = re.sub(r"\s+", "", key)
        if not eq:
            raise ToolError(f"{source}: cannot read '{part.strip()[:40]}' in the {name} line: "
                            "output is corrupt")
        if key == PERCENTILE_KEY:
            key = "p99"
        if key in ("min", "max", "mean", "median", "p99"):
            out[key] = _stdout_number(value, f"{name} {key}", source)
    return out


def _stdout_number(text: str, what: str, source: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ToolError(f"{source}: {what} value {text.strip()[:30]!r} is not a number: output is corrupt"
                        ) from None
    if not math.isfinite(value) or value < 0:
        raise ToolError(f"{source}: {what} value {value} is invalid: output is corrupt")
    return value


# --- old benchmark tool -------------------------------------------------------------------------

_PERF_NAME = re.compile(r"perf_\w*?batchsize_(\d+)_device_(\d+)\.txt$")
_PURE_NAME = re.compile(r"PureInfer_perf_of_(.*)_in_device_(\d+)\.txt$")
_SECTION_ALIASES = {"inference": "infer", "postprocess": "post", "data read": "data_read"}
_KNOWN_SECTIONS = {"e2e", "infer", "post", "preprocess", "data_read"}
_PAIR = re.compile(rf"^\s*([A-Za-z_][A-Za-z_ ]*?)\s*[:=]\s*({_NUMBER})\s*([A-Za-z/%]*)\s*$")


def parse_benchmark_perf(path: str | os.PathLike, *, chips_per_card: int = CHIPS_PER_CARD_310) -> dict:
    """Read the old benchmark tool's perf file (dataset run or PureInfer run).

    ``card_fps`` = Interface throughputRate x ``chips_per_card``: the tool measures one chip, and a
    310 card has four (pass ``chips_per_card=1`` for 310P results).
    """
    p = Path(path)
    if isinstance(chips_per_card, bool) or not isinstance(chips_per_card, int) or chips_per_card < 1:
        raise ToolError(f"chips_per_card={chips_per_card!r} is invalid: use 4 for a 310 card, 1 for 310P")
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ToolError(f"cannot read benchmark perf file {p}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ToolError(f"benchmark perf file {p} is not text: pass the tool's result/perf_*.txt") from None
    sections: dict[str, dict[str, float]] = {}
    pure: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^\s*\[([^\]]*)\]\s*(.*)$", line)
        section = _SECTION_ALIASES.get(m.group(1).strip().lower(), m.group(1).strip().lower()) if m else ""
        body = m.group(2) if m else line
        pairs = _pairs(body)
        if section in _KNOWN_SECTIONS:
            if pairs is None:
                raise ToolError(f"{p}: cannot read the [{section}] line '{line.strip()[:60]}': "
                                "the file is corrupt")
            sections.setdefault(section, {}).update(pairs)
        elif pairs and "ave_throughputRate" in pairs:
            pure.update(pairs)
    infer = sections.get("infer", {})
    if "Interface throughputRate" in infer:
        interface, fmt = infer["Interface throughputRate"], "benchmark"
    elif "ave_throughputRate" in pure:
        interface, fmt = pure["ave_throughputRate"], "benchmark-pureinfer"
    else:
        raise ToolError(
            f"{p} has no '[infer] ... Interface throughputRate' or 'ave_throughputRate' line: "
            "pass the benchmark tool's result/perf_*.txt file"
        )
    batch = device = None
    named = _PERF_NAME.search(p.name)
    pure_named = _PURE_NAME.search(p.name)
    if named:
        batch, device = int(named.group(1)), int(named.group(2))
    elif pure_named:
        bs = re.search(r"_bs(\d+)(?:_|$)", pure_named.group(1))
        batch, device = (int(bs.group(1)) if bs else None), int(pure_named.group(2))
    e2e = sections.get("e2e", {})
    return {
        "source": str(p),
        "format": fmt,
        "batchsize": batch,
        "device": device,
        "e2e_throughput": e2e.get("throughputRate"),
        "e2e_latency": e2e.get("latency"),
        "infer_throughput": infer.get("throughputRate"),
        "interface_throughput": interface,
        "latency_ms": pure.get("ave_latency", infer.get("moduleLatency")),
        "chips_per_card": chips_per_card,
        "card_fps": interface * chips_per_card,
        "sections": sections,
    }


def _pairs(body: str) -> dict[str, float] | None:
    """``key: value[unit], key = value[unit], ...`` -> dict; None when any part is not such a pair."""
    out: dict[str, float] = {}
    for part in body.split(","):
        m = _PAIR.match(part)
        if not m:
            return None
        value = float(m.group(2))
        if not math.isfinite(value) or value < 0:
            return None
        out[m.group(1).strip()] = value
    return out
