"""EfficientDet-D0 hooks (upstream: effdet 0.2.4 = rwightman/efficientdet-pytorch @ c5b694aa).

The device runs only the raw network (5 class + 5 box maps); anchor decoding, top-k and NMS
run on the host in numpy, as in the published recipe. Both export targets get the same graph:
the model has no custom ops.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from common.contract import check_target
from common.customops import iou_one_to_many_unguarded
from common.errors import ToolError
from common.fsutil import atomic_path
from common.letterbox import filled_canvas
from common.metrics import COCO80_CATEGORY_IDS, coco80_class_index
from common.spec import load_spec
from common.tensors import ManifestEntry

SPEC = load_spec(Path(__file__).parent.name)

ARCH: str = SPEC.raw["model"]["arch"]
NUM_CLASSES: int = int(SPEC.raw["model"]["num_classes"])
_ANCHORS = SPEC.raw["anchors"]
_POST = SPEC.raw["postprocess"]
NUM_LEVELS = int(_ANCHORS["max_level"]) - int(_ANCHORS["min_level"]) + 1
ANCHORS_PER_CELL = int(_ANCHORS["num_scales"]) * len(_ANCHORS["aspect_ratios"])

OPSET = 11
PARITY_SEED = 0
#: float32 PyTorch vs ONNX Runtime on CPU: both run the same fp32 kernels up to summation order
PARITY_ATOL = 1e-3
PARITY_RTOL = 1e-3
#: random checkpoints: scale of the prediction layers' weights (class logits spread by about one unit)
HEAD_SPREAD = 18.0
#: random checkpoints: mean class logit on a blank (fill-colour) image; sigmoid(-6) = 0.0025
HEAD_PRIOR_LOGIT = -6.0
#: random checkpoints: scale of the box layer's weights (box codes of a few tenths)
BOX_SPREAD = 5.0
#: oracle logits: sigmoid(10) = 0.99995 (kept), sigmoid(-20) = 2e-9 (below the score threshold)
ORACLE_POSITIVE_LOGIT = 10.0
ORACLE_NEGATIVE_LOGIT = -20.0


# --------------------------------------------------------------------------- model

def _build_model():
    """The upstream network without its bench: (image) -> (5 class maps, 5 box maps)."""
    from effdet import create_model

    return create_model(ARCH, bench_task="", pretrained=False, pretrained_backbone=False)


def random_checkpoint(path: Path, seed: int = 0) -> Path:
    """Random weights saved like the release file: a flat state_dict of the tf_efficientdet_d0 net.

    BatchNorm statistics and affine parameters are randomised too, so parity tests exercise
    the folded batch norms instead of identity ones, and the prediction layers are spread and
    re-centred (``_spread_heads``) so scores depend on the image instead of tying or saturating.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _build_model()
        gen = torch.Generator().manual_seed(seed)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                with torch.no_grad():
                    module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
        _spread_heads(model)
    out = Path(path)
    with atomic_path(out) as tmp:
        torch.save(model.state_dict(), str(tmp))
    return out


def _blank_input():
    """One fill-colour image as the network sees it (what the padding of every image looks like)."""
    import torch

    _, h, w = SPEC.input.shape
    chw = np.broadcast_to(_FILL.astype(np.float32).reshape(3, 1, 1), (3, h, w))
    return torch.from_numpy(((chw - _MEAN255) / _STD255).astype(np.float32))[None]


def _spread_heads(model) -> None:
    """Scale the prediction layers up and centre each class channel at HEAD_PRIOR_LOGIT on a blank image.

    An untrained class head gives the constant prior -4.6 +- 0.1 (every score tied). Scaling its
    weights alone (x20 before) let each channel's constant offset dominate: the top 100 of every
    photo were the same padding cells at 0.89-0.96, hundreds exactly tied. Centring each channel
    on the padding's own response leaves the spread to the image content: on natural-looking
    images the top-100 scores then spread over roughly 0.3-0.65 with almost no ties
    (tests/efficientdet/test_effdet_random_scores.py measures it).
    """
    import torch

    head = model.class_net.predict.conv_pw
    responses = []
    hook = head.register_forward_hook(lambda module, args, out: responses.append(out[0]))
    try:
        with torch.no_grad():
            model.eval()(_blank_input())
    finally:
        hook.remove()
    cells = torch.cat([r.reshape(r.shape[0], -1) for r in responses], dim=1)  # (channels, cells of all levels)
    with torch.no_grad():
        blank_response = cells.mean(dim=1) - head.bias  # per channel, without the bias
        head.weight.mul_(HEAD_SPREAD)
        head.bias.copy_(HEAD_PRIOR_LOGIT - HEAD_SPREAD * blank_response)
        model.box_net.predict.conv_pw.weight.mul_(BOX_SPREAD)


def _refuse_pytorch_variant(state: dict, model, weights: Path) -> None:
    """Name the one likely mix-up before the generic key check lists 36 missing biases.

    The PyTorch-trained ``efficientdet_d0`` has the same keys minus the conv biases that the
    TF-ported ``tf_efficientdet_d0`` carries; only the latter is the recipe's file.
    """
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    got = {k for k in state if not k.endswith("num_batches_tracked")}
    missing = expected - got
    if missing and all(k.endswith(".bias") for k in missing) and not got - expected:
        raise ToolError(
            f"checkpoint {weights} lacks {len(missing)} conv biases of tf_efficientdet_d0: it is an "
            f"efficientdet_d0 (PyTorch-trained) file; use the recipe's tf_efficientdet_d0 weights "
            f"({SPEC.weights.filename})")


def load_model(weights: Path):
    """Build tf_efficientdet_d0 and load a checkpoint safely, refusing any key or shape mismatch."""
    from common.weights import load_checked, load_state_dict

    state = load_state_dict(weights)
    model = _build_model()
    _refuse_pytorch_variant(state, model, weights)
    return load_checked(model, state, weights,
                        variant_hint=f"another EfficientDet variant (D1-D7 or another class count), not {ARCH}")


@contextlib.contextmanager
def same_maxpool_zero_fill() -> Iterator[None]:
    """Make timm's 'SAME' max-pool pad with 0 instead of -inf: the PyTorch twin of the graph fix.

    Ascend limit: ATC cannot take a Pad whose constant is -inf (the fp16 path turns it into
    NaN/overflow), so the exported graph gets 0 there (common.graph.replace_neg_inf_pads), as in the
    published recipe. Used only to compute the PyTorch reference the fixed graph must match.
    """
    import torch.nn.functional as F
    from timm.models.layers import pool2d_same
    from timm.models.layers.padding import pad_same

    cls = pool2d_same.MaxPool2dSame
    original = cls.forward

    def forward(self, x):
        x = pad_same(x, self.kernel_size, self.stride, value=0.0)
        return F.max_pool2d(x, self.kernel_size, self.stride, (0, 0), self.dilation, self.ceil_mode)

    cls.forward = forward
    try:
        yield
    finally:
        cls.forward = original


def _count_same_maxpools(model) -> int:
    from timm.models.layers.pool2d_same import MaxPool2dSame

    return sum(isinstance(m, MaxPool2dSame) for m in model.modules())


def export(weights: Path, out_path: Path, *, batch: int, target: str) -> dict:
    """Checkpoint -> static, simplified ONNX (opset 11) with Pad(-inf) -> Pad(0); returns the parity report.

    Both targets give the same graph (no custom ops). No export-time override is needed: the
    upstream module traces as is; the fixes are applied to the graph.
    """
    import torch

    from common import graph, parity

    check_target(target)
    SPEC.check_batch(batch)
    model = load_model(weights)
    c, h, w = SPEC.input.shape
    input_name = SPEC.input.name
    names = [o.name for o in SPEC.outputs_for(target)]
    with tempfile.TemporaryDirectory(prefix="effdet-export-") as tmp:
        raw_path = Path(tmp) / "raw.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(model, torch.zeros(batch, c, h, w), str(raw_path), opset_version=OPSET,
                              input_names=[input_name], output_names=names, do_constant_folding=True)
        onnx_model = graph.load(raw_path)
    shapes = {input_name: [batch, c, h, w]}
    # torch 1.8 exports each 'SAME' Pad with a Shape/ConstantOfShape chain that trips onnxsim's
    # optimizer when shape inference runs first; a pass without it folds the chains, a second
    # pass with it then fixes every shape (the recipe stopped after the first, leaving dynamic dims).
    onnx_model = graph.simplify(onnx_model, shapes, name=out_path.name, skip_shape_inference=True)
    onnx_model = graph.simplify(onnx_model, shapes, name=out_path.name)
    onnx_model, n_pads = graph.replace_neg_inf_pads(onnx_model, 0.0)
    expected_pads = _count_same_maxpools(model)
    if n_pads != expected_pads:
        raise ToolError(f"{out_path}: found {n_pads} Pad(-inf) nodes, expected {expected_pads} (one per "
                        "'SAME' max-pool): effdet/timm differ from tools/efficientdet/requirements.txt — "
                        "reinstall the pins")
    graph.assert_static(onnx_model)
    graph.save(onnx_model, out_path)

    x = np.random.default_rng(PARITY_SEED).standard_normal((batch, c, h, w)).astype(np.float32)
    with torch.no_grad():
        xt = torch.from_numpy(x)
        with same_maxpool_zero_fill():
            cls_ref, box_ref = model(xt)
        cls_up, box_up = model(xt)
    reference = [t.numpy() for t in (*cls_ref, *box_ref)]
    upstream = [t.numpy() for t in (*cls_up, *box_up)]
    onnx_out = parity.run_onnx(onnx_model, {input_name: x})
    report = parity.check_parity(reference, onnx_out, names=names, atol=PARITY_ATOL,
                                 rtol=PARITY_RTOL).to_dict()
    report.update({
        "model": ARCH, "target": target, "batch": batch, "opset": OPSET,
        "reference": "PyTorch with 'SAME' max-pool padding 0, the semantics of the fixed graph",
        "neg_inf_pads_replaced": n_pads,
        # what the recipe's Pad(-inf) -> 0 fix changes against unmodified upstream (border cells only)
        "pad_fix_max_abs_diff": {n: float(np.max(np.abs(a - b)))
                                 for n, a, b in zip(names, reference, upstream)},
    })
    return report


# --------------------------------------------------------------------------- preprocessing

_MEAN255 = np.array([m * 255 for m in SPEC.input.mean], dtype=np.float32).reshape(3, 1, 1)
_STD255 = np.array([s * 255 for s in SPEC.input.std], dtype=np.float32).reshape(3, 1, 1)
_FILL = np.array(SPEC.raw["preprocess"]["fill"], dtype=np.uint8)


def preprocess(image_bgr: np.ndarray) -> tuple[np.ndarray, float, tuple[int, int, int, int]]:
    """effdet's eval transform on a cv2 BGR image: PIL bilinear resize-pad to 512, mean fill, normalise.

    PIL (not cv2) resizes because PIL's bilinear filter widens with the downscale factor
    (antialiasing) and cv2's INTER_LINEAR does not; with PIL the tensor equals upstream's bit for bit.
    """
    canvas, scale, pad = _canvas(image_bgr, rgb=True)
    chw = canvas.transpose(2, 0, 1).astype(np.float32)
    tensor = ((chw - _MEAN255) / _STD255).astype(SPEC.input.dtype, copy=False)
    return tensor, scale, pad


def pixels(image_bgr: np.ndarray) -> tuple[np.ndarray, float, tuple[int, int, int, int]]:
    """:func:`preprocess` before normalisation, for ``--input uint8`` (AIPP normalises on the NPU):
    the same canvas, mean-filled, in BGR order. Exact: the float path normalises this canvas too."""
    return _canvas(image_bgr, rgb=False)


def _canvas(image_bgr: np.ndarray, *, rgb: bool) -> tuple[np.ndarray, float, tuple[int, int, int, int]]:
    """The 512x512 uint8 canvas (resized image top-left, the rest mean-filled) in RGB or BGR order,
    scale, padding. PIL resamples every channel alike, so BGR is resized as it comes (no swap)."""
    from PIL import Image

    if not isinstance(image_bgr, np.ndarray) or image_bgr.dtype != np.uint8 or image_bgr.ndim != 3 \
            or image_bgr.shape[2] != 3:
        got = getattr(image_bgr, "shape", type(image_bgr).__name__)
        raise ToolError(f"preprocess needs an HxWx3 uint8 BGR image (cv2.imread), got {got}")
    _, th, tw = SPEC.input.shape
    h, w = image_bgr.shape[:2]
    scale = min(th / h, tw / w)
    nh, nw = int(h * scale), int(w * scale)
    if nh < 1 or nw < 1:
        raise ToolError(f"image of {w}x{h} pixels is too thin to resize to {tw}x{th}: "
                        "leave it out (--skip-bad)")
    source = Image.fromarray(np.ascontiguousarray(image_bgr[:, :, ::-1] if rgb else image_bgr))
    fill = _FILL if rgb else _FILL[::-1]
    canvas = filled_canvas(th, tw, tuple(int(v) for v in fill)).copy()  # a memcpy: cheaper than filling
    canvas[:nh, :nw] = np.asarray(source.resize((nw, nh), Image.BILINEAR))
    return canvas, scale, (0, 0, tw - nw, th - nh)


# --------------------------------------------------------------------------- anchors / decoding

def anchor_boxes() -> np.ndarray:
    """All anchors as float32 (N, 4) y1, x1, y2, x2 in model-input pixels, in the heads' order.

    Order: level, then cell (row-major), then (octave scale, aspect ratio) — the order in which
    the class/box maps are flattened (channel = anchor * classes + class).
    """
    _, img_h, img_w = SPEC.input.shape
    min_level, max_level = int(_ANCHORS["min_level"]), int(_ANCHORS["max_level"])
    num_scales = int(_ANCHORS["num_scales"])
    per_level = []
    for level in range(min_level, max_level + 1):
        fh, fw = img_h, img_w
        for _ in range(level):  # feature size as effdet computes it: (size - 1) // 2 + 1 per level
            fh, fw = (fh - 1) // 2 + 1, (fw - 1) // 2 + 1
        stride_y, stride_x = img_h // fh, img_w // fw
        y = np.arange(stride_y / 2, img_h, stride_y)
        x = np.arange(stride_x / 2, img_w, stride_x)
        xv, yv = np.meshgrid(x, y)
        xv, yv = xv.reshape(-1), yv.reshape(-1)
        cell_anchors = []
        for octave in range(num_scales):
            for aspect_x, aspect_y in _ANCHORS["aspect_ratios"]:
                size = float(_ANCHORS["anchor_scale"]) * 2 ** (octave / float(num_scales))
                half_x = size * stride_x * aspect_x / 2.0
                half_y = size * stride_y * aspect_y / 2.0
                cell_anchors.append(np.stack([yv - half_y, xv - half_x, yv + half_y, xv + half_x], axis=1))
        per_level.append(np.stack(cell_anchors, axis=1).reshape(-1, 4))
    return np.concatenate(per_level).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _anchors() -> np.ndarray:
    """anchor_boxes(), computed once per process (it is the same for every image)."""
    return anchor_boxes()


def _check_outputs(outputs: Sequence[np.ndarray], target: str) -> list[np.ndarray]:
    """One image's 10 maps as float32 arrays, refusing wrong counts, shapes or non-finite values."""
    specs = SPEC.outputs_for(target)
    if len(outputs) != len(specs):
        raise ToolError(f"{SPEC.name} expects {len(specs)} outputs per image "
                        f"({', '.join(o.name for o in specs)}), got {len(outputs)}: "
                        "the result files belong to another model")
    arrays = []
    for arr, spec in zip(outputs, specs):
        arr = np.asarray(arr, dtype=np.float32)
        if arr.shape != spec.shape:
            raise ToolError(f"output {spec.name} has shape {arr.shape}, expected {spec.shape} (per image): "
                            "the result files belong to another model or batch")
        if not _all_finite(arr):
            raise ToolError(f"output {spec.name} holds NaN/inf: the model overflowed (on Ascend: check the "
                            "ATC precision_mode and mixlist in model.toml)")
        arrays.append(arr)
    return arrays


def _all_finite(arr: np.ndarray) -> bool:
    """Whether every value is finite, in one BLAS pass: the dot product of the values with themselves is
    finite exactly when they all are (NaN and inf propagate; squares cannot cancel), unless a finite value
    beyond ~1e19 overflows its square, and then the exact check decides. Two passes (max and min) took
    1.5 ms more per image."""
    flat = arr.reshape(-1)
    return bool(np.isfinite(np.dot(flat, flat))) or bool(np.isfinite(flat).all())


def _top_k(values: np.ndarray, k: int, key_of: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Positions of the ``k`` largest values; at the cut, equal values go to the lowest ``key_of(positions)``.

    argpartition alone picks an unspecified subset of the values equal to the k-th largest, so
    which tied candidates enter NMS would depend on the numpy build; the key makes it one answer.
    """
    if values.size <= k:
        return np.arange(values.size)
    kth = values[np.argpartition(-values, k - 1)[k - 1]]
    above = np.flatnonzero(values > kth)
    tied = np.flatnonzero(values == kth)
    return np.concatenate([above, tied[np.argsort(key_of(tied), kind="stable")[:k - above.size]]])


#: every SAMPLE_STRIDE-th logit estimates the top-k threshold (69 k of EfficientDet-D0's 4.4 M)
SAMPLE_STRIDE = 64


def _at_least_top_k(parts: list[np.ndarray], k: int, floor: float | None) -> np.ndarray:
    """Positions, in the concatenation of the 1-D ``parts``, of every value >= some threshold t that keeps
    at least ``k`` of them (all when fewer than ``k`` are >= ``floor``): a superset of the top k and of
    every value tied with the k-th, found in one or two comparison passes instead of a partition of all.

    t starts at a high quantile of a strided sample (an argpartition of 1/64th of the values) and
    falls until at least ``k`` values reach it; the exact top k is then picked among those few. The
    parts are never concatenated (EfficientDet's five maps hold 4.4 M logits: a 17.6 MB copy per image).
    """
    low = -np.inf if floor is None else floor
    starts = np.cumsum([0] + [part.size for part in parts])[:-1]

    def at_least(t: float) -> np.ndarray:
        return np.concatenate([np.flatnonzero(part >= t) + start for part, start in zip(parts, starts)])

    if sum(part.size for part in parts) <= k:
        return at_least(low)
    sample = np.concatenate([part[::SAMPLE_STRIDE] for part in parts])
    rank = 2 * k // SAMPLE_STRIDE + 1
    while rank < sample.size:
        t = max(float(np.partition(sample, sample.size - rank)[sample.size - rank]), low)
        found = at_least(t)
        if found.size >= k or t <= low:
            return found
        rank *= 4
    return at_least(low)


def _gather(parts: list[np.ndarray], positions: np.ndarray) -> np.ndarray:
    """The values at ascending ``positions`` of the concatenation of the 1-D ``parts``, without it."""
    starts = np.cumsum([0] + [part.size for part in parts])
    cuts = np.searchsorted(positions, starts)
    return np.concatenate([part[positions[a:b] - start]
                           for part, start, a, b in zip(parts, starts[:-1], cuts[:-1], cuts[1:])])


def _top_candidates(class_maps: list[np.ndarray], k: int, min_logit: float | None) -> tuple[np.ndarray, ...]:
    """Top-k (anchor, class) logits in the tool's defined order: (anchor index, class index, logit).

    Order rule (also the NMS order): higher logit first; equal logits: lower flat index
    ``anchor * num_classes + class`` (effdet's flattening) first. It needs no float arithmetic
    (sigmoid is monotonic, so it is also descending score order) and no sort stability, so the
    same raw maps give the same detections on every machine. effdet itself orders equal float32
    scores through an unstable sort: among ties its order is undefined, ours is one of its orders.

    Selects in the maps' stored (channel, y, x) order and converts only the winners to effdet's
    (level, y, x, anchor, class) order, instead of transposing 4.4M logits per image. Logits
    below ``min_logit`` can never become detections above the score threshold and are skipped.
    """
    sizes = [m.size for m in class_maps]
    cells = np.array([m.shape[1] * m.shape[2] for m in class_maps])
    raw_starts = np.cumsum([0] + sizes)[:-1]
    anchor_starts = np.cumsum([0] + [c * ANCHORS_PER_CELL for c in cells])[:-1]

    def effdet_index(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw (stored-order) positions -> effdet's (anchor index, class index)."""
        level = np.searchsorted(raw_starts, pos, side="right") - 1
        offset = pos - raw_starts[level]
        channel, cell = offset // cells[level], offset % cells[level]
        return anchor_starts[level] + cell * ANCHORS_PER_CELL + channel // NUM_CLASSES, channel % NUM_CLASSES

    def flat_index(pos: np.ndarray) -> np.ndarray:
        anchor_idx, classes = effdet_index(pos)
        return anchor_idx * NUM_CLASSES + classes

    parts = [m.reshape(-1) for m in class_maps]
    cand = _at_least_top_k(parts, k, min_logit)
    values = _gather(parts, cand)
    best = _top_k(values, k, lambda i: flat_index(cand[i]))
    cand, logits = cand[best], values[best]
    anchor_idx, classes = effdet_index(cand)
    order = np.lexsort((anchor_idx * NUM_CLASSES + classes, -logits))
    return anchor_idx[order], classes[order], logits[order]


def _box_codes(box_maps: list[np.ndarray], anchor_idx: np.ndarray) -> np.ndarray:
    """The (ty, tx, th, tw) codes of the anchors ``anchor_idx`` (effdet's level, cell, anchor order), read
    from the stored (anchor * 4 + coordinate, y, x) maps: no transposed copy of every code per image."""
    cells = [m.shape[1] * m.shape[2] for m in box_maps]
    anchor_starts = np.cumsum([0] + [c * ANCHORS_PER_CELL for c in cells])
    level = np.searchsorted(anchor_starts, anchor_idx, side="right") - 1
    codes = np.empty((len(anchor_idx), 4), dtype=np.float32)
    for lvl, box_map in enumerate(box_maps):
        here = level == lvl
        cell, anchor = np.divmod(anchor_idx[here] - anchor_starts[lvl], ANCHORS_PER_CELL)
        codes[here] = box_map.reshape(box_map.shape[0], -1)[(anchor * 4)[:, None] + np.arange(4), cell[:, None]]
    return codes


def decode_boxes(codes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """(ty, tx, th, tw) codes against y1,x1,y2,x2 anchors -> x1,y1,x2,y2 boxes (effdet's decode, float32)."""
    ycenter_a = (anchors[:, 0] + anchors[:, 2]) / 2
    xcenter_a = (anchors[:, 1] + anchors[:, 3]) / 2
    ha = anchors[:, 2] - anchors[:, 0]
    wa = anchors[:, 3] - anchors[:, 1]
    ty, tx, th, tw = codes.T
    w = np.exp(tw) * wa
    h = np.exp(th) * ha
    ycenter = ty * ha + ycenter_a
    xcenter = tx * wa + xcenter_a
    return np.stack([xcenter - w / 2.0, ycenter - h / 2.0, xcenter + w / 2.0, ycenter + h / 2.0], axis=1)


def _class_aware_nms(boxes: np.ndarray, classes: np.ndarray, iou_threshold: float, limit: int) -> list[int]:
    """Greedy per-class NMS over candidates already in descending score order; the first ``limit`` kept.

    The first candidate not yet suppressed is always kept (every earlier kept box of its class has
    already removed what it overlaps), so the walk goes from kept box to kept box, each one
    suppressing its overlaps among the later candidates of its class in one vectorised step: at
    most ``limit`` steps instead of one per candidate, with the same IoU arithmetic and the same
    result as testing each candidate against the kept boxes. Stopping at ``limit`` gives exactly
    the top ``limit`` of per-class NMS (a later candidate can only score lower).
    """
    n = len(boxes)
    by_class = np.argsort(classes, kind="stable")  # each class's candidates together, in score order
    class_start = np.searchsorted(classes[by_class], classes, side="left")
    rank_in_class = np.empty(n, dtype=np.int64)
    rank_in_class[by_class] = np.arange(n) - class_start[by_class]
    class_end = np.searchsorted(classes[by_class], classes, side="right")
    alive = np.ones(n, dtype=bool)
    kept: list[int] = []
    i = 0
    with np.errstate(divide="ignore", invalid="ignore"):  # once: iou_one_to_many would enter it every step
        while len(kept) < limit and i < n:
            i += int(np.argmax(alive[i:]))  # the first candidate still alive (argmax stops at the first True)
            if not alive[i]:
                break
            kept.append(i)
            later = by_class[class_start[i] + rank_in_class[i] + 1:class_end[i]]
            later = later[alive[later]]
            alive[later[iou_one_to_many_unguarded(boxes[i], boxes[later]) > iou_threshold]] = False
            i += 1
    return kept


def detect(outputs: Sequence[np.ndarray], *, img_scale: float | None = None,
           img_size: tuple[int, int] | None = None, score_threshold: float | None = None,
           target: str = "onnx") -> np.ndarray:
    """Raw maps of one image -> (N, 6) x1, y1, x2, y2, score, class+1 sorted by score (N <= 100).

    effdet's DetBenchPredict in numpy: top-k over all (anchor, class) logits, decode, clip to the
    resized image (img_size (w, h) / img_scale) when both are given, sigmoid, per-class NMS,
    keep the best ``max_det_per_image``, scale boxes by ``img_scale`` (original / model pixels).
    With ``score_threshold`` the rows below it are dropped (the rows above are unchanged).
    """
    arrays = _check_outputs(outputs, target)
    min_logit = None
    if score_threshold is not None:  # a margin below logit(threshold); the exact cut is on the scores
        min_logit = float(np.log(score_threshold / (1.0 - score_threshold))) - 1e-3
    anchor_idx, classes, logits = _top_candidates(arrays[:NUM_LEVELS], int(_POST["max_detection_points"]),
                                                  min_logit)
    boxes = decode_boxes(_box_codes(arrays[NUM_LEVELS:], anchor_idx), _anchors()[anchor_idx])
    if img_scale is not None and img_size is not None:
        # effdet: img_size (int) / img_scale (float32) in float32, x and y limits for x1, y1, x2, y2
        w_lim = np.float32(img_size[0]) / np.float32(img_scale)
        h_lim = np.float32(img_size[1]) / np.float32(img_scale)
        boxes = np.minimum(np.maximum(boxes, np.float32(0)), np.array([w_lim, h_lim] * 2, dtype=np.float32))
    scores = (np.float32(1) / (np.float32(1) + np.exp(-logits))).astype(np.float32)
    keep = _class_aware_nms(boxes, classes, float(_POST["nms_iou"]), int(_POST["max_det_per_image"]))
    boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    if img_scale is not None:
        boxes = boxes * np.float32(img_scale)
    dets = np.concatenate([boxes, scores[:, None], (classes[:, None] + 1).astype(np.float32)], axis=1)
    return dets if score_threshold is None else dets[scores >= score_threshold]


def postprocess(outputs: list[np.ndarray], entry: ManifestEntry, target: str) -> list[dict]:
    """One image's raw maps -> COCO result dicts (category id = class + 1, score >= 0.001).

    Detections of the 10 ids COCO never annotates (12, 26, ...) still take their NMS/top-100
    slot, as upstream; they are left out afterwards because COCO eval can never match them.
    """
    check_target(target)
    scale = entry.uniform_scale(SPEC.name)
    dets = detect(outputs, img_scale=1.0 / scale, img_size=tuple(entry.orig_size),
                  score_threshold=float(_POST["score_threshold"]), target=target)
    valid = set(COCO80_CATEGORY_IDS)
    results = []
    for x1, y1, x2, y2, score, cat in dets.tolist():
        if int(cat) not in valid:
            continue
        results.append({"image_id": entry.image_id, "category_id": int(cat),
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    return results


def oracle_outputs(anns: list[dict], entry: ManifestEntry, target: str) -> list[np.ndarray]:
    """The raw maps a perfect model would output for these ground-truth boxes.

    Category ids are COCO's (the 80 of COCO80_CATEGORY_IDS, class index = id - 1); any other id is
    refused, naming the annotation. Each non-crowd box gets its best-overlapping free anchor, the
    exact box code for that anchor and a high logit for class (category_id - 1); every other logit
    is far below the threshold.
    Limits shared with any NMS detector: at most 100 boxes, and two boxes of one class with
    IoU > 0.5 cannot both survive NMS.
    """
    check_target(target)
    specs = SPEC.outputs_for(target)
    maps = [np.full(s.shape, ORACLE_NEGATIVE_LOGIT, dtype=np.float32) for s in specs[:NUM_LEVELS]]
    maps += [np.zeros(s.shape, dtype=np.float32) for s in specs[NUM_LEVELS:]]
    anchors = _anchors().astype(np.float64)
    level_sizes = [s.shape[1] * s.shape[2] * ANCHORS_PER_CELL for s in specs[:NUM_LEVELS]]
    level_starts = np.cumsum([0] + level_sizes)
    scale = entry.uniform_scale(SPEC.name)
    used = np.zeros(len(anchors), dtype=bool)
    for ann in anns:
        if ann.get("iscrowd", 0):
            continue
        coco80_class_index(ann, ARCH)  # refuses ids outside COCO's 80; effdet's class is the id itself - 1
        cat = int(ann["category_id"])
        x, y, w, h = (float(v) * scale for v in ann["bbox"])
        w, h = max(w, 1e-3), max(h, 1e-3)
        gt = np.array([y, x, y + h, x + w])
        ih = np.clip(np.minimum(gt[2], anchors[:, 2]) - np.maximum(gt[0], anchors[:, 0]), 0, None)
        iw = np.clip(np.minimum(gt[3], anchors[:, 3]) - np.maximum(gt[1], anchors[:, 1]), 0, None)
        inter = ih * iw
        iou = inter / (w * h + (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1]) - inter)
        iou[used] = -1.0
        best = int(np.argmax(iou))
        used[best] = True
        a = anchors[best]
        ha, wa = a[2] - a[0], a[3] - a[1]
        code = ((y + h / 2 - (a[0] + a[2]) / 2) / ha, (x + w / 2 - (a[1] + a[3]) / 2) / wa,
                np.log(h / ha), np.log(w / wa))
        level = int(np.searchsorted(level_starts, best, side="right")) - 1
        local = best - level_starts[level]
        cell, anchor = divmod(int(local), ANCHORS_PER_CELL)
        fw = specs[level].shape[2]
        row, col = divmod(cell, fw)
        maps[level][anchor * NUM_CLASSES + cat - 1, row, col] = ORACLE_POSITIVE_LOGIT
        maps[NUM_LEVELS + level][anchor * 4:anchor * 4 + 4, row, col] = code
    return maps
