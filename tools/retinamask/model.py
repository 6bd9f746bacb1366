"""Our own RetinaMask R-50-FPN inference graph, with the upstream module names.

The upstream model (Ascend ModelZoo's maskrcnn_benchmark port, config
retinanet_mask_R-50-FPN_2x_adjust_std011_ms) is on no package registry and needs compiled
extensions, so this module re-implements its *inference* path from the upstream definitions
(facts only; see tools/retinamask/README.md and upstream_keys.txt). Module and buffer names equal
upstream's, so the published checkpoint's state_dict loads unchanged, key for key.

The graph is the recipe's exportable variant (RetinaMask.patch): no NMS on the device (the top
1000 (anchor, class) candidates leave the graph; class-aware NMS runs on the host), boxes clamped
to the canvas, labels 1-based int32, RoI pooling static (every FPN level pools every RoI, the
level mask selects), and the mask of each box's own label.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

#: RETINANET.NUM_CLASSES - 1 foreground classes (the head has no background logit)
NUM_CLASSES = 80
#: ROI_BOX_HEAD.NUM_CLASSES: the mask predictor keeps a background channel 0, labels are 1-based
MASK_CLASSES = 81
ANCHOR_SIZES = (32, 64, 128, 256, 512)
ANCHOR_STRIDES = (8, 16, 32, 64, 128)
ASPECT_RATIOS = (0.5, 1.0, 2.0)
OCTAVE = 2.0
SCALES_PER_OCTAVE = 3
#: the RetinaNet box coder (RetinaNetModule builds BoxCoder(weights=(10, 10, 5, 5))), default clip
BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
BBOX_XFORM_CLIP = math.log(1000.0 / 16)
#: RETINANET.PRE_NMS_TOP_N: candidates leaving the graph (the recipe: k = pre_nms_top_n)
TOP_K = 1000
#: ROI_MASK_HEAD: P3-P5 (scales 1/8 .. 1/32), 14x14 RoIAlign with 2 samples, canonical level 4 / 224 px
MASK_POOLER_SCALES = (0.125, 0.0625, 0.03125)
MASK_POOLER_RESOLUTION = 14
MASK_SAMPLING_RATIO = 2
CANONICAL_LEVEL = 4
CANONICAL_SCALE = 224
LEVEL_EPS = 1e-6


# --------------------------------------------------------------------------- anchors, box coder, levels

def cell_anchors(stride: int, size: float) -> np.ndarray:
    """The 9 anchors (x1, y1, x2, y2) of one cell at the origin for one FPN level, float64.

    Upstream's generate_anchors (the Detectron rule): a stride x stride window centred on
    (stride - 1) / 2; per aspect ratio r (outer loop) the width round(sqrt(stride^2 / r)) and
    height round(width * r) (numpy's round-half-to-even), then per octave scale
    size * 2^(k/3) / stride (inner loop) both multiplied; corners centre -+ (side - 1) / 2.
    """
    centre = (stride - 1) / 2.0
    rows = []
    for ratio in ASPECT_RATIOS:
        base_w = np.round(np.sqrt(stride * stride / ratio))
        base_h = np.round(base_w * ratio)
        for k in range(SCALES_PER_OCTAVE):
            scale = size * OCTAVE ** (k / float(SCALES_PER_OCTAVE)) / stride
            w, h = base_w * scale, base_h * scale
            half_w, half_h = 0.5 * (w - 1), 0.5 * (h - 1)
            rows.append((centre - half_w, centre - half_h, centre + half_w, centre + half_h))
    return np.array(rows, dtype=np.float64)


def grid_anchors(base: torch.Tensor, stride: int, height: int, width: int) -> torch.Tensor:
    """All anchors of one level in the heads' order: cell row-major, then the 9 cell anchors."""
    xs = torch.arange(0, width * stride, step=stride, dtype=torch.float32)
    ys = torch.arange(0, height * stride, step=stride, dtype=torch.float32)
    shift_y, shift_x = torch.meshgrid(ys, xs)
    shifts = torch.stack((shift_x.reshape(-1), shift_y.reshape(-1), shift_x.reshape(-1), shift_y.reshape(-1)), dim=1)
    return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)


def decode_boxes(codes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """(dx, dy, dw, dh) codes against x1, y1, x2, y2 anchors -> boxes (maskrcnn_benchmark's BoxCoder.decode).

    Widths count pixels inclusively (x2 - x1 + 1), codes are divided by (10, 10, 5, 5), dw/dh
    clipped at log(1000/16) before exp, and x2/y2 get the legacy "- 1".
    """
    widths = anchors[:, 2] - anchors[:, 0] + 1
    heights = anchors[:, 3] - anchors[:, 1] + 1
    ctr_x = anchors[:, 0] + 0.5 * widths
    ctr_y = anchors[:, 1] + 0.5 * heights
    wx, wy, ww, wh = BOX_CODER_WEIGHTS
    dx, dy = codes[:, 0] / wx, codes[:, 1] / wy
    dw = torch.clamp(codes[:, 2] / ww, max=BBOX_XFORM_CLIP)
    dh = torch.clamp(codes[:, 3] / wh, max=BBOX_XFORM_CLIP)
    pred_x, pred_y = dx * widths + ctr_x, dy * heights + ctr_y
    pred_w, pred_h = torch.exp(dw) * widths, torch.exp(dh) * heights
    return torch.stack((pred_x - 0.5 * pred_w, pred_y - 0.5 * pred_h,
                        pred_x + 0.5 * pred_w - 1, pred_y + 0.5 * pred_h - 1), dim=1)


def mask_levels(boxes: torch.Tensor) -> torch.Tensor:
    """FPN level index (0 = P3 .. 2 = P5) of each RoI: floor(4 + log2(sqrt(area) / 224 + 1e-6)),
    area with inclusive pixels (x2 - x1 + 1)(y2 - y1 + 1), clamped to P3..P5 (upstream LevelMapper).
    Returned as float (the recipe's static variant compares it with each level index)."""
    k_min = -math.log2(MASK_POOLER_SCALES[0])
    k_max = -math.log2(MASK_POOLER_SCALES[-1])
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    levels = torch.floor(CANONICAL_LEVEL + torch.log2(torch.sqrt(area) / CANONICAL_SCALE + LEVEL_EPS))
    return torch.clamp(levels, min=k_min, max=k_max) - k_min


# --------------------------------------------------------------------------- backbone

class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics: four buffers, ``x * w / sqrt(var) + (b - mean * w / sqrt(var))``,
    no epsilon (maskrcnn_benchmark's definition)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * self.running_var.rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


class Stem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.bn1(self.conv1(x))), kernel_size=3, stride=2, padding=1)


class Bottleneck(nn.Module):
    """ResNet bottleneck with the stride on the first 1x1 conv (STRIDE_IN_1X1, the MSRA weights)."""

    def __init__(self, in_channels: int, mid: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.downsample = None
        if in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                            FrozenBatchNorm2d(out_channels))
        self.conv1 = nn.Conv2d(in_channels, mid, 1, stride=stride, bias=False)
        self.bn1 = FrozenBatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=1, padding=1, bias=False)
        self.bn2 = FrozenBatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_channels, 1, bias=False)
        self.bn3 = FrozenBatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return F.relu(out + residual)


class ResNet50(nn.Module):
    """R-50 body: stem, layer1..layer4 (3, 4, 6, 3 blocks); returns C2..C5."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = Stem()
        in_channels = 64
        for index, blocks in zip((1, 2, 3, 4), (3, 4, 6, 3)):
            mid, out = 64 * 2 ** (index - 1), 256 * 2 ** (index - 1)
            first_stride = 1 if index == 1 else 2
            layers = [Bottleneck(in_channels if i == 0 else out, mid, out, first_stride if i == 0 else 1)
                      for i in range(blocks)]
            self.add_module(f"layer{index}", nn.Sequential(*layers))
            in_channels = out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for index in (1, 2, 3, 4):
            x = getattr(self, f"layer{index}")(x)
            features.append(x)
        return features


class LastLevelP6P7(nn.Module):
    """P6 = conv(P5, stride 2), P7 = conv(relu(P6), stride 2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.p6 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.p7 = nn.Conv2d(channels, channels, 3, 2, 1)

    def forward(self, p5: torch.Tensor) -> list[torch.Tensor]:
        p6 = self.p6(p5)
        return [p6, self.p7(F.relu(p6))]


class FPN(nn.Module):
    """The "p3p7" FPN: laterals on C3..C5 (upstream numbers them 2..4: its C2 input has 0 channels),
    nearest x2 top-down, 3x3 outputs, then P6/P7 from P5. Returns P3..P7."""

    def __init__(self, channels: int = 256) -> None:
        super().__init__()
        for index, in_channels in ((2, 512), (3, 1024), (4, 2048)):
            self.add_module(f"fpn_inner{index}", nn.Conv2d(in_channels, channels, 1))
            self.add_module(f"fpn_layer{index}", nn.Conv2d(channels, channels, 3, 1, 1))
        self.top_blocks = LastLevelP6P7(channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        c3, c4, c5 = features[1:]
        inner = self.fpn_inner4(c5)
        outputs = [self.fpn_layer4(inner)]
        for feature, index in ((c4, 3), (c3, 2)):
            inner = getattr(self, f"fpn_inner{index}")(feature) + F.interpolate(inner, scale_factor=2, mode="nearest")
            outputs.insert(0, getattr(self, f"fpn_layer{index}")(inner))
        return outputs + self.top_blocks(outputs[-1])


# --------------------------------------------------------------------------- RetinaNet

class AnchorGenerator(nn.Module):
    """Holds the per-level cell anchors as buffers ``cell_anchors.<level>`` (upstream's BufferList)."""

    def __init__(self) -> None:
        super().__init__()
        self.cell_anchors = nn.Module()
        for level, (stride, size) in enumerate(zip(ANCHOR_STRIDES, ANCHOR_SIZES)):
            self.cell_anchors.register_buffer(str(level), torch.from_numpy(cell_anchors(stride, size)).float())

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        per_level = [grid_anchors(getattr(self.cell_anchors, str(level)), stride, f.shape[-2], f.shape[-1])
                     for level, (stride, f) in enumerate(zip(ANCHOR_STRIDES, features))]
        return torch.cat(per_level, dim=0)


def _tower() -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(4):
        layers += [nn.Conv2d(256, 256, 3, 1, 1), nn.ReLU()]
    return nn.Sequential(*layers)


class RetinaNetHead(nn.Module):
    def __init__(self, num_anchors: int = len(ASPECT_RATIOS) * SCALES_PER_OCTAVE) -> None:
        super().__init__()
        self.cls_tower = _tower()
        self.bbox_tower = _tower()
        self.cls_logits = nn.Conv2d(256, num_anchors * NUM_CLASSES, 3, 1, 1)
        self.bbox_pred = nn.Conv2d(256, num_anchors * 4, 3, 1, 1)

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return ([self.cls_logits(self.cls_tower(f)) for f in features],
                [self.bbox_pred(self.bbox_tower(f)) for f in features])


class RetinaNetModule(nn.Module):
    """``rpn`` in upstream's naming: anchor generator + head, and the recipe's graph-side selection."""

    def __init__(self, top_k: int = TOP_K) -> None:
        super().__init__()
        self.anchor_generator = AnchorGenerator()
        self.head = RetinaNetHead()
        self.top_k = top_k

    def forward(self, features: list[torch.Tensor], canvas: tuple[int, int]):
        """P3..P7 -> (boxes (B, K, 4), labels (B, K) int32 1-based, scores (B, K)) of the top K
        sigmoid scores over all (anchor, class) pairs, boxes clamped to the canvas (no NMS)."""
        logits, codes = self.head(features)
        batch = logits[0].shape[0]
        scores = torch.cat([t.permute(0, 2, 3, 1).reshape(batch, -1, NUM_CLASSES) for t in logits], 1).sigmoid()
        codes = torch.cat([t.permute(0, 2, 3, 1).reshape(batch, -1, 4) for t in codes], 1)
        anchors = self.anchor_generator(features)
        height, width = canvas
        limits = torch.tensor([width, height, width, height], dtype=torch.float32)
        boxes, labels, top_scores = [], [], []
        for b in range(batch):
            decoded = decode_boxes(codes[b], anchors)
            values, flat = torch.topk(scores[b].reshape(-1), k=self.top_k)
            classes = torch.tensor(NUM_CLASSES, dtype=torch.int32)
            flat = flat.int()
            anchor_index = torch.floor_divide(flat, classes).long()
            boxes.append(torch.min(torch.clamp(decoded[anchor_index], min=0), limits))
            labels.append(flat % classes + 1)
            top_scores.append(values)
        return torch.stack(boxes), torch.stack(labels), torch.stack(top_scores)


# --------------------------------------------------------------------------- mask branch

class Pooler(nn.Module):
    """Static multi-level RoIAlign: every level pools every RoI, each RoI keeps its own level's result.

    ``round_rois_to_fp16`` makes the RoIs pass through float16 first: the PyTorch twin of the
    Ascend target's graph fix (the RoI Concat read in float16, tools/retinamask/tool.py).
    """

    round_rois_to_fp16 = False

    def forward(self, features: list[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        if self.round_rois_to_fp16:
            rois = rois.half().float()
        levels = mask_levels(rois[:, 1:])
        result = None
        for level, (feature, scale) in enumerate(zip(features, MASK_POOLER_SCALES)):
            pooled = roi_align(feature, rois, (MASK_POOLER_RESOLUTION, MASK_POOLER_RESOLUTION), scale,
                               MASK_SAMPLING_RATIO, aligned=False)
            part = pooled * (levels == level).to(pooled.dtype)[:, None, None, None]
            result = part if result is None else result + part
        return result


class MaskFeatureExtractor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pooler = Pooler()
        for index in range(1, 5):
            self.add_module(f"mask_fcn{index}", nn.Conv2d(256, 256, 3, 1, 1))

    def forward(self, features: list[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        x = self.pooler(features, rois)
        for index in range(1, 5):
            x = F.relu(getattr(self, f"mask_fcn{index}")(x))
        return x


class MaskPredictor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv5_mask = nn.ConvTranspose2d(256, 256, 2, 2, 0)
        self.mask_fcn_logits = nn.Conv2d(256, MASK_CLASSES, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask_fcn_logits(F.relu(self.conv5_mask(x)))


class MaskHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.feature_extractor = MaskFeatureExtractor()
        self.predictor = MaskPredictor()

    def forward(self, features: list[torch.Tensor], boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """P3..P5, boxes (B, K, 4), labels (B, K) -> (B, K, 1, 28, 28) mask probabilities of each box's label."""
        batch, k = boxes.shape[:2]
        ids = torch.arange(batch, dtype=boxes.dtype)[:, None].expand(batch, k).reshape(-1, 1)
        rois = torch.cat([ids, boxes.reshape(-1, 4)], dim=1)
        probs = self.predictor(self.feature_extractor(features, rois)).sigmoid()
        index = labels.reshape(-1, 1, 1, 1).long().expand(-1, 1, probs.shape[2], probs.shape[3])
        own = torch.gather(probs, 1, index)
        return own.reshape(batch, k, 1, probs.shape[2], probs.shape[3])


class RetinaMask(nn.Module):
    """backbone (body + fpn), rpn (RetinaNet), mask (RoI mask head): image batch ->
    (boxes (B, K, 4), labels (B, K) int32, scores (B, K), masks (B, K, 1, 28, 28)), K = ``top_k``
    (1000 in the recipe; fewer only to make tests on 2 CPU cores fast: the mask head runs on every one)."""

    def __init__(self, top_k: int = TOP_K) -> None:
        super().__init__()
        self.backbone = nn.Sequential(OrderedDict([("body", ResNet50()), ("fpn", FPN())]))
        self.rpn = RetinaNetModule(top_k)
        self.mask = MaskHead()

    def forward(self, images: torch.Tensor):
        features = self.backbone(images)
        boxes, labels, scores = self.rpn(features, tuple(images.shape[-2:]))
        masks = self.mask(features[:len(MASK_POOLER_SCALES)], boxes, labels)
        return boxes, labels, scores, masks
