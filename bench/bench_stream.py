"""Streaming evaluation against the model's own inference rate, same process, same images.

``M-stream`` overlaps decoding, preprocessing and postprocessing with inference; it is as fast as it
can be when the data path is fully hidden, i.e. when it runs at the rate of inference alone. This
exports a random-weight model, measures onnxruntime on the preprocessed tensors held in memory
(inference only), then the whole streaming evaluation on the same images, and prints the ratio
(streaming / inference only; 1.0 = the data path costs nothing). On a CPU-only machine the
preprocessing threads compete with onnxruntime for the same cores, which an NPU host does not.

    $(python3 -m common.envs ensure efficientdet) bench/bench_stream.py --tool efficientdet [--images 24]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.backends import make_backend  # noqa: E402
from common.contract import load_tool  # noqa: E402
from common.dataset import read_image_bgr  # noqa: E402
from common.demococo import make_mini_coco  # noqa: E402
from common.demovoc import make_mini_voc  # noqa: E402
from common.report import Provenance  # noqa: E402
from common.streaming import stream_evaluate  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tool", default="efficientdet")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    args = parser.parse_args()
    tool = load_tool(args.tool)
    spec = tool.SPEC
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        onnx_path = root / f"{spec.name}_ascend_bs1.onnx"
        tool.export(tool.random_checkpoint(root / "random.pth"), onnx_path, batch=1, target="ascend")
        if spec.dataset.startswith("voc"):
            data = make_mini_voc(root / "voc", n_images=args.images, seed=0)
            images = sorted((data / "JPEGImages").glob("*.jpg"))
        else:
            data = make_mini_coco(root / "coco", n_images=args.images, seed=0, size_range=(400, 640))
            images = sorted((data / "val2017").glob("*.jpg"))
        runner = make_backend("onnxruntime", onnx_path, 0)
        tensors = [tool.preprocess(read_image_bgr(p))[0][None] for p in images]
        runner.infer(tensors[0])  # warm-up
        start = time.perf_counter()
        for t in tensors:
            runner.infer(t)
        infer_rate = len(tensors) / (time.perf_counter() - start)
        start = time.perf_counter()
        stream_evaluate(tool, data, onnx_path, root / "stream", target="ascend", workers=args.workers,
                        provenance=Provenance.capture("onnxruntime", "cpu", 1))
        stream_rate = len(images) / (time.perf_counter() - start)
    print(f"{args.tool}: {len(images)} images, onnxruntime inference alone {infer_rate:.2f} img/s, streaming "
          f"evaluation (decode + preprocess + infer + postprocess + the final COCO/VOC evaluation) "
          f"{stream_rate:.2f} img/s; ratio "
          f"{stream_rate / infer_rate:.2f} ({args.workers} preprocess workers, {os.cpu_count()} cores, "
          f"numpy {np.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
