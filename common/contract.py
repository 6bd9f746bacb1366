"""What a tool is: the hooks ``tools/<model>/tool.py`` gives the generic steps in common/.

A tool is a plain module. The generic steps (``common.pipeline``, ``common.demo``,
``common.exportrecord``, the CLI) call only the hooks listed in :class:`Tool`; everything else in
the module is the tool's own business. :func:`load_tool` imports the module and refuses it, naming
the hook, when a required one is missing, so a half-written sixth tool fails at load with a clear
message rather than halfway through a dataset.

What a tool *may* do (a symbolic batch axis, ...) is declared as data in its model.toml
(:class:`common.spec.Capabilities`), never discovered by inspecting the module's functions.

Adding a model: copy a ready tool's folder, rename it, fill in model.toml, implement the hooks.
A tool finds its own data file and CLI name from its folder (``Path(__file__).parent.name``), so a
copy runs as the new model, never silently as the one it was copied from.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, Union, runtime_checkable

import numpy as np

from common.errors import ToolError
from common.manifest import ManifestEntry
from common.spec import ModelSpec

#: export targets every tool takes: ``ascend`` (Ascend custom ops where the model has them, static
#: shapes, what ATC compiles) and ``onnx`` (standard ONNX ops only, runs anywhere)
TARGETS = ("ascend", "onnx")

#: preprocess's scale: one factor, or (x, y) when the sides are resized separately
Scale = Union[float, tuple[float, float]]
#: preprocess's padding in canvas pixels: (left, top, right, bottom)
Padding = tuple[int, int, int, int]


@runtime_checkable
class Tool(Protocol):
    """The hooks of ``tools/<model>/tool.py`` (module-level names), each one a step's only entry."""

    #: the model's data file (``tools/<model>/model.toml``), loaded with :func:`common.spec.load_spec`
    SPEC: ModelSpec

    def random_checkpoint(self, path: Path, seed: int = 0) -> Path:
        """Write a random-weight checkpoint in the *upstream* file format and key layout.

        Tests, ``make demo`` and CI run every step on it, so the loader, export and parity are
        exercised on the same format a user downloads. Deterministic for a given ``seed``.
        """

    def load_model(self, weights: Path) -> Any:
        """The upstream PyTorch model in eval mode, weights loaded with a strict key check
        (:func:`common.weights.load_checked`: missing/unexpected keys named)."""

    def export(self, weights: Path, out_path: Path, *, batch: int, target: str,
               dynamic_batch: bool = False) -> dict:
        """Checkpoint -> ONNX at ``out_path`` (atomically) for ``target`` (one of :data:`TARGETS`).

        Export-time fixes are context managers active only inside this call. Returns the parity
        report (PyTorch vs ONNX Runtime on the same input, :mod:`common.parity`), whose ``ok`` says
        whether the file may be kept. ``dynamic_batch`` is only passed when model.toml declares
        ``[capabilities] dynamic_batch = true``.
        """

    def preprocess(self, image_bgr: np.ndarray) -> tuple[np.ndarray, Scale, Padding]:
        """One decoded BGR uint8 image -> (CHW tensor of ``SPEC.input.shape``, scale, padding).

        Must equal the recipe's preprocessing script on the same image (the published figures
        came from it); scale and padding go into the manifest for :meth:`postprocess`.
        """

    def postprocess(self, outputs: list[np.ndarray], entry: ManifestEntry,
                    target: str) -> Union[list[dict], np.ndarray]:
        """One image's network outputs (batch axis removed, in model.toml's output order) ->
        COCO result dicts in original-image pixels (detectors; with ``segmentation`` RLE for
        instance segmentation), or the class map of the original image (semantic segmentation)."""

    def oracle_outputs(self, truth: Any, entry: ManifestEntry, target: str) -> list[np.ndarray]:
        """The outputs a perfect model would give for one image's ground truth.

        ``truth`` is what the dataset holds for the image: its COCO annotation dicts (category ids
        as in COCO's annotation files) for detectors, its label map for semantic segmentation.
        Fed through :meth:`postprocess` and the evaluator it must score (close to) 100: the test
        that proves the postprocess and the evaluation, independently of any network.
        """


class Uint8InputTool(Tool, Protocol):
    """A tool whose model.toml declares ``[capabilities] uint8_input = true`` also provides this."""

    def pixels(self, image_bgr: np.ndarray) -> tuple[np.ndarray, Scale, Padding]:
        """:meth:`Tool.preprocess` before normalisation: (HWC uint8 BGR canvas of the input's size,
        scale, padding), with the same geometry. The NPU (AIPP) or the ONNX prologue normalises it
        (:mod:`common.aipp`); the padding holds the pixel nearest the mean."""


#: hooks a declared capability requires (capability -> hook)
CAPABILITY_HOOKS = {"uint8_input": "pixels"}

#: the hooks :func:`load_tool` checks for, in the order :class:`Tool` lists them
REQUIRED_HOOKS = ("SPEC", "random_checkpoint", "load_model", "export", "preprocess", "postprocess",
                  "oracle_outputs")


def check_target(target: str) -> str:
    """``target`` if it is one of :data:`TARGETS`, else the error a user sees for ``TARGET=...``."""
    if target not in TARGETS:
        raise ToolError(f"unknown TARGET '{target}' (valid: {', '.join(TARGETS)})")
    return target


def check_tool(module: ModuleType, where: str) -> ModuleType:
    """``module`` if it provides every required hook (callables callable), else a ToolError naming
    the first missing one and ``where`` (the tool's file)."""
    for name in REQUIRED_HOOKS:
        value = getattr(module, name, None)
        if value is None or (name != "SPEC" and not callable(value)):
            raise ToolError(f"{where} lacks the required hook '{name}' (the tool contract: common/contract.py)")
    if not isinstance(module.SPEC, ModelSpec):
        raise ToolError(f"{where}: SPEC must be the model's data file (common.spec.load_spec), "
                        f"not {type(module.SPEC).__name__}")
    for capability, hook in CAPABILITY_HOOKS.items():
        if getattr(module.SPEC.capabilities, capability) and not callable(getattr(module, hook, None)):
            raise ToolError(f"{where} lacks the hook '{hook}' that its model.toml's [capabilities] {capability} "
                            "promises (the tool contract: common/contract.py)")
    return module


def load_tool(model: str) -> Tool:
    """Import ``tools.<model>.tool`` and check it against the contract."""
    from common.spec import MODELS, load_spec

    if model not in MODELS:
        raise ToolError(f"unknown model '{model}' (valid: {', '.join(MODELS)})")
    spec = load_spec(model)
    if spec.status != "ready":
        raise ToolError(f"the {model} tool is {spec.status}: only its data file ({spec.path}) exists so far")
    where = f"tools/{model}/tool.py"
    module = check_tool(importlib.import_module(f"tools.{model}.tool"), where)
    if module.SPEC.path.resolve() != spec.path.resolve():
        # a copied tool still reading the original's data file would run as the other model
        raise ToolError(f"{where}: SPEC is {module.SPEC.path}, not {spec.path}: load the tool's own data "
                        "file (SPEC = load_spec(Path(__file__).parent.name))")
    return module

