"""RetinaMask R-50-FPN hooks (upstream: Ascend ModelZoo's maskrcnn_benchmark port, config
retinanet_mask_R-50-FPN_2x_adjust_std011_ms; our own model code in model.py).

The device runs the recipe's graph: backbone, RetinaNet head, box decoding, the top 1000
(anchor, class) candidates and a mask for each (no NMS). The host does what the recipe's
RetinaMask_postprocess.py does: class-aware NMS (IoU 0.4, keep 100), boxes back to the image,
mask pasting (common.masks.paste_masks_expanded), RLE. Both targets give the same graph except
the Ascend one's RoI Concat, read in float16 (:func:`fix_roi_concat`).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from common.contract import check_target
from common.errors import ToolError
from common.fsutil import atomic_path
from common.manifest import ManifestEntry
from common.metrics import COCO80_CATEGORY_IDS, to_coco_results
from common.spec import load_spec
from common.tensors import np_dtype

SPEC = load_spec(Path(__file__).parent.name)
OUTPUT_NAMES = ("boxes", "labels", "scores", "masks")
_POST = SPEC.raw["postprocess"]
NUM_CLASSES = int(SPEC.raw["model"]["num_classes"])
OPSET = 11
PARITY_SEED = 0
#: fp32 PyTorch vs ONNX Runtime: same kernels up to summation order (boxes agree to ~1e-4 px). A
#: candidate at the top-k cut (rank 1000) may differ. Masks are compared between paired candidates;
#: with TARGET=ascend a RoI coordinate next to a float16 rounding step may round the other way in
#: one runtime (0.5 px above 512), which moves that candidate's mask by a few hundredths: allowed
#: on 1% of the mask values (about ten candidates of 1000).
PARITY_IOU = 0.99
PARITY_SCORE_ATOL = 1e-4
PARITY_MAX_UNMATCHED = 2
PARITY_PAIR_BOX_DIFF = 0.01
PARITY_MASK_ATOL = 1e-3
PARITY_MASK_MISMATCH = 0.01
#: upstream's inference score threshold (RETINANET.INFERENCE_TH): parity reports count candidates above it
INFERENCE_TH = float(SPEC.raw["model"]["inference_threshold"])
#: random checkpoints: class logits over a calibration image get this mean and spread (sigmoid(-3)
#: = 0.047, so about half of the candidates score above INFERENCE_TH and the top ones reach 0.8)
HEAD_LOGIT_MEAN = -3.0
HEAD_LOGIT_STD = 1.5
#: random checkpoints: spread of the raw box codes (divided by 10/10/5/5 when decoded)
BOX_CODE_STD = 1.0
#: random checkpoints: damping of the mask logits, so random masks are soft (not all 0 or 1)
MASK_LOGIT_GAIN = 0.05
#: the iteration the published file was saved at (npu_8P_model_0020001.pth)
PUBLISHED_ITERATION = 20001
ORACLE_SCORE = 1.0


# --------------------------------------------------------------------------- model

def top_k() -> int:
    """Candidates per image the graph returns: the first dimension of the boxes output in model.toml."""
    return int(SPEC.outputs_for("ascend")[0].shape[0])


def build_model():
    """Our RetinaMask graph (model.py), eval mode, weights uninitialised."""
    from tools.retinamask.model import RetinaMask

    return RetinaMask(top_k=top_k()).eval()


def _randomise(model, gen) -> None:
    """He-scaled conv weights and random frozen batch norms whose residual branches stay small,
    so a 50-layer net without trained statistics keeps activations of order one."""
    import torch

    from tools.retinamask.model import FrozenBatchNorm2d

    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                fan_in = module.weight[0].numel() if isinstance(module, torch.nn.Conv2d) else module.in_channels
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.01)
            elif isinstance(module, FrozenBatchNorm2d):
                n = module.weight.numel()
                gain = 0.2 if name.endswith("bn3") else 1.0  # the last norm of a residual branch
                module.weight.copy_((torch.rand(n, generator=gen) * 0.5 + 0.75) * gain)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)


def _calibrate_heads(model, gen) -> None:
    """Re-centre and scale the prediction convs on a calibration image so that random scores spread.

    Untrained, the class logits sit at one value (scores tied, no detection above the inference
    threshold) or saturate; calibrated, about half of the candidates score above 0.05 and the
    parity check compares many real detections. Box codes get a spread of BOX_CODE_STD.
    """
    import torch

    x = (torch.rand((1, 3, 256, 256), generator=gen) * 255.0
         - torch.tensor(SPEC.input.mean).view(1, 3, 1, 1))
    head = model.rpn.head
    with torch.no_grad():
        features = model.backbone(x)
        for tower, conv, mean, std in ((head.cls_tower, head.cls_logits, HEAD_LOGIT_MEAN, HEAD_LOGIT_STD),
                                       (head.bbox_tower, head.bbox_pred, 0.0, BOX_CODE_STD)):
            out = torch.cat([conv(tower(f)).flatten(2) for f in features], dim=2)[0]
            response = out - conv.bias[:, None]  # per output channel, over every cell of every level
            factor = std / float(response.std())
            conv.weight.mul_(factor)
            conv.bias.copy_(mean - response.mean(dim=1) * factor)
        model.mask.predictor.mask_fcn_logits.weight.mul_(MASK_LOGIT_GAIN)


def random_checkpoint(path: Path, seed: int = 0) -> Path:
    """Random weights in the published file's format (maskrcnn_benchmark's Checkpointer, 8-NPU DDP):
    ``{"model": state_dict with "module." prefixes, "optimizer", "scheduler", "iteration"}``."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model()
        gen = torch.Generator().manual_seed(seed)
        _randomise(model, gen)
        _calibrate_heads(model, gen)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    checkpoint = {
        "model": state,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.005, "momentum": 0.9, "weight_decay": 0.0001,
                                                     "params": list(range(len(state)))}]},
        "scheduler": {"milestones": [240000, 320000], "gamma": 0.1, "last_epoch": PUBLISHED_ITERATION},
        "iteration": PUBLISHED_ITERATION,
    }
    out = Path(path)
    with atomic_path(out) as tmp:
        torch.save(checkpoint, str(tmp))
    return out


def strip_module_prefix(state: dict) -> dict:
    """Keys as the model names them: DDP training saved them as ``module.<key>`` (the recipe strips it)."""
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def load_model(weights: Path):
    """Our model with the checkpoint's weights: keys and shapes checked, anchors compared, eval mode."""
    import torch

    from common.weights import load_checked, load_state_dict
    from tools.retinamask.model import ANCHOR_SIZES, ANCHOR_STRIDES, cell_anchors

    model = load_checked(build_model(), strip_module_prefix(load_state_dict(weights)), weights,
                         variant_hint="another RetinaMask/RetinaNet variant (e.g. R-101, or another class count)")
    for name, anchors in model.rpn.anchor_generator.cell_anchors.named_buffers():
        level = int(name)
        expected = torch.from_numpy(cell_anchors(ANCHOR_STRIDES[level], ANCHOR_SIZES[level])).float()
        if not torch.allclose(anchors, expected, atol=1e-3):
            raise ToolError(f"checkpoint {weights}: its level-{level} anchors (rpn.anchor_generator.cell_anchors."
                            f"{level}) differ from {SPEC.raw['model']['config']}'s: another anchor configuration")
    return model


# --------------------------------------------------------------------------- export

def parity_input(batch: int, seed: int = PARITY_SEED):
    """A batch shaped like preprocessed images: uniform pixels minus the mean, zero bands at the
    bottom and the right where the recipe pads."""
    from common.parity import parity_input as generic

    x = generic(SPEC, batch, seed=seed)
    _, height, width = SPEC.input.shape
    x[:, :, height - height // 5:, :] = 0
    x[:, :, :, width - width // 7:] = 0
    return x


def _consumers(model) -> dict[str, list]:
    users: dict[str, list] = {}
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            users.setdefault(name, []).append((node, index))
    return users


#: ops a RoI tensor passes through on its way into RoiAlign (torchvision's symbolic splits it)
_ROI_PATH_OPS = {"Slice", "Squeeze", "Unsqueeze", "Gather", "Cast", "Reshape", "Identity"}


def _feeds_roialign_rois(node, users) -> bool:
    """Whether ``node``'s output reaches a RoiAlign's rois input (index 1) through RoI-path ops only."""
    pending, seen = list(node.output), set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for user, index in users.get(name, []):
            if user.op_type == "RoiAlign" and index == 1:
                return True
            if user.op_type in _ROI_PATH_OPS:
                pending.extend(user.output)
    return False


def fix_roi_concat(model):
    """The recipe's cast_onnx.py fix, found by structure: the Concat that builds the RoIs
    ([batch index, box]) for RoiAlign gets both inputs as float16 (ATC otherwise sees one float16
    and one float32 input and fails), and its result is cast back to float32 for the rest of the
    graph. The recipe picked the node by its exporter name (Concat_742); any other export renames it.
    """
    from onnx import TensorProto

    from common import graph

    users = _consumers(model)
    fixed, count = graph.unify_input_dtypes(model, ("Concat",), TensorProto.FLOAT16, only_mixed=False,
                                            where=lambda n: _feeds_roialign_rois(n, users), keep_output_dtype=True)
    if count != 1:
        raise ToolError(f"expected one RoI Concat feeding RoiAlign in the RetinaMask graph, found {count}: "
                        "the export changed (torch/torchvision differ from tools/retinamask/requirements.txt?)")
    return fixed


def export(weights: Path, out_path: Path, *, batch: int, target: str, dynamic_batch: bool = False) -> dict:
    """Checkpoint -> static ONNX (opset 11, simplified) + parity report vs our PyTorch model.

    Target ``ascend`` also gets :func:`fix_roi_concat`; its PyTorch reference then reads the RoIs
    through float16 too (``Pooler.round_rois_to_fp16``), so parity compares the same computation.
    """
    import onnx
    import torch

    from common import graph

    check_target(target)
    SPEC.check_batch(batch)
    if dynamic_batch:
        raise ToolError("RetinaMask exports static shapes only (the recipe's graph is batch 1)")
    model = load_model(weights)
    model.mask.feature_extractor.pooler.round_rois_to_fp16 = target == "ascend"
    c, height, width = SPEC.input.shape
    x = parity_input(batch)
    with torch.no_grad():
        reference = [t.numpy() for t in model(x)]
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings: shapes are static by design
        torch.onnx.export(model, x, buffer, opset_version=OPSET, input_names=[SPEC.input.name],
                          output_names=list(OUTPUT_NAMES), do_constant_folding=True)
    onnx_model = onnx.load_from_string(buffer.getvalue())
    onnx_model = graph.simplify(onnx_model, {SPEC.input.name: [batch, c, height, width]}, name=str(out_path))
    onnx_model = graph.select_outputs(onnx_model, OUTPUT_NAMES)
    if target == "ascend":
        onnx_model = fix_roi_concat(onnx_model)
    graph.assert_static(onnx_model, name=str(out_path))
    graph.save(onnx_model, out_path)
    report = parity_report(out_path, x.numpy(), reference)
    result = report.to_dict()
    scores = reference[2]
    result.update({"target": target, "batch": batch, "opset": OPSET,
                   "input": {"name": SPEC.input.name, "shape": [batch, c, height, width]},
                   "candidates": int(scores.shape[1]),
                   f"candidates_above_{INFERENCE_TH}": int((scores >= INFERENCE_TH).sum()),
                   "reference": "our PyTorch model (tools/retinamask/model.py)"
                                + (" with RoIs read through float16, as the fixed graph" if target == "ascend" else ""),
                   "ops": dict(graph.op_types(onnx_model))})
    return result


def pair_candidates(ref_boxes: np.ndarray, ref_labels: np.ndarray, got_boxes: np.ndarray,
                    got_labels: np.ndarray, max_box_diff: float = PARITY_PAIR_BOX_DIFF) -> np.ndarray:
    """(n, 2) row pairs (reference, other) of the same candidate: same label, every corner within
    ``max_box_diff`` pixels, closest first.

    Ranks are no identity: zero padding makes whole regions of anchors score exactly alike, and
    two runtimes order (and cut at the k-th) such ties differently, so masks are compared by pair.
    """
    pairs = []
    for label in np.intersect1d(ref_labels, got_labels):
        ri, gi = np.flatnonzero(ref_labels == label), np.flatnonzero(got_labels == label)
        dist = np.abs(ref_boxes[ri][:, None, :].astype(np.float64) - got_boxes[gi][None, :, :]).max(axis=2)
        used_ref, used_got = np.zeros(len(ri), bool), np.zeros(len(gi), bool)
        for flat in np.argsort(dist, axis=None, kind="stable"):
            a, b = divmod(int(flat), len(gi))
            if dist[a, b] > max_box_diff:
                break
            if not (used_ref[a] or used_got[b]):
                used_ref[a] = used_got[b] = True
                pairs.append((ri[a], gi[b]))
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)


def parity_report(onnx_path: Path, x: np.ndarray, reference: Sequence[np.ndarray], *,
                  score_atol: float = PARITY_SCORE_ATOL, pair_box_diff: float = PARITY_PAIR_BOX_DIFF,
                  mask_atol: float = PARITY_MASK_ATOL):
    """ONNX Runtime vs PyTorch per image: the candidates as detection sets, the masks of paired candidates.
    The tolerances default to the export's; ``INPUT=uint8`` against the float path states its own."""
    from common.parity import ParityReport, compare_arrays, compare_detections, run_onnx

    got = run_onnx(onnx_path, {SPEC.input.name: x})
    report = ParityReport(title=f"PyTorch vs ONNX Runtime ({Path(onnx_path).name})")
    for b in range(x.shape[0]):
        ref_boxes, ref_labels, ref_scores, ref_masks = (r[b] for r in reference)
        got_boxes, got_labels = got["boxes"][b], got["labels"][b]
        report.add(compare_detections(ref_boxes, ref_scores, ref_labels, got_boxes, got["scores"][b], got_labels,
                                      iou_thr=PARITY_IOU, score_atol=score_atol,
                                      name=f"image {b} boxes/scores/labels", max_unmatched=PARITY_MAX_UNMATCHED))
        pairs = pair_candidates(ref_boxes, ref_labels, got_boxes, got_labels, pair_box_diff)
        report.add(compare_arrays(f"image {b} masks ({len(pairs)} paired)", ref_masks[pairs[:, 0]],
                                  got["masks"][b][pairs[:, 1]], atol=mask_atol, rtol=0.0,
                                  mismatch_tol=PARITY_MASK_MISMATCH))
    return report


# --------------------------------------------------------------------------- preprocessing

def resized_size(height: int, width: int) -> tuple[float, int, int]:
    """(ratio, new_h, new_w) of the recipe's resize: ratio = canvas / long side, sides
    min(int(side * ratio), canvas) — truncated, so a side can end a pixel short of the canvas."""
    _, canvas_h, canvas_w = SPEC.input.shape
    if canvas_h != canvas_w:
        raise ToolError(f"RetinaMask's canvas is square, model.toml says {canvas_w}x{canvas_h}")
    long_side = width if width > height else height
    ratio = canvas_h / long_side
    return ratio, min(int(height * ratio), canvas_h), min(int(ratio * width), canvas_w)


def _resized(image_bgr: np.ndarray) -> tuple[np.ndarray, float, tuple[int, int, int, int]]:
    """(the image PIL-resized as the recipe does, uint8 BGR; ratio; bottom/right padding): what
    :func:`preprocess` normalises and :func:`pixels` places on the canvas.

    PIL bilinear resize of the RGB image (PIL antialiases when shrinking; cv2 would not), channels
    back to BGR (the script's cvtColor(BGR2RGB) on an RGB array).
    """
    from PIL import Image

    if not isinstance(image_bgr, np.ndarray) or image_bgr.dtype != np.uint8 or image_bgr.ndim != 3 \
            or image_bgr.shape[2] != 3:
        got = getattr(image_bgr, "shape", type(image_bgr).__name__)
        raise ToolError(f"preprocess needs an HxWx3 uint8 BGR image (cv2.imread), got {got}")
    height, width = image_bgr.shape[:2]
    ratio, new_h, new_w = resized_size(height, width)
    _, canvas_h, canvas_w = SPEC.input.shape
    if new_h < 1 or new_w < 1:
        raise ToolError(f"image of {width}x{height} pixels is too thin to resize to {canvas_w}x{canvas_h}: "
                        "leave it out (--skip-bad)")
    rgb = Image.fromarray(np.ascontiguousarray(image_bgr[:, :, ::-1]))
    resized = np.asarray(rgb.resize((new_w, new_h), Image.BILINEAR))[:, :, ::-1]
    return resized, ratio, (0, 0, canvas_w - new_w, canvas_h - new_h)


def preprocess(image_bgr: np.ndarray) -> tuple[np.ndarray, float, tuple[int, int, int, int]]:
    """The recipe's RetinaMask_preprocess.py on a decoded BGR image -> (CHW float32, ratio, padding).

    :func:`_resized`, minus the BGR mean (a Python list in the script, so subtracted in float64
    and rounded to float32 once), std 1, zero padding at the bottom and right.
    """
    resized, ratio, pad = _resized(image_bgr)
    new_h, new_w = resized.shape[:2]
    _, canvas_h, canvas_w = SPEC.input.shape
    canvas = np.zeros((3, canvas_h, canvas_w), dtype=np.float32)
    mean = np.array(SPEC.input.mean, dtype=np.float64).reshape(3, 1, 1)  # the script's list: float64 math
    canvas[:, :new_h, :new_w] = resized.transpose(2, 0, 1).astype(np.float32) - mean
    return canvas, ratio, pad


def pixels(image_bgr: np.ndarray) -> tuple[np.ndarray, float, tuple[int, int, int, int]]:
    """:func:`preprocess` before normalisation, for ``--input uint8`` (AIPP normalises on the NPU):
    HWC uint8 BGR, the same resized pixels top-left, the padding filled with the mean rounded to
    whole pixels (103, 116, 123), which normalises to (0.0199, 0.0535, 0.2283) instead of 0."""
    from common.letterbox import pixels_top_left

    resized, ratio, pad = _resized(image_bgr)
    return pixels_top_left(resized, SPEC.input), ratio, pad


# --------------------------------------------------------------------------- postprocessing

def _entry_ratio(entry: ManifestEntry) -> float:
    scale = entry.scale
    if isinstance(scale, (tuple, list)):
        if len(scale) != 2 or scale[0] != scale[1]:
            raise ToolError(f"manifest entry {entry.stem} has per-axis scale {scale}: it was not written by "
                            f"the {SPEC.name} data step — rerun it")
        scale = scale[0]
    if not scale or scale <= 0:
        raise ToolError(f"manifest entry {entry.stem} has scale {scale}: rerun the {SPEC.name} data step")
    return float(scale)


def _check_outputs(outputs: Sequence[np.ndarray], target: str) -> list[np.ndarray]:
    """One image's four outputs reshaped to model.toml's shapes, or a ToolError naming the mismatch."""
    specs = SPEC.outputs_for(target)
    if len(outputs) != len(specs):
        raise ToolError(f"{SPEC.name} has {len(specs)} outputs per image ({', '.join(o.name for o in specs)}), "
                        f"got {len(outputs)}: the result files belong to another model")
    arrays = []
    for spec, array in zip(specs, outputs):
        array = np.asarray(array)
        if array.size != int(np.prod(spec.shape)):
            raise ToolError(f"output {spec.name} holds {array.size} values, expected {list(spec.shape)}: "
                            "the result files belong to another model or export")
        arrays.append(array.reshape(spec.shape))
    return arrays


def nms_plus_one(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float,
                 limit: int) -> np.ndarray:
    """Indices kept by class-aware greedy NMS, best score first, at most ``limit``.

    The recipe's np_batched_nms: areas and intersections count pixels inclusively (+1), a box is
    dropped when its IoU with a kept box of its class is above ``iou_threshold``. Ties in score
    keep the candidates' order (the graph's rank), which the recipe's unstable argsort leaves open.
    """
    order = np.lexsort((np.arange(len(scores)), -scores))
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    kept: list[int] = []
    kept_by_class: dict[int, list[int]] = {}
    for i in order:
        same = kept_by_class.setdefault(int(labels[i]), [])
        if same:
            other = boxes[same]
            w = np.maximum(0.0, np.minimum(boxes[i, 2], other[:, 2]) - np.maximum(boxes[i, 0], other[:, 0]) + 1)
            h = np.maximum(0.0, np.minimum(boxes[i, 3], other[:, 3]) - np.maximum(boxes[i, 1], other[:, 1]) + 1)
            inter = w * h
            if (inter / (areas[i] + areas[same] - inter) > iou_threshold).any():
                continue
        same.append(int(i))
        kept.append(int(i))
        if len(kept) == limit:
            break
    return np.array(kept, dtype=np.int64)


def postprocess(outputs: list[np.ndarray], entry: ManifestEntry, target: str) -> list[dict]:
    """One image's (boxes, labels, scores, masks) -> COCO results with bbox and segmentation RLE.

    Rows with a score <= 0 or a label outside 1..80 are padding (the graph emits none; oracles do).
    NMS as the recipe; boxes / ratio, clipped to the image; each kept mask pasted with
    maskrcnn_benchmark's Masker rule (common.masks.paste_masks_expanded) and RLE-encoded.
    """
    from common.masks import masks_to_rle, paste_masks_expanded

    check_target(target)
    if entry.image_id is None:
        raise ToolError(f"manifest entry {entry.stem} has no image_id: preprocess a COCO dataset (with annotations)")
    boxes, labels, scores, masks = _check_outputs(outputs, target)
    boxes = boxes.astype(np.float64)
    labels = labels.astype(np.int64)
    scores = scores.astype(np.float64)
    valid = np.flatnonzero((scores > 0) & (labels >= 1) & (labels <= NUM_CLASSES))
    keep = valid[nms_plus_one(boxes[valid], scores[valid], labels[valid], float(_POST["nms_iou"]),
                              int(_POST["max_det_per_image"]))]
    ratio = _entry_ratio(entry)
    width, height = entry.orig_size
    kept_boxes = boxes[keep] / ratio
    kept_boxes[:, 0::2] = np.clip(kept_boxes[:, 0::2], 0, width)
    kept_boxes[:, 1::2] = np.clip(kept_boxes[:, 1::2], 0, height)
    pasted = paste_masks_expanded(masks[keep, 0], kept_boxes, height, width,
                                  threshold=float(_POST["mask_threshold"]))
    return to_coco_results(entry.image_id, kept_boxes, scores[keep], labels[keep] - 1, COCO80_CATEGORY_IDS,
                           masks_to_rle(pasted))


# --------------------------------------------------------------------------- oracle

def _annotation_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """The (height, width) binary mask of a COCO annotation (polygons or RLE), via pycocotools."""
    from pycocotools import mask as mask_utils

    segm = ann.get("segmentation")
    if not segm:
        raise ToolError(f"annotation {ann.get('id')} has no segmentation: the segm oracle needs one")
    if isinstance(segm, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    elif isinstance(segm.get("counts"), list):
        rle = mask_utils.frPyObjects(segm, height, width)
    else:
        rle = segm
    return mask_utils.decode(rle).astype(bool)


def _box_grid_mask(full: np.ndarray, box: Sequence[float], size: int) -> np.ndarray:
    """``full`` sampled at the centres of a size x size grid laid over ``box`` (x1, y1, x2, y2):
    what a perfect mask head would predict for that box."""
    x1, y1, x2, y2 = box
    xs = np.clip(np.floor(x1 + (np.arange(size) + 0.5) * (x2 - x1) / size), 0, full.shape[1] - 1).astype(int)
    ys = np.clip(np.floor(y1 + (np.arange(size) + 0.5) * (y2 - y1) / size), 0, full.shape[0] - 1).astype(int)
    return full[np.ix_(ys, xs)].astype(np.float32)


def oracle_outputs(anns: list[dict], entry: ManifestEntry, target: str,
                   categories: Sequence[int] | None = None) -> list[np.ndarray]:
    """The (boxes, labels, scores, masks) a perfect model would give for one image's annotations.

    Boxes in canvas pixels (COCO box times the ratio), score 1, label = position of the category
    in ``categories`` (the annotation file's ids, sorted; default COCO's 80) plus one, and as mask
    the ground-truth mask sampled on a 28x28 grid over the box. Crowd regions are skipped (COCO
    ignores detections on them); at most as many objects as the graph has candidates.
    """
    check_target(target)
    specs = SPEC.outputs_for(target)
    boxes, labels, scores, masks = (np.zeros(s.shape, np_dtype(s.dtype)) for s in specs)
    ids = sorted(int(c) for c in (categories if categories is not None else COCO80_CATEGORY_IDS))
    ratio = _entry_ratio(entry)
    width, height = entry.orig_size
    objects = [a for a in anns if not a.get("iscrowd")][: boxes.shape[0]]
    for i, ann in enumerate(objects):
        if int(ann["category_id"]) not in ids:
            raise ToolError(f"annotation {ann.get('id')} has category_id {ann['category_id']}, which the "
                            "annotation file's categories do not list")
        x, y, w, h = (float(v) for v in ann["bbox"])
        boxes[i] = (x * ratio, y * ratio, (x + w) * ratio, (y + h) * ratio)
        labels[i] = ids.index(int(ann["category_id"])) + 1
        scores[i] = ORACLE_SCORE
        masks[i, 0] = _box_grid_mask(_annotation_mask(ann, height, width), (x, y, x + w, y + h), masks.shape[-1])
    return [boxes, labels, scores, masks]
