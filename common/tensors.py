"""Raw tensor files and the dataset manifest.

A preprocessed dataset is a directory of raw ``<stem>.bin`` tensors (C-order, no header,
the layout ais_bench and the old ``benchmark`` tool read) plus ``manifest.json`` recording,
per image, everything postprocessing needs (original size, scale, padding), so nothing is
recomputed downstream.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from common.errors import ToolError
from common.fsutil import atomic_path, read_json, write_json_atomic

MANIFEST_NAME = "manifest.json"
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


@dataclass
class ManifestEntry:
    """One preprocessed image."""

    stem: str
    source: str  # image path as given
    file: str  # tensor file name, relative to the manifest's directory
    orig_size: tuple[int, int]  # original (width, height)
    scale: float | tuple[float, float]  # resized = original * scale (per axis when a pair)
    pad: tuple[int, int, int, int]  # left, top, right, bottom, in model-input pixels
    image_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> ManifestEntry:
        """An entry from its JSON record; ValueError/TypeError/KeyError say which field is wrong
        (postprocessing does arithmetic on these, so a hand-edited value must fail here, not there)."""
        scale = d["scale"]
        return cls(
            stem=_text(d["stem"], "stem"), source=_text(d["source"], "source"), file=_text(d["file"], "file"),
            orig_size=_numbers(d["orig_size"], "orig_size", 2, int, low=1),
            scale=_numbers(scale, "scale", 2, float) if isinstance(scale, list) else _number(scale, "scale", float),
            pad=_numbers(d["pad"], "pad", 4, int, low=0),
            image_id=None if d.get("image_id") is None else _number(d["image_id"], "image_id", int, low=0),
            extra=d.get("extra", {}),
        )


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} {value!r} is not a non-empty string")
    return value


def _number(value: Any, what: str, kind: type, *, low: float | None = None) -> Any:
    """``value`` when it is a finite number of ``kind`` (an int is a valid float), else ValueError.

    ``low`` is the smallest valid value; without it the value must be > 0 (a scale)."""
    ok_types = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types) or not np.isfinite(value):
        raise ValueError(f"{what} {value!r} is not {'an integer' if kind is int else 'a number'}")
    if (value < low) if low is not None else (value <= 0):
        raise ValueError(f"{what} {value!r} is out of range")
    return value


def _numbers(value: Any, what: str, count: int, kind: type, *, low: float | None = None) -> tuple:
    if not isinstance(value, list) or len(value) != count:
        raise ValueError(f"{what} {value!r} is not a list of {count} numbers")
    return tuple(_number(v, what, kind, low=low) for v in value)


@dataclass
class Manifest:
    """What a preprocessing run produced; written last, atomically, as ``manifest.json``."""

    model: str
    input_name: str
    dtype: str
    shape: tuple[int, ...]  # per-image tensor shape (C, H, W)
    entries: list[ManifestEntry] = field(default_factory=list)
    #: images left out with ``--skip-bad``: [{"source": ..., "reason": ...}]
    skipped: list[dict[str, str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. annotation file, versions

    @property
    def partial(self) -> bool:
        return bool(self.skipped)

    def by_stem(self) -> dict[str, ManifestEntry]:
        return {e.stem: e for e in self.entries}

    def tensor_path(self, root: str | os.PathLike, entry: ManifestEntry) -> Path:
        return Path(root) / entry.file

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / MANIFEST_NAME
        d = asdict(self)
        write_json_atomic(path, d)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Manifest:
        p = Path(directory)
        path = p if p.name == MANIFEST_NAME or p.is_file() else p / MANIFEST_NAME
        if not path.exists():
            raise ToolError(
                f"no {MANIFEST_NAME} in {path.parent}: run the model's data step "
                f"(make <model>-data) first, or let it finish"
            )
        d = read_json(path, what="manifest")
        try:
            return cls(
                model=d["model"], input_name=d["input_name"], dtype=d["dtype"],
                shape=tuple(d["shape"]),
                entries=[_entry(i, e) for i, e in enumerate(d["entries"])],
                skipped=list(d.get("skipped", [])), meta=dict(d.get("meta", {})),
            )
        except KeyError as err:
            raise ToolError(f"manifest {path} is malformed (missing field {err}): rerun the data step with "
                            "--force") from None
        except (TypeError, ValueError) as err:
            raise ToolError(f"manifest {path} is malformed ({err}): rerun the data step with --force") from None


def _entry(index: int, record: Any) -> ManifestEntry:
    """A manifest entry, its errors prefixed with which entry it is."""
    if not isinstance(record, dict):
        raise TypeError(f"entry {index} is not an object")
    try:
        return ManifestEntry.from_dict(record)
    except (TypeError, ValueError) as err:
        raise ValueError(f"entry {index} ({record.get('stem', '?')}): {err}") from None

