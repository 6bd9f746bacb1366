"""Our modules layer by layer against reference values written down from the upstream definitions.

The upstream model cannot run here (its package needs compiled NPU/CUDA extensions and is on no
registry), so its extension-free pieces were run once, as published, in a scratch folder
(Ascend/ModelZoo-PyTorch, PyTorch/contrib/cv/detection/RetinaMask: rpn/anchor_generator.py
generate_anchors, box_coder.py BoxCoder.decode, poolers.py LevelMapper as patched by the recipe's
RetinaMask.patch) and their outputs are the literals below (float32, as upstream stores them).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tools.retinamask import model as m

#: upstream generate_anchors(stride, (size * 2 ** (k / 3) for k in 0..2), (0.5, 1, 2)).float(), per level
UPSTREAM_CELL_ANCHORS = {
    8: [
        [-18.0, -8.0, 25.0, 15.0],
        [-23.718263626098633, -11.11905288696289, 30.718263626098633, 18.11905288696289],
        [-30.922822952270508, -15.048812866210938, 37.92282485961914, 22.048812866210938],
        [-12.0, -12.0, 19.0, 19.0],
        [-16.158737182617188, -16.158737182617188, 23.158737182617188, 23.158737182617188],
        [-21.39841651916504, -21.39841651916504, 28.39841651916504, 28.39841651916504],
        [-8.0, -20.0, 15.0, 27.0],
        [-11.11905288696289, -26.23810577392578, 18.11905288696289, 33.23810577392578],
        [-15.048812866210938, -34.097625732421875, 22.048812866210938, 41.097625732421875],
    ],
    16: [
        [-38.0, -16.0, 53.0, 31.0],
        [-49.95636749267578, -22.23810577392578, 64.95636749267578, 37.23810577392578],
        [-65.02044677734375, -30.097625732421875, 80.02044677734375, 45.097625732421875],
        [-24.0, -24.0, 39.0, 39.0],
        [-32.317474365234375, -32.317474365234375, 47.317474365234375, 47.317474365234375],
        [-42.79683303833008, -42.79683303833008, 57.79683303833008, 57.79683303833008],
        [-14.0, -36.0, 29.0, 51.0],
        [-19.718263626098633, -47.436527252197266, 34.71826171875, 62.436527252197266],
        [-26.922822952270508, -61.845645904541016, 41.92282485961914, 76.84564971923828],
    ],
    32: [
        [-74.0, -28.0, 105.0, 59.0],
        [-97.39289093017578, -39.436527252197266, 128.3928985595703, 70.4365234375],
        [-126.86609649658203, -53.845645904541016, 157.8660888671875, 84.84564971923828],
        [-48.0, -48.0, 79.0, 79.0],
        [-64.63494873046875, -64.63494873046875, 95.63494873046875, 95.63494873046875],
        [-85.59366607666016, -85.59366607666016, 116.59366607666016, 116.59366607666016],
        [-30.0, -76.0, 61.0, 107.0],
        [-41.95636749267578, -99.91273498535156, 72.95636749267578, 130.91273498535156],
        [-57.02044677734375, -130.0408935546875, 88.02044677734375, 161.0408935546875],
    ],
    64: [
        [-150.0, -60.0, 213.0, 123.0],
        [-197.30563354492188, -83.91273498535156, 260.3056335449219, 146.91273498535156],
        [-256.906982421875, -114.0408935546875, 319.906982421875, 177.0408935546875],
        [-96.0, -96.0, 159.0, 159.0],
        [-129.2698974609375, -129.2698974609375, 192.2698974609375, 192.2698974609375],
        [-171.1873321533203, -171.1873321533203, 234.1873321533203, 234.1873321533203],
        [-58.0, -148.0, 121.0, 211.0],
        [-81.39289093017578, -194.78578186035156, 144.3928985595703, 257.7857971191406],
        [-110.86609649658203, -253.73219299316406, 173.8660888671875, 316.732177734375],
    ],
    128: [
        [-298.0, -116.0, 425.0, 243.0],
        [-392.0914306640625, -162.78578186035156, 519.0914306640625, 289.7857971191406],
        [-510.6391906738281, -221.73219299316406, 637.63916015625, 348.732177734375],
        [-192.0, -192.0, 319.0, 319.0],
        [-258.539794921875, -258.539794921875, 385.539794921875, 385.539794921875],
        [-342.3746643066406, -342.3746643066406, 469.3746643066406, 469.3746643066406],
        [-118.0, -300.0, 245.0, 427.0],
        [-165.30563354492188, -394.61126708984375, 292.3056335449219, 521.6112670898438],
        [-224.90699768066406, -513.81396484375, 351.906982421875, 640.81396484375],
    ],
}

#: upstream BoxCoder(weights=(10, 10, 5, 5)).decode(CODES, ANCHORS); row 3 hits the log(1000/16) clip
CODES = [[0.0, 0.0, 0.0, 0.0], [1.0, -2.0, 0.5, -1.0], [-3.0, 4.0, 30.0, 25.0], [0.5, 0.5, -40.0, 2.0]]
ANCHORS = [[-18.0, -8.0, 25.0, 15.0], [100.0, 50.0, 163.0, 113.0], [0.0, 0.0, 31.0, 31.0],
           [700.5, 300.25, 900.0, 1000.0]]
UPSTREAM_DECODED = [[-18.0, -8.0, 25.0, 15.0],
                    [103.0345230102539, 43.0006103515625, 172.76547241210938, 94.39938354492188],
                    [-993.6000366210938, -971.2000732421875, 1005.4000854492188, 1027.800048828125],
                    [810.7413940429688, 162.96435546875, 809.8086547851562, 1207.360595703125]]

#: the recipe's LevelMapper(3, 5, canonical level 4, scale 224) on boxes at the level boundaries
LEVEL_BOXES = [[0, 0, 10, 10], [0, 0, 110, 110], [0, 0, 111, 111], [0, 0, 222, 222], [0, 0, 223, 223],
               [10, 20, 457, 300], [0, 0, 446, 446], [0, 0, 447, 447], [0, 0, 1343, 1343], [5, 5, 5, 5]]
UPSTREAM_LEVELS = [0, 0, 0, 0, 1, 1, 1, 2, 2, 0]


@pytest.mark.parametrize("level", range(5))
def test_cell_anchors_equal_upstream_generate_anchors(level):
    stride, size = m.ANCHOR_STRIDES[level], m.ANCHOR_SIZES[level]
    ours = torch.from_numpy(m.cell_anchors(stride, size)).float()
    assert torch.equal(ours, torch.tensor(UPSTREAM_CELL_ANCHORS[stride]))
    buffer = getattr(m.AnchorGenerator().cell_anchors, str(level))  # what the checkpoint stores
    assert torch.equal(buffer, ours)


def test_grid_anchors_shift_cell_anchors_row_major():
    base = torch.tensor(UPSTREAM_CELL_ANCHORS[16])
    grid = m.grid_anchors(base, 16, 2, 3)  # 2 rows, 3 columns
    assert grid.shape == (2 * 3 * 9, 4)
    # cell (row 1, col 2) is the 6th cell; its 5th anchor is the base one shifted by (32, 16)
    assert torch.equal(grid[5 * 9 + 4], base[4] + torch.tensor([32.0, 16.0, 32.0, 16.0]))
    assert torch.equal(grid[:9], base)


def test_box_decode_equals_upstream_box_coder():
    got = m.decode_boxes(torch.tensor(CODES), torch.tensor(ANCHORS))
    assert torch.allclose(got, torch.tensor(UPSTREAM_DECODED), rtol=0, atol=1e-4)


def test_mask_level_assignment_equals_upstream_level_mapper():
    got = m.mask_levels(torch.tensor(LEVEL_BOXES, dtype=torch.float32))
    assert got.tolist() == UPSTREAM_LEVELS


def test_frozen_batch_norm_has_no_epsilon():
    bn = m.FrozenBatchNorm2d(2)
    bn.weight.copy_(torch.tensor([2.0, 1.0]))
    bn.bias.copy_(torch.tensor([0.5, -1.0]))
    bn.running_mean.copy_(torch.tensor([1.0, 3.0]))
    bn.running_var.copy_(torch.tensor([4.0, 0.25]))
    x = torch.tensor([3.0, 5.0]).view(1, 2, 1, 1)
    # (x - mean) / sqrt(var) * weight + bias, exactly (upstream adds no epsilon)
    assert bn(x).flatten().tolist() == [(3 - 1) / 2 * 2 + 0.5, (5 - 3) / 0.5 * 1 - 1.0]


def test_fpn_levels_and_sizes():
    model = m.RetinaMask(top_k=8).eval()
    with torch.no_grad():
        features = model.backbone(torch.zeros(1, 3, 192, 192))
    # P3..P7: strides 8..128 (P7 from P6 by a stride-2 conv with padding 1: ceil)
    assert [tuple(f.shape[-2:]) for f in features] == [(24, 24), (12, 12), (6, 6), (3, 3), (2, 2)]
    assert all(f.shape[1] == 256 for f in features)


def test_candidates_follow_upstream_permute_and_concat_order(monkeypatch):
    """One high logit at (level P4, cell row 2 col 1, anchor 4, class 17): the graph must return
    label 18 (1-based) and the box decoded from that very anchor, as upstream's
    permute_and_concat + flatten + topk (index // C anchor, index % C class) do."""
    model = m.RetinaMask(top_k=3).eval()
    sizes = [(24, 24), (12, 12), (6, 6), (3, 3), (2, 2)]
    logits = [torch.full((1, 9 * 80, h, w), -10.0) for h, w in sizes]
    codes = [torch.zeros(1, 36, h, w) for h, w in sizes]
    logits[1][0, 4 * 80 + 17, 2, 1] = 5.0
    logits[0][0, 0 * 80 + 3, 0, 0] = 4.0
    codes[1][0, 4 * 4:4 * 4 + 4, 2, 1] = torch.tensor([1.0, -2.0, 0.5, -1.0])
    monkeypatch.setattr(model.rpn.head, "forward", lambda features: (logits, codes))
    features = [torch.zeros(1, 256, h, w) for h, w in sizes]
    with torch.no_grad():
        boxes, labels, scores = model.rpn(features, (192, 192))
    assert labels[0, :2].tolist() == [18, 4] and labels.dtype == torch.int32
    assert scores[0, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(5.0)).item())
    anchor = torch.tensor(UPSTREAM_CELL_ANCHORS[16][4]) + torch.tensor([16.0, 32.0, 16.0, 32.0])
    expected = m.decode_boxes(torch.tensor([[1.0, -2.0, 0.5, -1.0]]), anchor[None])[0]
    assert torch.allclose(boxes[0, 0], expected.clamp(0, 192))
    first = torch.tensor(UPSTREAM_CELL_ANCHORS[8][0])
    assert torch.equal(boxes[0, 1], first.clamp(0, 192))  # zero codes: the anchor itself, clamped


def test_mask_head_returns_the_mask_of_each_box_label():
    model = m.RetinaMask(top_k=2).eval()
    features = [torch.randn(1, 256, s, s) for s in (24, 12, 6)]
    boxes = torch.tensor([[[10.0, 10.0, 80.0, 60.0], [0.0, 0.0, 191.0, 191.0]]])
    labels = torch.tensor([[3, 80]], dtype=torch.int32)
    with torch.no_grad():
        masks = model.mask(features, boxes, labels)
        head = model.mask
        rois = torch.cat([torch.zeros(2, 1), boxes[0]], dim=1)
        probs = head.predictor(head.feature_extractor(features, rois)).sigmoid()
    assert masks.shape == (1, 2, 1, 28, 28)
    assert torch.equal(masks[0, 0, 0], probs[0, 3]) and torch.equal(masks[0, 1, 0], probs[1, 80])


def test_static_pooler_equals_per_level_pooling():
    """The recipe's static pooler (every level pools every RoI, masked sum) = upstream's dynamic one."""
    from torchvision.ops import roi_align

    pooler = m.Pooler()
    features = [torch.randn(1, 4, s, s) for s in (24, 12, 6)]
    boxes = torch.tensor([[2.0, 3.0, 30.0, 40.0], [0.0, 0.0, 300.0, 250.0], [10.0, 10.0, 600.0, 500.0]])
    rois = torch.cat([torch.zeros(3, 1), boxes], dim=1)
    got = pooler(features, rois)
    for i, level in enumerate(m.mask_levels(boxes).long().tolist()):
        alone = roi_align(features[level], rois[i:i + 1], (14, 14), m.MASK_POOLER_SCALES[level], 2, aligned=False)
        assert torch.equal(got[i:i + 1], alone)
    np.testing.assert_array_equal(m.mask_levels(boxes).numpy(), [0.0, 1.0, 2.0])  # one RoI per level
