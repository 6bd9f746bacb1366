"""Mask R-CNN R101-FPN 3x hooks (upstream: detectron2 v0.5 sources, the recipe's config and weights).

The whole detector, masks included, runs on the device (tools/maskrcnn/deploy.py): the graph
ends in ``boxes``, ``scores``, ``classes`` and ``masks`` (the predicted class's 28x28 mask). The
host resizes the image (shortest edge 800, longest at most 1333, top-left in a 1344x1344 canvas),
and afterwards scales the boxes back, pastes each 28x28 mask into the image with detectron2's
rule (common/masks.py) and encodes it as RLE for COCO bbox + segm evaluation.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from common.contract import check_target
from common.errors import ToolError
from common.manifest import ManifestEntry
from common.masks import masks_to_rle, paste_masks_detectron2
from common.metrics import COCO80_CATEGORY_IDS, to_coco_results
from common.spec import load_spec
from common.tensors import np_dtype

SPEC = load_spec(Path(__file__).parent.name)
OUTPUT_NAMES = ("boxes", "scores", "classes", "masks")
OPSET = 11
#: detectron2's ResizeShortestEdge for this config (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST), the recipe's 800 / 1333
SHORT_EDGE = 800
MAX_SIZE = 1333
MASK_THRESHOLD = 0.5
PARITY_SEED = 0
#: PyTorch and ONNX Runtime run the same fp32 network up to summation order: boxes agree to ~1e-3
#: px, scores to ~1e-6; a detection whose score sits at the 100-per-image cut, or an IoU at an NMS
#: threshold, may still flip, so a few unmatched detections per image are tolerated.
PARITY_IOU = 0.99
PARITY_SCORE_ATOL = 1e-4
PARITY_MAX_UNMATCHED = 3
#: matched detections' 28x28 mask probabilities
PARITY_MASK_ATOL = 1e-3


# --------------------------------------------------------------------------- model

def canvas_hw() -> tuple[int, int]:
    return int(SPEC.input.shape[1]), int(SPEC.input.shape[2])


def build_detector():
    """detectron2's GeneralizedRCNN for the recipe's config (eval mode, initial weights)."""
    from tools.maskrcnn import d2

    return d2.build_model(d2.config(SHORT_EDGE, MAX_SIZE))


def random_state_dict(model, seed: int) -> dict:
    """Random weights with a stable forward pass and many confident detections.

    detectron2's own initialisation gives ~uniform class scores (below the 0.05 threshold: no
    detections) and masks at sigmoid(0) = 0.5 everywhere (every pixel on the threshold). So:
    residual branches are damped (stable activations through 33 blocks), FrozenBN statistics are
    randomised (they exist in the real file and must be read), class logits get spread-out weights
    and a low background bias (dozens of detections above 0.05), mask logits get large weights
    (probabilities away from 0.5, so a pasted mask is well defined).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for key, value in state.items():
        if key.endswith("norm.running_mean"):
            value.normal_(0.0, 0.1, generator=gen)
        elif key.endswith("norm.running_var"):
            value.uniform_(0.5, 1.5, generator=gen)
        elif key.endswith("norm.bias"):
            value.normal_(0.0, 0.1, generator=gen)
        elif key.endswith("conv3.norm.weight"):
            value.uniform_(0.05, 0.15, generator=gen)
    heads = "roi_heads."
    # box head features have an rms of ~10 over 1024 channels: std 0.004 spreads the logits by ~1.3
    state[heads + "box_predictor.cls_score.weight"].normal_(0.0, 0.004, generator=gen)
    bias = state[heads + "box_predictor.cls_score.bias"]
    bias.uniform_(0.0, 2.0, generator=gen)
    bias[-1] = -4.0
    # mask features: rms ~9 over 256 channels; std 0.05 gives logits of ~+-7
    state[heads + "mask_head.predictor.weight"].normal_(0.0, 0.05, generator=gen)
    return state


def random_checkpoint(path: Path, seed: int = 0) -> Path:
    """Random weights in the model zoo's .pkl format (``{"model": numpy arrays, "__author__"}``)."""
    import torch

    from tools.maskrcnn.checkpoint import write_pkl

    torch.manual_seed(seed)
    model = build_detector()
    return write_pkl(random_state_dict(model, seed), Path(path))


def load_model(weights: Path):
    """detectron2's model with the checkpoint's weights (strict key and shape check), eval mode."""
    import torch

    from common.weights import load_checked
    from tools.maskrcnn.checkpoint import check_config_buffers, read_pkl

    model = build_detector()
    state = check_config_buffers(read_pkl(Path(weights)), model.pixel_mean.reshape(-1).tolist(),
                                 model.pixel_std.reshape(-1).tolist(), Path(weights))
    tensors = {k: torch.as_tensor(np.asarray(v)) for k, v in state.items()}
    return load_checked(model, tensors, weights,
                        variant_hint="another detectron2 model (R50, another head or class count?)")


# --------------------------------------------------------------------------- export

def export(weights: Path, out_path: Path, *, batch: int, target: str, dynamic_batch: bool = False) -> dict:
    """Checkpoint -> static ONNX at ``out_path`` for ``target`` + parity report vs PyTorch.

    The graph is :class:`tools.maskrcnn.deploy.MaskRCNNDeploy` traced at the canvas size; the
    recipe's hand edit of torch (skipping the ONNX checker, which rejects the Ascend ops) is the
    exporter flag (common.customops.export_kwargs). Output names are the graph's own, so ATC's
    out nodes come from them (never the recipe's node ids).
    """
    import onnx
    import torch

    from common import graph
    from common.customops import export_kwargs
    from tools.maskrcnn.deploy import MaskRCNNDeploy

    check_target(target)
    SPEC.check_batch(batch)
    if dynamic_batch:
        raise ToolError("dynamic batch is not available for Mask R-CNN: the recipe and this graph are batch 1")
    c, height, width = SPEC.input.shape
    deploy = MaskRCNNDeploy(load_model(weights), target, (height, width)).eval()
    x = parity_tensor(seed=PARITY_SEED)
    with torch.no_grad():
        ref = [o.numpy() for o in deploy(x)]
    name = SPEC.input.name
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python values in the static glue
        torch.onnx.export(deploy, x, buffer, input_names=[name], output_names=list(OUTPUT_NAMES),
                          do_constant_folding=True, **export_kwargs(OPSET))
    model = onnx.load_from_string(buffer.getvalue())
    model = graph.select_outputs(model, OUTPUT_NAMES)
    graph.save(model, out_path)
    report = parity_report(out_path, x, ref)
    result = report.to_dict()
    result.update({"target": target, "batch": batch, "dynamic_batch": False, "opset": OPSET,
                   "input": {"name": name, "shape": [batch, c, height, width]},
                   "detections": int((ref[1] > 0).sum()), "ops": dict(graph.op_types(model))})
    return result


def parity_tensor(seed: int = 0):
    """A (1, 3, H, W) canvas like a preprocessed photo: blocky random colours (objects the random
    detector reacts to), a zero band at the bottom and right standing in for the padding."""
    import torch

    _, height, width = SPEC.input.shape
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (-(-height // 16), -(-width // 16), 3))
    pixels = np.kron(cells, np.ones((16, 16, 1)))[:height, :width].astype(np.uint8)
    tensor, _, _ = preprocess(pixels[: height * 7 // 8, : width * 7 // 8])
    return torch.from_numpy(tensor[None])


def parity_report(onnx_path: Path, x, ref: list[np.ndarray], *, iou: float = PARITY_IOU,
                  score_atol: float = PARITY_SCORE_ATOL, mask_atol: float = PARITY_MASK_ATOL):
    """The ONNX graph in ONNX Runtime (Ascend ops via their CPU kernels) vs the PyTorch forward:
    detections as sets (boxes, scores, classes), then the 28x28 masks of matched detections.
    The tolerances default to the export's; ``INPUT=uint8`` against the float path states its own."""
    from common.parity import ParityReport, compare_arrays, compare_detections, run_onnx, to_numpy

    got = run_onnx(onnx_path, {SPEC.input.name: to_numpy(x)})
    got = [got[n] for n in OUTPUT_NAMES]
    report = ParityReport(title=f"PyTorch vs ONNX Runtime ({Path(onnx_path).name})")
    report.add(compare_detections(ref[0][0], ref[1][0], ref[2][0], got[0][0], got[1][0], got[2][0],
                                  iou_thr=iou, score_atol=score_atol, name="boxes/scores/classes",
                                  max_unmatched=PARITY_MAX_UNMATCHED))
    pairs = match_detections(ref[0][0], ref[1][0], ref[2][0], got[0][0], got[1][0], got[2][0], iou)
    report.add(compare_arrays("masks (matched detections)", ref[3][0][[r for r, _ in pairs]],
                              got[3][0][[g for _, g in pairs]], atol=mask_atol, rtol=0.0))
    return report


def match_detections(ref_boxes, ref_scores, ref_labels, got_boxes, got_scores, got_labels,
                     iou_thr: float) -> list[tuple[int, int]]:
    """(ref row, got row) pairs of valid detections with the same class and the highest IoU >= iou_thr,
    greedily by IoU (each row used once)."""
    import torch
    from torchvision.ops import box_iou

    ref_rows, got_rows = np.flatnonzero(ref_scores > 0), np.flatnonzero(got_scores > 0)
    if not len(ref_rows) or not len(got_rows):
        return []
    iou = box_iou(torch.as_tensor(ref_boxes[ref_rows], dtype=torch.float64),
                  torch.as_tensor(got_boxes[got_rows], dtype=torch.float64)).numpy()
    iou[ref_labels[ref_rows][:, None] != got_labels[got_rows][None, :]] = 0.0
    pairs, used_ref, used_got = [], set(), set()
    for a, b in zip(*np.unravel_index(np.argsort(-iou, axis=None, kind="stable"), iou.shape)):
        if iou[a, b] < iou_thr:
            break
        if a not in used_ref and b not in used_got:
            used_ref.add(a)
            used_got.add(b)
            pairs.append((int(ref_rows[a]), int(got_rows[b])))
    return pairs


# --------------------------------------------------------------------------- pre/post-processing

def resized_size(height: int, width: int) -> tuple[int, int]:
    """(new_h, new_w): detectron2's ResizeShortestEdge (the recipe's rule): the short side to
    SHORT_EDGE, then everything down so the long side is at most MAX_SIZE; sides ``int(x + 0.5)``."""
    scale = SHORT_EDGE / min(height, width)
    new_h, new_w = (SHORT_EDGE, scale * width) if height < width else (scale * height, SHORT_EDGE)
    if max(new_h, new_w) > MAX_SIZE:
        shrink = MAX_SIZE / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


def _resized(image_bgr: np.ndarray) -> tuple[np.ndarray, tuple[float, float], tuple[int, int, int, int]]:
    """(the image cv2-resized to :func:`resized_size`, uint8 BGR; scale; bottom/right padding):
    what :func:`preprocess` normalises and :func:`pixels` places on the canvas."""
    import cv2

    img = np.asarray(image_bgr)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or 0 in img.shape:
        raise ToolError(f"preprocess wants a BGR uint8 image (H, W, 3), got {img.dtype} {list(img.shape)}")
    height, width = img.shape[:2]
    new_h, new_w = resized_size(height, width)
    _, canvas_h, canvas_w = SPEC.input.shape
    if new_h > canvas_h or new_w > canvas_w:
        raise ToolError(f"image {width}x{height} resizes to {new_w}x{new_h}, larger than the "
                        f"{canvas_w}x{canvas_h} canvas")
    resized = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return resized, (new_w / width, new_h / height), (0, 0, canvas_w - new_w, canvas_h - new_h)


def preprocess(image_bgr: np.ndarray) -> tuple[np.ndarray, tuple[float, float], tuple[int, int, int, int]]:
    """BGR uint8 image -> (CHW float32 canvas, (scale_x, scale_y), (0, 0, right, bottom) padding).

    The recipe's maskrcnn_pth_preprocess_detectron2.py: cv2 bilinear resize to :func:`resized_size`,
    minus the BGR mean (std 1), zeros to the bottom and right up to the canvas (1344x1344).
    detectron2 itself resizes with PIL (same size, pixels differ by rounding: see README).
    """
    from common.letterbox import normalize

    resized, scale, pad = _resized(image_bgr)
    new_h, new_w = resized.shape[:2]
    c, canvas_h, canvas_w = SPEC.input.shape
    canvas = np.zeros((c, canvas_h, canvas_w), np_dtype(SPEC.input.dtype))
    canvas[:, :new_h, :new_w] = normalize(resized, SPEC.input).transpose(2, 0, 1)
    return canvas, scale, pad


def pixels(image_bgr: np.ndarray) -> tuple[np.ndarray, tuple[float, float], tuple[int, int, int, int]]:
    """:func:`preprocess` before normalisation, for ``--input uint8`` (AIPP normalises on the NPU):
    HWC uint8 BGR, the same resized pixels top-left, the padding filled with the mean rounded to
    whole pixels (104, 116, 124), which normalises to (0.47, -0.28, 0.325) instead of 0."""
    from common.letterbox import pixels_top_left

    resized, scale, pad = _resized(image_bgr)
    return pixels_top_left(resized, SPEC.input), scale, pad


def _scale_xy(entry: ManifestEntry) -> tuple[float, float]:
    scale = entry.scale
    sx, sy = (scale, scale) if isinstance(scale, (int, float)) else (float(scale[0]), float(scale[1]))
    if not (sx > 0 and sy > 0):
        raise ToolError(f"manifest entry {entry.stem} has scale {entry.scale}: rerun the data step")
    return sx, sy


def postprocess(outputs: list[np.ndarray], entry: ManifestEntry, target: str) -> list[dict]:
    """One image's (boxes, scores, classes, masks) -> COCO results with RLE masks, original pixels.

    detectron2's detector_postprocess: rows with score 0 are padding; boxes divided by the
    per-axis scale, clipped to the image, empty ones dropped; each 28x28 mask pasted into the
    image at its box (common.masks.paste_masks_detectron2), threshold 0.5, RLE.
    """
    check_target(target)
    if entry.image_id is None:
        raise ToolError(f"manifest entry {entry.stem} has no image_id: preprocess a COCO dataset (with annotations)")
    if len(outputs) != len(OUTPUT_NAMES):
        raise ToolError(f"{entry.stem}: Mask R-CNN has {len(OUTPUT_NAMES)} outputs ({', '.join(OUTPUT_NAMES)}), "
                        f"got {len(outputs)}")
    boxes = np.asarray(outputs[0], np.float64).reshape(-1, 4)
    scores = np.asarray(outputs[1], np.float64).reshape(-1)
    classes = np.asarray(outputs[2]).reshape(-1)
    masks = np.asarray(outputs[3], np.float32)
    masks = masks.reshape(len(scores), masks.shape[-2], masks.shape[-1])
    sx, sy = _scale_xy(entry)
    width, height = entry.orig_size
    boxes = boxes / np.array([sx, sy, sx, sy])
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    keep = (scores > 0) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    pasted = paste_masks_detectron2(masks[keep], boxes[keep], height, width, MASK_THRESHOLD)
    return to_coco_results(entry.image_id, boxes[keep], scores[keep], classes[keep], COCO80_CATEGORY_IDS,
                           masks_rle=masks_to_rle(pasted))


def oracle_outputs(anns: list[dict], entry: ManifestEntry, target: str) -> list[np.ndarray]:
    """The outputs a perfect Mask R-CNN would give for these ground-truth annotations.

    Built forward from the recipe's geometry, not by inverting :func:`postprocess`: the box is
    the annotation's box times the resize factors of :func:`resized_size` (top-left placement, no
    offset); the mask is the annotation's polygons rasterised at the mask head's 28x28 resolution
    over that box (the target detectron2 trains the head on), so pasting it back loses exactly the
    28x28 resolution. Score 1, at most 100 objects, crowd regions skipped.
    """
    check_target(target)
    specs = SPEC.outputs_for(target)
    outs = [np.zeros(s.shape, np_dtype(s.dtype)) for s in specs]
    width, height = entry.orig_size
    new_h, new_w = resized_size(height, width)
    sx, sy = new_w / width, new_h / height
    if not np.allclose((sx, sy), _scale_xy(entry), rtol=1e-9):
        raise ToolError(f"manifest entry {entry.stem} has scale {entry.scale}, the recipe's resize gives "
                        f"({sx}, {sy}): the data step used other settings")
    objects = [a for a in anns if not a.get("iscrowd")][: outs[1].shape[0]]
    mask_size = outs[3].shape[-1]
    for i, ann in enumerate(objects):
        x, y, w, h = (float(v) for v in ann["bbox"])
        outs[0][i] = (x * sx, y * sy, (x + w) * sx, (y + h) * sy)
        outs[1][i] = 1.0
        outs[2][i] = _class_index(ann)
        outs[3][i] = mask_in_box(ann, (x, y, w, h), height, width, mask_size)
    return outs


def mask_in_box(ann: dict, box_xywh: tuple[float, float, float, float], height: int, width: int,
                size: int) -> np.ndarray:
    """The annotation's mask over its box at size x size: polygons rasterised in box coordinates
    (pycocotools), an RLE mask averaged over each cell (cv2 INTER_AREA)."""
    from pycocotools import mask as mask_utils

    x, y, w, h = box_xywh
    segm = ann.get("segmentation")
    if isinstance(segm, list):
        polys = [[((px - x) * size / w if k % 2 == 0 else (px - y) * size / h) for k, px in enumerate(p)]
                 for p in segm]
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, size, size))
        return mask_utils.decode(rle).astype(np.float32)
    if isinstance(segm, dict):
        import cv2

        rle = mask_utils.frPyObjects(segm, height, width) if isinstance(segm.get("counts"), list) else segm
        full = mask_utils.decode(rle).astype(np.float32)
        crop = full[int(y):int(np.ceil(y + h)), int(x):int(np.ceil(x + w))]
        return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    raise ToolError(f"annotation {ann.get('id')} has no segmentation: the annotation file is not COCO instances")


def _class_index(ann: dict) -> int:
    """The network's class index of a COCO annotation's category id (refused if not one of the 80)."""
    cat = int(ann["category_id"])
    if cat not in COCO80_CATEGORY_IDS:
        raise ToolError(f"annotation {ann.get('id')} has category_id {cat}, which is not one of COCO's 80 "
                        "category ids that Mask R-CNN predicts: the annotation file is not COCO's")
    return COCO80_CATEGORY_IDS.index(cat)
