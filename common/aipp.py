"""uint8 inputs normalised on the NPU: ATC's static AIPP config, its CPU reference, and the same
arithmetic as an ONNX prologue for onnxruntime.

Feeding float32 canvases costs 4 bytes per pixel written, stored and read back (FCOS: 12.8 MB
per image, the disk is the wall) plus the host's float work. With ``INPUT=uint8`` the data step
writes the resized, letterboxed image as uint8 HWC in the decoder's BGR order, and the model
normalises it:

- on Ascend, ATC inserts an AIPP stage from the config written here (``--insert_op_conf``).
  For ``input_format: RGB888_U8`` with ``csc_switch: false`` the documented arithmetic per output
  channel ``c`` is ``(pixel[c] - mean_chn_c - min_chn_c) * var_reci_chn_c``, after swapping the
  first and third channels when ``rbuv_swap_switch`` is true. ``mean_chn`` is an integer, so the
  data file's mean is split into its integer part and a fractional ``min_chn``;
- in onnxruntime, :func:`add_uint8_prologue` prepends Cast/Gather/Sub/Mul/Transpose nodes doing
  the same arithmetic to the exported graph (input ``<name>`` becomes uint8 NHWC).

:func:`reference_aipp` is that documented arithmetic in NumPy; tests check the generated config
(parsed back from its text) and the prologue against it and against the float data path.

One difference is by construction: the float paths of the letterbox tools pad with 0 *after*
normalisation, which no uint8 value gives. The uint8 canvas is filled with the pixel value nearest
the mean (:func:`fill_pixel_bgr`), so a padded pixel becomes ``(round(mean) - mean) / std``
(at most ``0.5 / std`` away from 0) instead of 0. EfficientDet already fills its canvas with a
pixel value before normalising, so its uint8 path is exact everywhere.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import ToolError
from common.fsutil import run_main
from common.spec import InputSpec, ModelSpec

#: ``INPUT=`` values: ``float`` (the tool's own preprocessing, what the recipes feed) or ``uint8``
INPUT_FORMATS = ("float", "uint8")


@dataclass(frozen=True)
class AippParams:
    """The static AIPP fields this project sets, per output channel (the model's colour order)."""

    height: int
    width: int
    swap_rb: bool  # rbuv_swap_switch: the model wants RGB, the uint8 canvas is BGR
    mean_chn: tuple[int, int, int]
    min_chn: tuple[float, float, float]
    var_reci_chn: tuple[float, float, float]


def check_input_format(value: str) -> str:
    """``value`` if it is one of :data:`INPUT_FORMATS`, else the error a user sees for ``INPUT=...``."""
    if value not in INPUT_FORMATS:
        raise ToolError(f"unknown INPUT '{value}' (valid: {', '.join(INPUT_FORMATS)})")
    return value


def pixel_mean_std(spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std in 0..255 pixel units, in the model's colour order (``mean_std_scale`` applied)."""
    if len(spec.mean) != 3 or len(spec.std) != 3:
        raise ToolError(f"input '{spec.name}': uint8 input needs 3 mean and 3 std values in the data file")
    scale = float(spec.mean_std_scale)
    return np.asarray(spec.mean, np.float64) * scale, np.asarray(spec.std, np.float64) * scale


def aipp_params(spec: InputSpec) -> AippParams:
    """The AIPP settings equivalent to the data file's normalisation."""
    if spec.color not in ("BGR", "RGB"):
        raise ToolError(f"input '{spec.name}' has colour order {spec.color}: AIPP here handles BGR and RGB")
    if spec.layout != "NCHW" or spec.shape[0] != 3:
        raise ToolError(f"input '{spec.name}' is {spec.layout} {list(spec.shape)}: AIPP here takes "
                        "3-channel NCHW models")
    mean, std = pixel_mean_std(spec)
    whole = np.floor(mean)
    return AippParams(
        height=spec.height, width=spec.width, swap_rb=spec.color == "RGB",
        mean_chn=tuple(int(m) for m in whole), min_chn=tuple(float(f) for f in mean - whole),
        var_reci_chn=tuple(float(v) for v in 1.0 / std),
    )


def fill_pixel_bgr(spec: InputSpec) -> np.ndarray:
    """The uint8 BGR value a letterbox canvas is filled with: the mean, rounded (see module docstring)."""
    mean, _ = pixel_mean_std(spec)
    model_order = np.clip(np.floor(mean + 0.5), 0, 255).astype(np.uint8)
    return model_order[::-1].copy() if spec.color == "RGB" else model_order


def aipp_config(params: AippParams) -> str:
    """The ``--insert_op_conf`` file for ATC (static AIPP, RGB888_U8, no colour-space conversion)."""
    lines = ["aipp_op {", "    aipp_mode : static", "    related_input_rank : 0",
             "    input_format : RGB888_U8",
             f"    src_image_size_w : {params.width}", f"    src_image_size_h : {params.height}",
             "    crop : false", "    csc_switch : false",
             f"    rbuv_swap_switch : {'true' if params.swap_rb else 'false'}"]
    for c in range(3):
        lines.append(f"    mean_chn_{c} : {params.mean_chn[c]}")
    for c in range(3):
        lines.append(f"    min_chn_{c} : {params.min_chn[c]!r}")
    for c in range(3):
        lines.append(f"    var_reci_chn_{c} : {params.var_reci_chn[c]!r}")
    return "\n".join(lines + ["}"]) + "\n"


def parse_aipp_config(text: str) -> AippParams:
    """Read back the fields :func:`aipp_config` writes (what ATC will read from the file)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    try:
        return AippParams(
            height=int(fields["src_image_size_h"]), width=int(fields["src_image_size_w"]),
            swap_rb=fields["rbuv_swap_switch"] == "true",
            mean_chn=tuple(int(fields[f"mean_chn_{c}"]) for c in range(3)),
            min_chn=tuple(float(fields[f"min_chn_{c}"]) for c in range(3)),
            var_reci_chn=tuple(float(fields[f"var_reci_chn_{c}"]) for c in range(3)),
        )
    except (KeyError, ValueError) as err:
        raise ToolError(f"AIPP config lacks or mangles field {err}") from None


def reference_aipp(pixels_nhwc: np.ndarray, params: AippParams) -> np.ndarray:
    """AIPP's documented arithmetic on CPU: uint8 NHWC (BGR) -> float32 NCHW in the model's order."""
    x = np.asarray(pixels_nhwc)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (params.height, params.width, 3):
        raise ToolError(f"AIPP input must be uint8 (N, {params.height}, {params.width}, 3), "
                        f"got {x.dtype} {list(x.shape)}")
    if params.swap_rb:
        x = x[..., ::-1]
    mean = np.asarray(params.mean_chn, np.float32) + np.asarray(params.min_chn, np.float32)
    out = (x.astype(np.float32) - mean) * np.asarray(params.var_reci_chn, np.float32)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def add_uint8_prologue(model, params: AippParams):
    """A copy of ``model`` whose single input takes uint8 NHWC BGR and is normalised in-graph as
    :func:`reference_aipp` does (for onnxruntime; ATC gets the original graph plus the config)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from common import graph

    model = onnx.ModelProto.FromString(model.SerializeToString())
    names = graph.input_names(model)
    if len(names) != 1:
        raise ToolError(f"the model has {len(names)} inputs: the uint8 prologue takes single-input models")
    name = names[0]
    value = next(i for i in model.graph.input if i.name == name)
    if value.type.tensor_type.elem_type == TensorProto.UINT8:
        raise ToolError(f"input '{name}' is already uint8: the prologue was added before")
    batch = value.type.tensor_type.shape.dim[0]
    inner = f"{name}__normalised"
    for node in model.graph.node:
        node.input[:] = [inner if i == name else i for i in node.input]
    order = [2, 1, 0] if params.swap_rb else [0, 1, 2]
    mean = np.asarray(params.mean_chn, np.float32) + np.asarray(params.min_chn, np.float32)
    consts = [numpy_helper.from_array(np.asarray(order, np.int64), f"{name}__channel_order"),
              numpy_helper.from_array(mean.reshape(1, 1, 1, 3), f"{name}__mean"),
              numpy_helper.from_array(np.asarray(params.var_reci_chn, np.float32).reshape(1, 1, 1, 3),
                                      f"{name}__var_reci")]
    nodes = [
        helper.make_node("Cast", [name], [f"{name}__f32"], to=TensorProto.FLOAT, name=f"{name}__cast"),
        helper.make_node("Gather", [f"{name}__f32", f"{name}__channel_order"], [f"{name}__ordered"], axis=3,
                         name=f"{name}__swap"),
        helper.make_node("Sub", [f"{name}__ordered", f"{name}__mean"], [f"{name}__centred"], name=f"{name}__sub"),
        helper.make_node("Mul", [f"{name}__centred", f"{name}__var_reci"], [f"{name}__scaled"],
                         name=f"{name}__mul"),
    ]
    elem_type = value.type.tensor_type.elem_type
    if elem_type == TensorProto.FLOAT:
        nodes.append(helper.make_node("Transpose", [f"{name}__scaled"], [inner], perm=[0, 3, 1, 2],
                                      name=f"{name}__nchw"))
    else:  # e.g. PSPNet's float16 input (--input_fp16_nodes): normalise in float32, then cast as AIPP does
        nodes += [helper.make_node("Transpose", [f"{name}__scaled"], [f"{name}__nchw32"], perm=[0, 3, 1, 2],
                                   name=f"{name}__nchw"),
                  helper.make_node("Cast", [f"{name}__nchw32"], [inner], to=elem_type, name=f"{name}__to_input_type")]
    model.graph.initializer.extend(consts)
    old_nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes + old_nodes)
    new_input = helper.make_tensor_value_info(name, TensorProto.UINT8, [None, params.height, params.width, 3])
    new_input.type.tensor_type.shape.dim[0].CopyFrom(batch)
    value.CopyFrom(new_input)
    return model


def uint8_onnx_path(onnx_path: Path) -> Path:
    """``fcos_ascend_bs1.onnx`` -> ``fcos_ascend_bs1_uint8.onnx``."""
    return onnx_path.with_name(f"{onnx_path.stem}_uint8{onnx_path.suffix}")


def write_uint8_onnx(spec: ModelSpec, onnx_path: Path, out_path: Path | None = None, *, force: bool = False) -> Path:
    """The exported ONNX with the uint8 prologue, beside it (its export record copied too)."""
    import shutil

    from common import graph
    from common.exportrecord import export_record_path

    out_path = out_path or uint8_onnx_path(onnx_path)
    if not onnx_path.is_file():
        raise ToolError(f"ONNX model {onnx_path} not found: export it first (make {spec.name}-onnx)")
    if out_path.exists() and not force:
        raise ToolError(f"{out_path} already exists: pass --force to overwrite it")
    graph.save(add_uint8_prologue(graph.load(onnx_path), aipp_params(spec.input)), out_path)
    record = export_record_path(onnx_path)
    if record.is_file():
        shutil.copyfile(record, export_record_path(out_path))
    return out_path


def main(argv: list[str] | None = None) -> int:
    """``python -m common.aipp``: print a model's AIPP config, or write its uint8 ONNX for onnxruntime."""
    from common.spec import MODELS

    parser = argparse.ArgumentParser(prog="python -m common.aipp", description=main.__doc__)
    parser.add_argument("command", choices=("config", "onnx"))
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--onnx", type=Path, help="(onnx) the exported float ONNX")
    parser.add_argument("--out", type=Path, help="(onnx) where to write it (default: beside, *_uint8.onnx)")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    return run_main(lambda: _command(args), args.out)


def _command(args) -> str:
    from common.spec import load_spec

    spec = load_spec(args.model)
    if args.command == "config":
        return aipp_config(aipp_params(spec.input)).rstrip("\n")
    if args.onnx is None:
        raise ToolError("onnx needs --onnx (the exported float ONNX)")
    return str(write_uint8_onnx(spec, args.onnx, args.out, force=args.force))

if __name__ == "__main__":
    sys.exit(main())
