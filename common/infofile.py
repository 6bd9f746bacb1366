"""The published ``.info`` formats (get_info.py), so existing Ascend scripts and the old
``benchmark`` tool can consume our datasets.

- bin mode: one line per tensor file: ``{index} {bin_path} {W} {H}`` (W, H = model input size)
- jpg mode: one line per image: ``{index} {img_path} {width} {height}`` (true image size)

The original numbers lines per extension group and so repeats indices; ours number all
lines 0..n-1 once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from common.errors import ToolError
from common.fsutil import write_text_atomic


@dataclass(frozen=True)
class InfoLine:
    index: int
    path: str
    width: int
    height: int

    @property
    def stem(self) -> str:
        return Path(self.path).stem


def write_info(path: str | os.PathLike, items: Iterable[tuple[str, int, int]]) -> int:
    """Write ``(file, width, height)`` items as an .info file; returns the number of lines."""
    items = list(items)
    for f, _, _ in items:
        check_info_path(f)
    lines = [f"{i} {f} {w} {h}" for i, (f, w, h) in enumerate(items)]
    write_text_atomic(path, "".join(line + "\n" for line in lines))
    return len(lines)


def check_info_path(path: str | os.PathLike) -> None:
    """Refuse a path the space-separated .info format cannot hold (callers check before long work)."""
    if any(c.isspace() for c in str(path)):
        raise ToolError(f"path '{path}' contains whitespace, which the .info format cannot hold: rename or "
                        "move it (or choose another OUT)")


def write_bin_info(path: str | os.PathLike, bin_files: Iterable[str | os.PathLike], width: int, height: int) -> int:
    """bin mode: every tensor file with the model's input W and H."""
    return write_info(path, [(str(f), width, height) for f in bin_files])


def read_info(path: str | os.PathLike) -> list[InfoLine]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ToolError(f"info file {p} not found") from None
    except UnicodeDecodeError:
        raise ToolError(f"info file {p} is not text: regenerate it") from None
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        parts = raw.split()
        try:
            index, file, width, height = parts
            out.append(InfoLine(int(index), file, int(width), int(height)))
        except ValueError:
            raise ToolError(f"{p}:{n}: expected 'index path width height', got '{raw.strip()}'") from None
    return out
