"""Raw tensor files: a preprocessed dataset is a directory of raw ``<stem>.bin`` tensors (C-order,
no header, the layout ais_bench and the old ``benchmark`` tool read) beside its manifest
(:mod:`common.manifest`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from common.errors import ToolError
from common.fsutil import atomic_path

# re-exported: the tools import the manifest types from here
from common.manifest import MANIFEST_NAME, Manifest, ManifestEntry  # noqa: F401

DTYPES = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8,
          "int32": np.int32, "int64": np.int64}


def np_dtype(name: str) -> np.dtype:
    try:
        return np.dtype(DTYPES[name])
    except KeyError:
        raise ToolError(f"unsupported tensor dtype '{name}' (valid: {', '.join(DTYPES)})") from None


def tensor_stem(image_path: str | os.PathLike) -> str:
    """The one name an image's tensor and its results share: the file name without its extension,
    any other dot replaced by ``_`` (``img.v2.final.jpg`` -> ``img_v2_final``).

    ais_bench names a result by the input file's name up to its FIRST dot
    (:func:`common.backends.output_stem`), so a tensor stem must hold no dot for the results to
    carry the stem the manifest records.
    """
    return Path(image_path).stem.replace(".", "_")


def write_tensor(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as a raw C-order .bin, atomically (temp file + rename)."""
    data = np.ascontiguousarray(array)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data.data)  # a Python file write, so a full disk surfaces as ENOSPC


def read_tensor(path: str | os.PathLike, dtype: str, shape: Iterable[int]) -> np.ndarray:
    """Read a raw .bin, refusing a file whose byte size does not match dtype x shape."""
    p = Path(path)
    dt = np_dtype(dtype)
    shape = tuple(int(s) for s in shape)
    expected = int(np.prod(shape)) * dt.itemsize
    try:
        actual = p.stat().st_size
    except FileNotFoundError:
        raise ToolError(f"tensor file {p} not found") from None
    if actual != expected:
        raise ToolError(
            f"tensor file {p} has {actual} bytes, expected {expected} "
            f"({dtype} {list(shape)}): it belongs to another model/batch or is truncated"
        )
    return np.fromfile(p, dtype=dt).reshape(shape)
