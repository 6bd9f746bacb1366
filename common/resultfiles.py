"""Reading an inference result directory in ais_bench's layout, refusing anything inconsistent.

ais_bench (and our other backends, which copy it) write ``<output>/<subdir>/<stem>_<k>.bin``: one raw
C-order file per image and model output, ``k`` = 0-based output index, ``stem`` = the input file
name up to its first dot (``ais_bench/infer/io_oprations.py: save_tensors_to_file``). The old
``benchmark`` tool wrote ``dumpOutput_device<N>/<stem>_<k>.bin`` with 1-based ``k``; we do not read
that layout, but recognise it to say so. Postprocessing must never guess: a missing, extra or
wrongly sized file means the directory belongs to another model, batch or run, so it is refused
with a list of every problem. A float output holding NaN/inf is refused too, naming the image:
postprocessing would silently drop such rows (a NaN score fails every ``score > 0`` test) and
report a lower mAP instead of an error.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from common.errors import ToolError
from common.spec import OutputSpec
from common.tensors import np_dtype, read_tensor

RESULT_FILE = re.compile(r"^(?P<stem>.+)_(?P<k>\d+)\.bin$")
#: files ais_bench's older front end (ais_infer) leaves beside the results
IGNORED_NAMES = frozenset({"sumary.json"})
MAX_LISTED = 200  # problem lines kept in ToolError.detail


class ResultSet(Mapping[str, list]):
    """``stem -> [output_0, output_1, ...]`` with every file validated up front and read on access.

    Lazy on purpose: RetinaMask's masks alone are 3 MB per image, so a whole COCO val run does
    not fit in memory at once.
    """

    def __init__(self, result_dir: Path, stems: Sequence[str], outputs: Sequence[OutputSpec]) -> None:
        self.result_dir = result_dir
        self.outputs = tuple(outputs)
        self._stems = list(stems)
        self._known = set(self._stems)

    def __getitem__(self, stem: str) -> list[np.ndarray]:
        if stem not in self._known:
            raise KeyError(stem)
        arrays = [read_tensor(self.path(stem, k), o.dtype, o.shape) for k, o in enumerate(self.outputs)]
        for k, (array, out) in enumerate(zip(arrays, self.outputs)):
            check_finite(array, self.path(stem, k), stem, out.name)
        return arrays

    def __iter__(self) -> Iterator[str]:
        return iter(self._stems)

    def __len__(self) -> int:
        return len(self._stems)

    def path(self, stem: str, k: int) -> Path:
        return self.result_dir / result_name(stem, k)

    def load_all(self) -> dict[str, list[np.ndarray]]:
        return {stem: self[stem] for stem in self._stems}


def check_finite(array: np.ndarray, path: Path, stem: str, output: str) -> None:
    """Refuse a float output with NaN/inf values: no postprocess can tell them from padding."""
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise ToolError(f"image {stem}: output {output} ({path}) holds {bad} NaN/inf value(s): the model "
                        "overflowed; on Ascend check the ATC precision_mode and mixlist in model.toml, "
                        "then rerun inference")


def result_name(stem: str, k: int) -> str:
    return f"{stem}_{k}.bin"


def expected_bytes(output: OutputSpec) -> int:
    return int(np.prod(output.shape, dtype=np.int64)) * np_dtype(output.dtype).itemsize


def read_results(result_dir: str | os.PathLike, stems: Sequence[str],
                 outputs: Sequence[OutputSpec]) -> ResultSet:
    """Validate ``result_dir`` against the expected images and outputs; return a lazy mapping.

    Raises ToolError listing (in ``detail``) every missing file, every unexpected file (unknown
    stem, output index out of range, other formats) and every file whose byte size differs from
    ``dtype x shape`` of its output.
    """
    rdir = Path(result_dir)
    if not rdir.is_dir():
        raise ToolError(f"result directory {rdir} not found: run the infer step (or pass the right one)")
    stems = list(stems)
    if not stems:
        raise ToolError(f"no images to read from {rdir}: the manifest lists none")
    if not outputs:
        raise ToolError(f"no model outputs declared for {rdir}: fix the outputs of the model data file")
    dupes = sorted(s for s, n in Counter(stems).items() if n > 1)
    if dupes:
        raise ToolError(f"image stems occur twice ({', '.join(dupes[:5])}): their result files would collide")
    sizes = [expected_bytes(o) for o in outputs]
    present: dict[str, int | None] = {}
    with os.scandir(rdir) as entries:
        for entry in entries:
            if entry.name in IGNORED_NAMES:
                continue
            present[entry.name] = entry.stat().st_size if entry.is_file() else None

    missing: list[str] = []
    wrong: list[str] = []
    for stem in stems:
        for k, (out, size) in enumerate(zip(outputs, sizes)):
            name = result_name(stem, k)
            actual = present.pop(name, -1)
            if actual == -1:
                missing.append(name)
            elif actual != size:
                got = "a directory" if actual is None else f"{actual} bytes"
                wrong.append(f"{name}: {got}, expected {size} ({out.name} {out.dtype} {list(out.shape)})")
    extra = sorted(present)
    if missing or wrong or extra:
        raise _problem(rdir, missing, wrong, extra, len(outputs))
    return ResultSet(rdir, stems, outputs)


def _problem(rdir: Path, missing: list[str], wrong: list[str], extra: list[str], n_outputs: int) -> ToolError:
    counts = ", ".join(f"{len(v)} {what}" for what, v in
                       (("missing", missing), ("wrongly sized", wrong), ("unexpected", extra)) if v)
    first = (missing + wrong + extra)[0]
    fix = "rerun inference for this model and batch size into an empty directory"
    if any(n.endswith((".npy", ".txt")) for n in extra):
        fix = "rerun ais_bench with --outfmt BIN"
    elif missing and extra and _looks_one_based(missing, extra, n_outputs):
        fix = ("these look like the old benchmark tool's 1-based names (<stem>_1.bin ...): "
               "rerun inference with ais_bench or this project's backends (0-based)")
    lines = [f"missing: {n}" for n in missing] + [f"wrong size: {w}" for w in wrong]
    lines += [f"unexpected: {n}" for n in extra]
    if len(lines) > MAX_LISTED:
        lines = lines[:MAX_LISTED] + [f"... and {len(lines) - MAX_LISTED} more"]
    return ToolError(
        f"result directory {rdir} does not match the model ({counts} file(s), first: {first}): {fix}",
        detail="\n".join(lines),
    )


def _looks_one_based(missing: list[str], extra: list[str], n_outputs: int) -> bool:
    extra_k = {int(m.group("k")) for m in map(RESULT_FILE.match, extra) if m}
    return n_outputs in extra_k and any(name.endswith("_0.bin") for name in missing) and 0 not in extra_k


def find_result_dir(out_dir: str | os.PathLike, name: str | None = None) -> Path:
    """The directory holding ``*_<k>.bin`` results: ``out_dir`` itself, the named subdir, or the only one."""
    out = Path(out_dir)
    if not out.is_dir():
        raise ToolError(f"inference output directory {out} not found: run the infer step first")
    if name is not None:
        chosen = out / name
        if not chosen.is_dir() or not _holds_results(chosen):
            raise ToolError(f"{chosen} holds no result files (<stem>_<k>.bin): check the name or rerun")
        return chosen
    if _holds_results(out):
        return out
    found = sorted(d for d in out.iterdir()
                   if d.is_dir() and not d.name.startswith(".") and _holds_results(d))
    if not found:
        raise ToolError(f"no result directory (with <stem>_<k>.bin files) in {out}: run the infer step first")
    if len(found) > 1:
        names = ", ".join(d.name for d in found)
        raise ToolError(f"{out} holds several result directories ({names}): name the one to use")
    return found[0]


def _holds_results(directory: Path) -> bool:
    with os.scandir(directory) as entries:
        return any(RESULT_FILE.match(e.name) and e.is_file() for e in entries)
