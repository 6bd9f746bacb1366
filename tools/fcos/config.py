"""The FCOS model configuration, as our own data (the mmdet 2.13 wheel ships no configs).

It reproduces the recipe's ``configs/fcos/fcos_r50_caffe_fpn_4x4_1x_coco.py`` (mmdetection 2.x,
commit dd0e8ede) for mmdet 2.13's builders. That config has **no GroupNorm in the head**
(``norm_cfg=None``, so the head convs carry a bias) because the recipe's checkpoint,
``fcos_r50_caffe_fpn_1x_4gpu_20190516-a7cac5ff.pth``, is the "R-50 caffe, GN: N, 1x, box AP 35.7"
row of mmdet v1's FCOS model zoo (the GN-head file is ``..._gn_1x_4gpu_20190516-9f253a93.pth``).
Only inference is configured: the loss entries are there because mmdet's head builder needs them.
"""

from __future__ import annotations

import copy

from tools.fcos.tool import SPEC

#: image normalisation of the caffe-style ResNet: BGR input, per-channel mean, std 1, no RGB swap
IMG_NORM = dict(mean=[102.9801, 115.9465, 122.7717], std=[1.0, 1.0, 1.0], to_rgb=False)
#: mmdet's test Resize: keep-ratio rescale into (long edge 1333, short edge 800), then Pad to /32
IMG_SCALE = (1333, 800)
PAD_SIZE_DIVISOR = 32

_POST = SPEC.raw["postprocess"]
#: test-time post-processing (the recipe's test_cfg) in mmdet's spelling; the numbers are model.toml's
TEST_CFG = dict(
    nms_pre=int(_POST["nms_pre"]),
    min_bbox_size=int(_POST["min_bbox_size"]),
    score_thr=float(_POST["score_threshold"]),
    nms=dict(type="nms", iou_threshold=float(_POST["nms_iou"])),
    max_per_img=int(_POST["max_det_per_image"]),
)

NUM_CLASSES = 80
STRIDES = (8, 16, 32, 64, 128)

_MODEL = dict(
    type="FCOS",
    backbone=dict(
        type="ResNet",
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type="BN", requires_grad=False),
        norm_eval=True,
        style="caffe",
    ),
    neck=dict(
        type="FPN",
        in_channels=[256, 512, 1024, 2048],
        out_channels=256,
        start_level=1,
        # recipe: add_extra_convs=True, extra_convs_on_inputs=False ("use P5"); mmdet 2.13 spells it so
        add_extra_convs="on_output",
        num_outs=5,
        relu_before_extra_convs=True,
    ),
    bbox_head=dict(
        type="FCOSHead",
        num_classes=NUM_CLASSES,
        in_channels=256,
        stacked_convs=4,
        feat_channels=256,
        strides=list(STRIDES),
        norm_cfg=None,
        loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type="IoULoss", loss_weight=1.0),
        loss_centerness=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
    ),
    train_cfg=None,
    test_cfg=TEST_CFG,
)

#: mmdet's test pipeline for this config (used to check our preprocessing against upstream)
TEST_PIPELINE = [
    dict(type="LoadImageFromFile"),
    dict(
        type="MultiScaleFlipAug",
        img_scale=IMG_SCALE,
        flip=False,
        transforms=[
            dict(type="Resize", keep_ratio=True),
            dict(type="RandomFlip"),
            dict(type="Normalize", **IMG_NORM),
            dict(type="Pad", size_divisor=PAD_SIZE_DIVISOR),
            dict(type="ImageToTensor", keys=["img"]),
            dict(type="Collect", keys=["img"]),
        ],
    ),
]


def model_config():
    """A fresh mmcv ConfigDict of the detector (callers may modify it)."""
    from mmcv import ConfigDict

    return ConfigDict(copy.deepcopy(_MODEL))
