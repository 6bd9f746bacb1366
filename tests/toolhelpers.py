"""Helpers shared by the tool test suites."""

from __future__ import annotations

import contextlib
import dataclasses
from types import ModuleType


@contextlib.contextmanager
def canvas(tool: ModuleType, height: int, width: int, output_shapes: dict | None = None):
    """Run with ``tool.SPEC``'s input shape set to (3, height, width) and its outputs' spatial shape
    following it where they are (height, width) maps; everything in a tool reads ``tool.SPEC``.
    ``output_shapes`` ({output name: per-image shape}) sets other outputs' shapes too, both targets."""
    original = tool.SPEC
    _, full_h, full_w = original.input.shape
    shapes = output_shapes or {}
    outputs = {target: tuple(dataclasses.replace(o, shape=tuple(shapes[o.name])) if o.name in shapes
                             else dataclasses.replace(o, shape=(height, width)) if tuple(o.shape) == (full_h, full_w)
                             else o for o in specs)
               for target, specs in original.outputs.items()}
    tool.SPEC = dataclasses.replace(original, input=dataclasses.replace(original.input, shape=(3, height, width)),
                                    outputs=outputs)
    try:
        yield tool.SPEC
    finally:
        tool.SPEC = original
