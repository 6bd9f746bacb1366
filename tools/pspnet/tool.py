"""PSPNet R50-D8 (VOC2012 aug) hooks (upstream: mmsegmentation 0.16.0 + mmcv-full 1.3.10, recipe seed 003).

The exported graph is the whole segmentor plus the argmax: one float16 input (B, 3, 500, 500)
and one output ``seg`` (B, 500, 500) int32, the class of every canvas pixel. Host-side work is the
recipe's letterbox (centred, zero padding) and undoing it: crop the padding, resize the label
map (nearest) to the original image, compare with the VOC ground truth.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np

from common.contract import check_target
from common.errors import ToolError
from common.fsutil import atomic_path
from common.letterbox import letterbox_pixels, letterbox_tensor
from common.manifest import ManifestEntry
from common.spec import load_spec
from common.tensors import np_dtype

# no custom op in this graph: both targets (common.contract.TARGETS) export the same standard ONNX
SPEC = load_spec(Path(__file__).parent.name)
OUTPUT_NAME = "seg"
OPSET = 11
CONFIG = "pspnet/pspnet_r50-d8_512x512_20k_voc12aug.py"  # inside the mmseg wheel (.mim/configs)
#: fp32 convolutions in ONNX Runtime and PyTorch differ in summation order only; an argmax flips
#: where two class logits are within ~1e-5, which random weights produce on a few pixels at most
PARITY_MISMATCH = 1e-3
PARITY_SEED = 0
#: the parity input's stand-in for letterbox padding: a zero band over the top sixth (common.parity)
PARITY_BAND = {"top_band": 6}


# --------------------------------------------------------------------------- model

def model_config():
    """The recipe's mmseg config from the installed wheel, with SyncBN as BN (one CPU process) and no
    ImageNet download (the checkpoint has every weight)."""
    import mmseg
    from mmcv import Config

    path = Path(mmseg.__file__).parent / ".mim" / "configs" / CONFIG
    if not path.is_file():
        raise ToolError(f"{path} not found: the pinned mmsegmentation wheel ships its configs; rebuild the "
                        "environment (make pspnet-env)")
    cfg = Config.fromfile(str(path))
    cfg.model.pretrained = None

    def plain_bn(node):
        if isinstance(node, dict):
            if node.get("type") == "SyncBN":
                node["type"] = "BN"
            for value in node.values():
                plain_bn(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                plain_bn(value)

    plain_bn(cfg.model)
    return cfg


def build_segmentor():
    """mmseg 0.16's EncoderDecoder from the recipe config, eval mode, weights uninitialised."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mmseg.models import build_segmentor as mmseg_build

        model = mmseg_build(model_config().model)
    return model.eval()


def random_checkpoint(path: Path, seed: int = 0) -> Path:
    """Random weights in the published file's format: ``{"meta", "state_dict"}`` as mmseg saves it.

    BatchNorm statistics are randomised (so parity exercises real normalisation) with the last BN
    of each residual block kept small, so 16 blocks of random weights stay finite; the classifier
    is scaled up so class logits are far apart (near-ties would make the argmax arbitrary).
    """
    import torch
    from mmcv.utils import get_logger

    quiet = get_logger("mmcv")  # init_weights logs one INFO line per parameter (initialised here first)
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_segmentor()
            model.init_weights()
    finally:
        quiet.setLevel(level)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                scale = 0.2 if name.endswith("bn3") or name.endswith("downsample.1") else 1.0
                module.weight.copy_((torch.rand(n, generator=gen) + 0.5) * scale)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
        for head in (model.decode_head, model.auxiliary_head):
            head.conv_seg.weight.mul_(100.0)
    checkpoint = {"meta": {"mmseg_version": "0.16.0", "config": f"# random-weight stand-in (seed {seed}) for "
                                                                 f"{SPEC.weights.filename}\n",
                           "CLASSES": _voc_classes()},
                  "state_dict": model.state_dict()}
    out = Path(path)
    with atomic_path(out) as tmp:
        torch.save(checkpoint, str(tmp))
    return out


def _voc_classes() -> tuple[str, ...]:
    from common.metrics import VOC_CLASSES

    return tuple(VOC_CLASSES)


def load_model(weights: Path):
    """The upstream segmentor with the checkpoint's weights (keys and shapes checked), eval mode."""
    from common.weights import load_checked, load_state_dict

    return load_checked(build_segmentor(), load_state_dict(weights), weights,
                        variant_hint="another PSPNet variant (e.g. another dataset's class count)")


# --------------------------------------------------------------------------- export-time fix

def adaptive_pool_matrix(size_in: int, size_out: int):
    """(size_out, size_in) matrix whose product with a vector is PyTorch's adaptive average pooling.

    Bin i averages [floor(i*n/o), ceil((i+1)*n/o)), exactly the bins AdaptiveAvgPool2d uses.
    """
    import torch

    m = torch.zeros(size_out, size_in)
    for i in range(size_out):
        start = (i * size_in) // size_out
        end = -((-(i + 1) * size_in) // size_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


class MatmulAdaptiveAvgPool2d:
    """Adaptive average pooling as two matrix products with constant pooling matrices.

    Works around two limits: torch 1.8's ONNX exporter refuses adaptive pooling whose output size
    does not divide the input (PSPNet's bins 2, 3 and 6 on the 63x63 feature map of a 500x500
    input), and Ascend runs non-dividing AdaptiveAvgPool bins as slow AICPU ops (the recipe's
    known problem, seed 003). MatMul runs on the AI cores' matrix units and exports as plain ONNX.
    """

    def __init__(self, output_size: int) -> None:
        self.output_size = int(output_size)

    def __call__(self, x):
        import torch

        h, w = int(x.shape[-2]), int(x.shape[-1])  # static shapes: a constant in the graph
        rows = adaptive_pool_matrix(h, self.output_size).to(x.dtype)
        cols = adaptive_pool_matrix(w, self.output_size).to(x.dtype).t()
        return torch.matmul(torch.matmul(rows, x), cols)


@contextlib.contextmanager
def matmul_adaptive_pools(segmentor):
    """While exporting, every AdaptiveAvgPool2d of the pyramid pooling module runs as
    :class:`MatmulAdaptiveAvgPool2d` (the module's forward is overridden, then restored)."""
    import torch

    pools = [m for m in segmentor.modules() if isinstance(m, torch.nn.AdaptiveAvgPool2d)]
    try:
        for m in pools:  # an instance attribute shadows the class's forward; removing it restores it
            size = m.output_size if isinstance(m.output_size, int) else m.output_size[0]
            m.forward = MatmulAdaptiveAvgPool2d(size)
        yield len(pools)
    finally:
        for m in pools:
            m.__dict__.pop("forward", None)


# --------------------------------------------------------------------------- export

def deploy_module(segmentor):
    """The exported computation: input (B,3,H,W) float16 -> (B,H,W) int32 class map."""
    import torch

    class PSPNetDeploy(torch.nn.Module):
        def __init__(self, seg):
            super().__init__()
            self.seg = seg

        def forward(self, x):
            logits = self.seg.encode_decode(x.float(), None)  # upsampled to the input size
            return logits.argmax(dim=1).to(torch.int32)

    return PSPNetDeploy(segmentor).eval()


def export(weights: Path, out_path: Path, *, batch: int, target: str) -> dict:
    """Checkpoint -> static simplified ONNX at ``out_path`` + parity report against PyTorch.

    PyTorch runs the unmodified model (its own adaptive pooling); the ONNX graph has the matmul
    pooling, so parity covers the export fix too.
    """
    import onnx
    import torch

    from common import graph
    from common.customops import export_kwargs
    from common.parity import ParityReport, compare_arrays, parity_input, run_onnx, to_numpy

    check_target(target)
    SPEC.check_batch(batch)
    c, height, width = SPEC.input.shape
    segmentor = load_model(weights)
    deploy = deploy_module(segmentor)
    x = parity_input(SPEC, batch, seed=PARITY_SEED, **PARITY_BAND)
    with torch.no_grad():
        reference = deploy(x)
    name = SPEC.input.name
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings(), matmul_adaptive_pools(segmentor) as n_pools:
        warnings.simplefilter("ignore")  # tracer warnings: shapes become constants, as ATC wants
        torch.onnx.export(deploy, x, buffer, input_names=[name], output_names=[OUTPUT_NAME],
                          do_constant_folding=True, **export_kwargs(OPSET))
    model = onnx.load_from_string(buffer.getvalue())
    model = graph.simplify(model, {name: [batch, c, height, width]}, name=str(out_path))
    graph.assert_static(model, name=str(out_path))
    graph.save(model, out_path)
    got = run_onnx(out_path, {name: to_numpy(x)})[OUTPUT_NAME]
    report = ParityReport(title=f"PyTorch vs ONNX Runtime ({Path(out_path).name})")
    report.add(compare_arrays(f"{OUTPUT_NAME} (class map)", reference, got, atol=0, rtol=0,
                              mismatch_tol=PARITY_MISMATCH))
    result = report.to_dict()
    result.update({"target": target, "batch": batch, "opset": OPSET, "matmul_adaptive_pools": n_pools,
                   "input": {"name": name, "dtype": SPEC.input.dtype, "shape": [batch, c, height, width]},
                   "ops": dict(graph.op_types(model))})
    return result


# --------------------------------------------------------------------------- pre/post-processing

def preprocess(image_bgr: np.ndarray) -> tuple[np.ndarray, tuple[float, float], tuple[int, int, int, int]]:
    """BGR uint8 image -> (CHW float16 canvas, (scale_x, scale_y), (left, top, right, bottom) padding).

    The recipe's mmsegmentation_voc2012_preprocess.py bit for bit (model.toml: sides floored,
    mean/std held in float16): cv2 bilinear resize (mmcv.imresize), BGR->RGB, ImageNet mean/std,
    zero padding around the centred image; float16 as the recipe writes it (atc --input_fp16_nodes=input).
    """
    return letterbox_tensor(image_bgr, SPEC.input)


def pixels(image_bgr: np.ndarray) -> tuple[np.ndarray, tuple[float, float], tuple[int, int, int, int]]:
    """:func:`preprocess` before normalisation, for ``--input uint8`` (AIPP normalises on the NPU)."""
    return letterbox_pixels(image_bgr, SPEC.input)


def postprocess(outputs: list[np.ndarray], entry: ManifestEntry, target: str) -> np.ndarray:
    """One image's class map on the canvas -> class map of the original image (uint8, H x W).

    Crops exactly the recorded padding (the recipe's symmetric crop was one pixel off for odd
    padding), then resizes nearest-neighbour to the original size.
    """
    import cv2

    check_target(target)
    if len(outputs) != 1:
        raise ToolError(f"{entry.stem}: PSPNet has 1 output (seg), got {len(outputs)}")
    _, canvas_h, canvas_w = SPEC.input.shape
    seg = np.asarray(outputs[0]).reshape(canvas_h, canvas_w)
    left, top, right, bottom = (int(p) for p in entry.pad)
    crop = seg[top:canvas_h - bottom, left:canvas_w - right]
    width, height = entry.orig_size
    if crop.size == 0 or crop.min() < 0 or crop.max() > 255:
        raise ToolError(f"{entry.stem}: the class map holds values outside 0..255 or the padding "
                        f"{entry.pad} leaves nothing: rerun inference with this model's data")
    return cv2.resize(crop.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)


def _nearest_source_index(n_out: int, n_in: int) -> np.ndarray:
    """For each of ``n_out`` positions, the source position (of ``n_in``) that cv2's INTER_NEAREST
    resize reads, taken from cv2 itself (a resized ramp) so that it is the postprocess's own rule."""
    import cv2

    ramp = np.arange(n_in, dtype=np.float32).reshape(1, n_in)
    return cv2.resize(ramp, (n_out, 1), interpolation=cv2.INTER_NEAREST)[0].astype(np.int64)


def oracle_outputs(label: np.ndarray, entry: ManifestEntry, target: str) -> list[np.ndarray]:
    """The class map a perfect model would output for this ground truth: the inverse of
    :func:`postprocess`, exact wherever the round trip allows.

    Every labelled original pixel writes its class into the canvas pixel the postprocess reads it
    back from, so an enlarged image comes back exactly (mIoU 100); when the image was shrunk,
    several original pixels share one canvas pixel and the last labelled one in raster order wins.
    Canvas pixels no original pixel reads hold the nearest-resized label; "ignore" (255) becomes
    background (it is never scored).
    """
    import cv2

    check_target(target)
    spec = SPEC.outputs_for(target)[0]
    _, canvas_h, canvas_w = SPEC.input.shape
    left, top, right, bottom = (int(p) for p in entry.pad)
    new_w, new_h = canvas_w - left - right, canvas_h - top - bottom
    label = np.asarray(label, np.uint8)
    inner = cv2.resize(label, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    rows = _nearest_source_index(label.shape[0], new_h)
    cols = _nearest_source_index(label.shape[1], new_w)
    ys, xs = np.nonzero(label != 255)
    inner[rows[ys], cols[xs]] = label[ys, xs]
    seg = np.zeros(spec.shape, np_dtype(spec.dtype))
    seg[top:top + new_h, left:left + new_w] = np.where(inner == 255, 0, inner)
    return [seg]
