"""Checks every ``INPUT=uint8`` tool suite runs on its own tool (``pixels`` + AIPP against ``preprocess``,
the uint8 ONNX against the float ONNX, the real CLI's data and eval steps), so each suite states only
its tool's geometry and tolerances."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

from common import aipp
from common.manifest import Manifest
from common.parity import run_onnx
from common.resultfiles import result_name
from common.tensors import read_tensor, write_tensor

REPO = Path(__file__).resolve().parents[1]


def blocky_image(height: int, width: int, seed: int) -> np.ndarray:
    """A BGR image of 16-pixel blocks of random colour: edges for the resize to blend, objects the
    random-weight detectors react to."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (-(-height // 16), -(-width // 16), 3))
    return np.kron(cells, np.ones((16, 16, 1)))[:height, :width].astype(np.uint8)


def assert_aipp_equals_float_path(tool: ModuleType, image: np.ndarray) -> None:
    """``tool.pixels`` through AIPP's arithmetic (the config read back from its text) equals
    ``tool.preprocess`` inside the image to float rounding; the padding, 0 in the float tensor, is
    exactly (round(mean) - mean) / std, never further from 0 than that."""
    spec = tool.SPEC.input
    tensor, scale, pad = tool.preprocess(image)
    pixels, scale8, pad8 = tool.pixels(image)
    assert (scale8, pad8) == (scale, pad)
    assert pixels.dtype == np.uint8 and pixels.shape == (spec.height, spec.width, 3) and pixels.flags.writeable
    params = aipp.parse_aipp_config(aipp.aipp_config(aipp.aipp_params(spec)))
    got = aipp.reference_aipp(pixels[None], params)[0]
    left, top, right, bottom = pad
    inside = (slice(None), slice(top, spec.height - bottom), slice(left, spec.width - right))
    np.testing.assert_allclose(got[inside], tensor[inside], rtol=0, atol=1e-5)
    border = np.ones((spec.height, spec.width), bool)
    border[inside[1:]] = False
    assert border.any() == any(pad)
    if border.any():
        mean, std = aipp.pixel_mean_std(spec)
        step = (np.floor(mean + 0.5) - mean) / std
        assert not tensor[:, border].any()
        np.testing.assert_allclose(got[:, border], np.broadcast_to(step[:, None], got[:, border].shape),
                                   rtol=0, atol=1e-5)
        assert np.all(np.abs(got[:, border]) <= np.abs(step)[:, None] + 1e-5)


def assert_uint8_onnx_parity(tool: ModuleType, onnx_path: Path, images: list[np.ndarray], out: Path,
                             **uint8_tolerance) -> list[list[np.ndarray]]:
    """The ONNX with the uint8 prologue (``common.aipp.write_uint8_onnx``) on ``tool.pixels``, judged by
    ``tool.parity_report`` against the float ONNX:

    - on AIPP's float tensor of the same canvas (``reference_aipp``): the export's own tolerances,
      so the prologue computes what AIPP does and nothing else differs;
    - on ``tool.preprocess`` (the recipe's tensor; its padding is 0, not round(mean) - mean):
      ``uint8_tolerance``, the tool's stated tolerance for ``INPUT=uint8``;
    - with the colour order swapped (a real mistake): the same ``uint8_tolerance`` must fail,
      so it is not too loose to see one.

    Returns the float path's outputs per image."""
    spec = tool.SPEC
    u8_onnx = aipp.write_uint8_onnx(spec, onnx_path, out / f"{spec.name}_uint8.onnx")
    params = aipp.aipp_params(spec.input)

    def float_outputs(tensor: np.ndarray) -> list[np.ndarray]:
        got = run_onnx(onnx_path, {spec.input.name: tensor})
        return [got[n] for n in tool.OUTPUT_NAMES]

    references = []
    for image in images:
        tensor, _, _ = tool.preprocess(image)
        pixels = tool.pixels(image)[0][None]
        exact = tool.parity_report(u8_onnx, pixels, float_outputs(aipp.reference_aipp(pixels, params)))
        assert exact.ok, exact.to_dict()
        reference = float_outputs(tensor[None])
        report = tool.parity_report(u8_onnx, pixels, reference, **uint8_tolerance)
        print(report.to_dict())
        assert report.ok, report.to_dict()
        swapped = tool.parity_report(u8_onnx, np.ascontiguousarray(pixels[..., ::-1]), reference, **uint8_tolerance)
        assert not swapped.ok
        references.append(reference)
    return references


def _cli(model: str, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", f"tools.{model}", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done


def cli_data_uint8_then_oracle_eval(tool: ModuleType, coco: Path, out: Path) -> tuple[Manifest, dict]:
    """``data --input uint8`` through the real CLI (a subprocess, the model.toml's full-size canvas), its
    files checked (H*W*3 bytes, the padding the fill pixel), ground truth written as the results
    (``tool.oracle_outputs`` from the manifest's entries), then ``eval`` through the CLI: (manifest, report)."""
    spec = tool.SPEC
    prep, results = out / "data_uint8", out / "results"
    _cli(spec.name, "data", "--data", coco, "--out", prep, "--input", "uint8", "--workers", "1")
    manifest = Manifest.load(prep)
    shape = (spec.input.height, spec.input.width, 3)
    assert manifest.dtype == "uint8" and manifest.shape == shape and manifest.meta["input_format"] == "uint8"
    anns = json.loads((coco / "annotations" / "instances_val2017.json").read_text())["annotations"]
    fill = aipp.fill_pixel_bgr(spec.input)
    for entry in manifest.entries:
        assert (prep / entry.file).stat().st_size == int(np.prod(shape))
        pixels = read_tensor(prep / entry.file, "uint8", shape)
        left, top, right, bottom = entry.pad
        border = np.ones(shape[:2], bool)
        border[top:shape[0] - bottom, left:shape[1] - right] = False
        assert (pixels[border] == fill).all()
        own = [a for a in anns if a["image_id"] == entry.image_id]
        for k, array in enumerate(tool.oracle_outputs(own, entry, "ascend")):
            write_tensor(results / result_name(entry.stem, k), array)
    _cli(spec.name, "eval", "--prep", prep, "--results", results, "--out", out / "eval")
    return manifest, json.loads((out / "eval" / "report.json").read_text())
