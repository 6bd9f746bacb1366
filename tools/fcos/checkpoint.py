"""The published checkpoint's format (mmdetection v1, May 2019) and its upgrade to mmdet 2.13.

``fcos_r50_caffe_fpn_1x_4gpu_20190516-a7cac5ff.pth`` was written by mmdet v1.0rc0 as
``{"meta": {...}, "state_dict": OrderedDict}`` (``tools/publish_model.py`` drops the optimizer).
Its tensors fit mmdet 2.13's FCOS one to one except the three prediction convs of the head, which
mmdet 2.0 renamed when FCOSHead became an AnchorFreeHead:

    bbox_head.fcos_cls.*        -> bbox_head.conv_cls.*
    bbox_head.fcos_reg.*        -> bbox_head.conv_reg.*
    bbox_head.fcos_centerness.* -> bbox_head.conv_centerness.*

mmdet renames these silently inside ``AnchorFreeHead._load_from_state_dict``; we do it here, as a
named step, before checking the keys, so a wrong file is refused with the keys that differ.
No tensor changes value: v1 and 2.x both order the 80 sigmoid class channels person..toothbrush
(v1's label 0 was background, but sigmoid heads never had a channel for it), so mmdet's
``upgrade_model_version.py`` channel rotation, written for softmax heads, must not be applied.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

#: mmdet v1 name -> mmdet 2.x name of the head's prediction layers
V1_RENAMES = {
    "bbox_head.fcos_cls.": "bbox_head.conv_cls.",
    "bbox_head.fcos_reg.": "bbox_head.conv_reg.",
    "bbox_head.fcos_centerness.": "bbox_head.conv_centerness.",
}
#: ``meta`` of the random stand-in; mmdet v1 wrote mmdet_version, config text, CLASSES, epoch, iter
V1_META_VERSION = "1.0rc0"
#: BatchNorm's step counter: not used in eval mode, absent from checkpoints of torch < 0.4.1
BN_COUNTER = "num_batches_tracked"


def is_v1(state_dict: Mapping[str, object]) -> bool:
    """True for a state dict with mmdet v1 head names."""
    return any(k.startswith(old) for k in state_dict for old in V1_RENAMES)


def _rename_prefixes(state_dict: Mapping[str, object], renames: Mapping[str, str]) -> OrderedDict[str, object]:
    """The state dict with each key's first matching prefix (a key of ``renames``) replaced, order kept."""
    out: OrderedDict[str, object] = OrderedDict()
    for key, value in state_dict.items():
        for old, new in renames.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def upgrade_v1_keys(state_dict: Mapping[str, object]) -> OrderedDict[str, object]:
    """mmdet v1 FCOS key names -> mmdet 2.13 names (other keys, and 2.x dicts, pass unchanged)."""
    return _rename_prefixes(state_dict, V1_RENAMES)


def downgrade_to_v1_keys(state_dict: Mapping[str, object]) -> OrderedDict[str, object]:
    """mmdet 2.13 names -> the v1 names the published file uses (to write stand-in checkpoints)."""
    return _rename_prefixes(state_dict, {new: old for old, new in V1_RENAMES.items()})


def random_state_dict(model_state: Mapping[str, object], seed: int = 0) -> OrderedDict[str, object]:
    """Random tensors for every entry of ``model_state``, scaled so the random detector detects.

    A plain random init leaves FCOS with scores ~0.01 (its prior), below the 0.05 threshold, so
    NMS and postprocessing would never see a box. Here class biases vary per class and the
    regression bias makes boxes of 8-90 px, so tests exercise every stage with real boxes.
    """
    import math

    import torch

    gen = torch.Generator().manual_seed(int(seed))
    out: OrderedDict[str, object] = OrderedDict()
    for key, ref in model_state.items():
        shape = tuple(ref.shape)
        if key.endswith(BN_COUNTER):
            out[key] = torch.zeros_like(ref)
        elif key.endswith("running_mean"):
            out[key] = torch.randn(shape, generator=gen) * 0.1
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=gen) * 0.5 + 0.75
        elif ".bn" in key or "downsample.1" in key or key.startswith("backbone.bn1"):
            # frozen BN affine: keep residual branches small so 16 blocks do not blow up
            small = key.endswith("weight") and (".bn3" in key or "downsample.1" in key)
            base = 0.3 if small else 1.0
            out[key] = (torch.rand(shape, generator=gen) * 0.2 + base) if key.endswith("weight") \
                else torch.randn(shape, generator=gen) * 0.1
        elif key.endswith("scale"):  # FCOS per-level regression scale
            out[key] = torch.ones(shape)
        elif key.startswith("bbox_head.conv_cls") and key.endswith("bias"):
            out[key] = torch.randn(shape, generator=gen) * 1.5 - 1.0
        elif key.startswith("bbox_head.conv_reg") and key.endswith("bias"):
            out[key] = torch.rand(shape, generator=gen) * (math.log(90) - math.log(8)) + math.log(8)
        elif key.endswith("bias"):
            out[key] = torch.randn(shape, generator=gen) * 0.01
        else:  # conv weights: He init, keeps activation scale through the network
            fan_in = int(torch.tensor(shape[1:]).prod()) if len(shape) > 1 else 1
            std = math.sqrt(2.0 / fan_in)
            if key == "backbone.conv1.weight":
                std *= 0.01  # caffe-normalised pixels are ~+-100: bring features to ~1
            elif key.startswith("bbox_head.conv_"):
                std *= 0.1  # prediction layers: mostly their bias, some spatial variation
            out[key] = torch.randn(shape, generator=gen) * std
    return out
