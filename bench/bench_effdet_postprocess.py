"""EfficientDet's host postprocess per image: ours against the approach it replaced, same process, same maps.

At 15 ms per image on a 310P (bs1), a 90 ms host postprocess caps an NPU evaluation near 10 images/s.
The baseline re-implements the earlier approach: every logit moved into effdet's order and
concatenated, ``argpartition`` of all 4.4 M for the top 5000, then greedy per-class NMS testing each
candidate against the kept boxes of its class. Ours (``tool.detect``): an exact top-k found through
a sampled threshold (one comparison pass instead of a full partition), and NMS that walks the kept
boxes, suppressing their overlaps in one vectorised step each (at most 100 steps).

The raw maps come from a random-weight export run on generated COCO-like images (the random head
scores nearly every logit above the score threshold: the postprocess's worst case). Detections must
be identical; prints ms per image and the ratio (baseline / ours, higher is better).

    $(python3 -m common.envs ensure efficientdet) bench/bench_effdet_postprocess.py [--images 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.customops import iou_one_to_many  # noqa: E402
from common.dataset import read_image_bgr  # noqa: E402
from common.demococo import make_mini_coco  # noqa: E402
from common.parity import run_onnx  # noqa: E402
from tools.efficientdet import tool  # noqa: E402


def baseline_detect(outputs: list[np.ndarray]) -> np.ndarray:
    """The earlier approach, as (N, 6) rows like ``tool.detect`` (no image scaling)."""
    post = tool.SPEC.raw["postprocess"]
    k, levels, classes_n = int(post["max_detection_points"]), tool.NUM_LEVELS, tool.NUM_CLASSES
    cls = np.concatenate([m.transpose(1, 2, 0).reshape(-1, classes_n) for m in outputs[:levels]]).reshape(-1)
    box = np.concatenate([m.transpose(1, 2, 0).reshape(-1, 4) for m in outputs[levels:]])
    top = np.argpartition(-cls, k - 1)[:k]
    top = top[np.lexsort((top, -cls[top]))]  # score order, lower flat index first among ties
    anchor_idx, classes = top // classes_n, top % classes_n
    boxes = tool.decode_boxes(box[anchor_idx], tool.anchor_boxes()[anchor_idx])
    kept: list[int] = []
    by_class: dict[int, list[int]] = {}
    for i in range(len(boxes)):
        same = by_class.setdefault(int(classes[i]), [])
        if same and (iou_one_to_many(boxes[i], boxes[same]) > float(post["nms_iou"])).any():
            continue
        same.append(i)
        kept.append(i)
        if len(kept) == int(post["max_det_per_image"]):
            break
    scores = (np.float32(1) / (np.float32(1) + np.exp(-cls[top][kept]))).astype(np.float32)
    return np.concatenate([boxes[kept], scores[:, None], (classes[kept, None] + 1).astype(np.float32)], axis=1)


def per_image_ms(fns: dict, maps: list[list[np.ndarray]], repeat: int) -> dict[str, np.ndarray]:
    """Each function's time per image (ms), the best of ``repeat`` for every image; the functions take
    turns image by image, so a noisy moment of the machine costs both alike."""
    best = {name: np.full(len(maps), np.inf) for name in fns}
    for _ in range(repeat):
        for i, outputs in enumerate(maps):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn(outputs)
                best[name][i] = min(best[name][i], (time.perf_counter() - start) * 1000)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        onnx_path = root / "efficientdet_ascend_bs1.onnx"
        tool.export(tool.random_checkpoint(root / "random.pth"), onnx_path, batch=1, target="ascend")
        coco = make_mini_coco(root / "coco", n_images=args.images, seed=0, size_range=(400, 640), photo_like=True)
        names = [o.name for o in tool.SPEC.outputs_for("ascend")]
        maps = []
        for path in sorted((coco / "val2017").glob("*.jpg")):
            tensor, _, _ = tool.preprocess(read_image_bgr(path))
            result = run_onnx(onnx_path, {tool.SPEC.input.name: tensor[None]})
            maps.append([result[n][0] for n in names])
    for outputs in maps:
        ours, theirs = tool.detect(outputs), baseline_detect(outputs)
        if not np.array_equal(ours, theirs):
            print("DETECTIONS DIFFER: the comparison below is void", file=sys.stderr)
            return 1
    above = np.mean([np.mean(np.concatenate([m.ravel() for m in o[:tool.NUM_LEVELS]]) > np.log(0.001 / 0.999))
                     for o in maps])
    ms = per_image_ms({"baseline": baseline_detect, "ours": tool.detect}, maps, args.repeat)
    base, ours = ms["baseline"], ms["ours"]
    ratios = base / ours
    print(f"efficientdet postprocess, {len(maps)} images ({above:.0%} of the 4.4 M logits above the score "
          f"threshold), best of {args.repeat} per image: baseline {base.mean():.1f} ms/image, ours "
          f"{ours.mean():.1f} ms/image, ratio {base.sum() / ours.sum():.1f}x (per image: min {ratios.min():.1f}x, "
          f"median {np.median(ratios):.1f}x, max {ratios.max():.1f}x; detections identical)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
