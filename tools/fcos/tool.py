"""FCOS R50-caffe-FPN hooks (upstream: mmdet 2.13.0 + mmcv-full 1.3.10, recipe commit dd0e8ede).

The whole detector, NMS included, runs on the device: the exported graph ends in
``dets`` (B, 100, 5) and ``labels`` (B, 100) (see deploy.py). Target ``ascend`` uses the Ascend
``BatchMultiClassNMS`` custom op as the recipe does; target ``onnx`` uses standard ONNX ops and
may have a dynamic batch axis. Host-side work is only the letterbox preprocessing and undoing it.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from common.contract import check_target
from common.errors import ToolError
from common.fsutil import atomic_path
from common.letterbox import letterbox_pixels, letterbox_tensor
from common.manifest import ManifestEntry
from common.metrics import COCO80_CATEGORY_IDS, coco80_class_index, to_coco_results
from common.spec import load_spec
from common.tensors import np_dtype

SPEC = load_spec(Path(__file__).parent.name)
OUTPUT_NAMES = ("dets", "labels")
OPSET = 11
PARITY_SEED = 0
#: the parity input's stand-in for letterbox padding: a zero band over the left eighth (common.parity)
PARITY_BAND = {"left_band": 8}
#: ONNX Runtime and PyTorch run the same fp32 convolutions up to summation order, so boxes agree
#: to ~1e-3 px and scores to ~1e-6; a box ranked exactly at the 100-per-image cut (or an IoU at
#: the 0.5 NMS boundary) may still flip, so a couple of unmatched boxes per image are tolerated.
PARITY_IOU = 0.99
PARITY_SCORE_ATOL = 1e-4
PARITY_MAX_UNMATCHED = 2


# --------------------------------------------------------------------------- model

def build_detector():
    """mmdet 2.13's FCOS from our config (tools/fcos/config.py), eval mode, weights uninitialised."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mmdet.models import build_detector as mmdet_build

        from tools.fcos.config import model_config

        model = mmdet_build(model_config())
    return model.eval()


def random_checkpoint(path: Path, seed: int = 0) -> Path:
    """Random weights in the published file's format: mmdet v1 ``{"meta", "state_dict"}``, v1 key names."""
    import torch

    from tools.fcos.checkpoint import V1_META_VERSION, downgrade_to_v1_keys, random_state_dict

    model = build_detector()
    state = downgrade_to_v1_keys(random_state_dict(model.state_dict(), seed))
    from mmdet.datasets import CocoDataset

    checkpoint = {
        "meta": {"mmdet_version": V1_META_VERSION, "epoch": 12, "iter": 0,
                 "config": f"# random-weight stand-in (seed {seed}) for {SPEC.weights.filename}\n",
                 "CLASSES": tuple(CocoDataset.CLASSES)},
        "state_dict": state,
    }
    out = Path(path)
    with atomic_path(out) as tmp:
        torch.save(checkpoint, str(tmp))
    return out


def load_model(weights: Path):
    """The upstream detector with the checkpoint's weights (v1 names upgraded, keys checked), eval mode."""
    from common.weights import load_checked, load_state_dict
    from tools.fcos.checkpoint import upgrade_v1_keys

    return load_checked(build_detector(), upgrade_v1_keys(load_state_dict(weights)), weights,
                        variant_hint="another FCOS variant (e.g. the GN head or another class count)")


# --------------------------------------------------------------------------- export

def export(weights: Path, out_path: Path, *, batch: int, target: str, dynamic_batch: bool = False) -> dict:
    """Checkpoint -> final ONNX at ``out_path`` (static, simplified) + parity report vs PyTorch.

    ``dynamic_batch`` (target ``onnx`` only) leaves the batch axis symbolic; parity is still
    checked at ``batch``. The recipe's hand edit of torch (commenting out ``_check_onnx_proto``)
    is the exporter flag ``enable_onnx_checker=False`` (common.customops.export_kwargs).
    """
    import onnx
    import torch

    from common import graph
    from common.customops import export_kwargs
    from common.parity import parity_input
    from tools.fcos.deploy import FCOSDeploy

    check_target(target)
    SPEC.check_batch(batch)
    if dynamic_batch and target == "ascend":
        raise ToolError("dynamic batch is not available for TARGET=ascend: ATC compiles one static batch "
                        "size per .om (export each BATCH separately)")
    c, height, width = SPEC.input.shape
    deploy = FCOSDeploy(load_model(weights), target, (height, width)).eval()
    x = parity_input(SPEC, batch, seed=PARITY_SEED, **PARITY_BAND)
    with torch.no_grad():
        ref_dets, ref_labels = deploy(x)
    name = SPEC.input.name
    dynamic_axes = ({n: {0: "batch"} for n in (name, *OUTPUT_NAMES)} if dynamic_batch else None)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python values in the static head
        torch.onnx.export(deploy, x, buffer, input_names=[name], output_names=list(OUTPUT_NAMES),
                          dynamic_axes=dynamic_axes, do_constant_folding=True, **export_kwargs(OPSET))
    model = onnx.load_from_string(buffer.getvalue())
    if not dynamic_batch:  # onnxsim 0.4.36 asserts on this graph with a symbolic batch axis
        model = graph.simplify(model, {name: [batch, c, height, width]}, name=str(out_path))
    model = graph.select_outputs(model, OUTPUT_NAMES)
    if not dynamic_batch:
        graph.assert_static(model, name=str(out_path))
    graph.save(model, out_path)
    report = parity_report(out_path, x, ref_dets, ref_labels)
    result = report.to_dict()
    result.update({"target": target, "batch": batch, "dynamic_batch": dynamic_batch, "opset": OPSET,
                   "input": {"name": name, "shape": [batch, c, height, width]},
                   "ops": dict(graph.op_types(model))})
    return result


def parity_report(onnx_path: Path, x, ref_dets, ref_labels):
    """Compare the ONNX graph in ONNX Runtime (Ascend ops via their CPU kernels) with PyTorch, per image."""
    from common.parity import ParityReport, compare_detections, run_onnx, to_numpy

    got = run_onnx(onnx_path, {SPEC.input.name: to_numpy(x)})
    ref_dets, ref_labels = to_numpy(ref_dets), to_numpy(ref_labels)
    report = ParityReport(title=f"PyTorch vs ONNX Runtime ({Path(onnx_path).name})")
    for b in range(ref_dets.shape[0]):
        report.add(compare_detections(
            ref_dets[b, :, :4], ref_dets[b, :, 4], ref_labels[b],
            got["dets"][b, :, :4], got["dets"][b, :, 4], got["labels"][b],
            iou_thr=PARITY_IOU, score_atol=PARITY_SCORE_ATOL, name=f"image {b} dets/labels",
            max_unmatched=PARITY_MAX_UNMATCHED))
    return report


# --------------------------------------------------------------------------- pre/post-processing

def preprocess(image_bgr: np.ndarray) -> tuple[np.ndarray, tuple[float, float], tuple[int, int, int, int]]:
    """BGR uint8 image -> (CHW float32 canvas, (scale_x, scale_y), (left, top, right, bottom) padding).

    The recipe's fcos_pth_preprocess.py step for step (sides floored, see model.toml): resize
    bilinear (cv2, as mmcv.imresize), subtract the caffe BGR mean (std 1), zero padding around the
    centred image (zero after normalisation, like mmdet's Pad).
    """
    return letterbox_tensor(image_bgr, SPEC.input)


def pixels(image_bgr: np.ndarray) -> tuple[np.ndarray, tuple[float, float], tuple[int, int, int, int]]:
    """:func:`preprocess` before normalisation, for ``--input uint8`` (AIPP normalises on the NPU)."""
    return letterbox_pixels(image_bgr, SPEC.input)


def postprocess(outputs: list[np.ndarray], entry: ManifestEntry, target: str) -> list[dict]:
    """One image's (dets (100, 5), labels (100,)) -> COCO results in original-image pixels.

    Rows with score 0 are padding. Boxes: minus the padding offset, divided by the per-axis
    scale, clipped to the image. Labels 0..79 map to COCO category ids in ascending order.
    """
    check_target(target)
    if entry.image_id is None:
        raise ToolError(f"manifest entry {entry.stem} has no image_id: "
                        "preprocess a COCO dataset (with annotations)")
    if len(outputs) != 2:
        raise ToolError(f"{entry.stem}: FCOS has 2 outputs (dets, labels), got {len(outputs)}")
    dets = np.asarray(outputs[0], np.float64).reshape(-1, 5)
    labels = np.asarray(outputs[1]).reshape(-1)
    keep = dets[:, 4] > 0
    dets, labels = dets[keep], labels[keep]
    sx, sy = entry.axis_scales()
    left, top = entry.pad[0], entry.pad[1]
    width, height = entry.orig_size
    boxes = dets[:, :4].copy()
    boxes[:, 0::2] = np.clip((boxes[:, 0::2] - left) / sx, 0, width)
    boxes[:, 1::2] = np.clip((boxes[:, 1::2] - top) / sy, 0, height)
    return to_coco_results(entry.image_id, boxes, dets[:, 4], labels, COCO80_CATEGORY_IDS)


def oracle_outputs(anns: list[dict], entry: ManifestEntry, target: str) -> list[np.ndarray]:
    """The (dets, labels) a perfect model would output for these ground-truth annotations.

    Inverse of :func:`postprocess`: COCO boxes -> canvas pixels, COCO category id -> class index
    (its place in COCO80_CATEGORY_IDS; any other id is refused, naming the annotation), score 1,
    at most 100 per image (crowd regions are skipped: COCO ignores detections on them).
    """
    check_target(target)
    specs = SPEC.outputs_for(target)
    dets = np.zeros(specs[0].shape, np_dtype(specs[0].dtype))
    labels = np.zeros(specs[1].shape, np_dtype(specs[1].dtype))
    sx, sy = entry.axis_scales()
    left, top = entry.pad[0], entry.pad[1]
    objects = [a for a in anns if not a.get("iscrowd")][: dets.shape[0]]
    for i, ann in enumerate(objects):
        x, y, w, h = (float(v) for v in ann["bbox"])
        dets[i] = (x * sx + left, y * sy + top, (x + w) * sx + left, (y + h) * sy + top, 1.0)
        labels[i] = coco80_class_index(ann, "FCOS")
    return [dets, labels]
