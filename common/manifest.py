"""The dataset manifest: ``manifest.json`` beside the preprocessed tensors records, per image,
everything postprocessing needs (original size, scale, padding) and the images left out with the
reason, so nothing is recomputed downstream and a partial set is visible as such.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ToolError
from common.fsutil import read_json, write_json_atomic

MANIFEST_NAME = "manifest.json"


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

    def axis_scales(self) -> tuple[float, float]:
        """(scale_x, scale_y) whichever form the entry holds, for postprocessing that undoes the resize."""
        pair = (self.scale, self.scale) if isinstance(self.scale, numbers.Real) else tuple(self.scale)
        if len(pair) != 2 or not all(isinstance(v, numbers.Real) and v > 0 for v in pair):
            raise ToolError(f"manifest entry {self.stem} has scale {self.scale}: rerun the data step")
        return float(pair[0]), float(pair[1])

    def uniform_scale(self, model: str) -> float:
        """The one scale of a keep-ratio resize with a single factor (refused when the axes differ:
        the entry was written by another model's data step)."""
        sx, sy = self.axis_scales()
        if sx != sy:
            raise ToolError(f"manifest entry {self.stem} has per-axis scale {self.scale}: it was not written by "
                            f"the {model} data step — rerun it")
        return sx


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
