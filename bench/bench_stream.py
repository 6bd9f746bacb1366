"""Streaming evaluation against the model's own inference rate, same process, same images.

``M-stream`` overlaps decoding, preprocessing and postprocessing with inference; it is as fast as it
can be when the data path is fully hidden, i.e. when it runs at the rate of inference alone. This
exports a random-weight model, measures onnxruntime on the preprocessed tensors held in memory
(inference only), then the whole streaming evaluation on the same images, and prints the ratio
(streaming / inference only; 1.0 = the data path costs nothing). Both rates cover the same span: a
loaded session, the first run cold, every image (the streaming rate is the one the step measures and
notes in its report; the whole command's rate, with model load and the final COCO/VOC evaluation,
is printed beside it). Two configurations, same images:

- ``all cores``: onnxruntime uses every core (its default), so on a CPU-only machine the data path's
  threads compete with inference for the same cores: the ratio is bounded by
  inference / (inference + data path) CPU time, printed as ``CPU-share bound``;
- ``device core``: onnxruntime is held to ``--device-threads`` intra-op threads (default 1,
  ``$ASCEND_VISION_ORT_THREADS``) and the data path gets the other cores: the NPU host's situation
  (the model runs on the NPU, decoding/preprocessing/postprocessing on the host CPU), where the
  target (>= 0.9) applies.

    $(python3 -m common.envs ensure efficientdet) bench/bench_stream.py --tool efficientdet [--images 48]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.backends import make_backend  # noqa: E402
from common.backends.onnxruntime_backend import THREADS_ENV  # noqa: E402
from common.contract import load_tool  # noqa: E402
from common.dataset import read_image_bgr  # noqa: E402
from common.demococo import make_mini_coco  # noqa: E402
from common.demovoc import make_mini_voc  # noqa: E402
from common.report import Provenance  # noqa: E402
from common.streaming import stream_evaluate  # noqa: E402


def inference_alone(onnx_path: Path, tensors: list[np.ndarray]) -> float:
    """images/s of onnxruntime on tensors held in memory, from a loaded session, the first run cold: the
    span the streaming stage's own rate covers (both exclude the model load)."""
    runner = make_backend("onnxruntime", onnx_path, None)
    runner.input_specs()  # loads the session
    start = time.perf_counter()
    for t in tensors:
        runner.infer(t)
    return len(tensors) / (time.perf_counter() - start)


#: the rate the streaming evaluation measures itself and notes in its report (decode ... postprocess)
STAGE_RATE = re.compile(r"streaming \(.*\): (\d+) images in [\d.]+ s, ([\d.]+) images/s end to end")


def streaming(tool, data: Path, onnx_path: Path, out: Path, workers: int, n_images: int) -> tuple[float, float]:
    """(images/s of the streaming stage as its report notes it: decode, preprocess, infer, postprocess, scoring;
    images/s of the whole command: model load, annotations, the stage and the final COCO/VOC evaluation)."""
    start = time.perf_counter()
    report = stream_evaluate(tool, data, onnx_path, out, target="ascend", workers=workers,
                             provenance=Provenance.capture("onnxruntime", "cpu", 1))
    whole = n_images / (time.perf_counter() - start)
    (stage,) = [float(m.group(2)) for m in map(STAGE_RATE.search, report.notes) if m]
    return stage, whole


def data_path_seconds(tool, images: list[Path]) -> float:
    """CPU seconds per image of decode + preprocess on one thread (the work streaming must hide)."""
    start = time.perf_counter()
    for p in images:
        tool.preprocess(read_image_bgr(p))
    return (time.perf_counter() - start) / len(images)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tool", default="efficientdet")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--device-threads", type=int, default=1,
                        help="onnxruntime threads standing in for the NPU in the 'device core' configuration")
    args = parser.parse_args()
    tool = load_tool(args.tool)
    spec = tool.SPEC
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        onnx_path = root / f"{spec.name}_ascend_bs1.onnx"
        tool.export(tool.random_checkpoint(root / "random.pth"), onnx_path, batch=1, target="ascend")
        if spec.dataset.startswith("voc"):
            data = make_mini_voc(root / "voc", n_images=args.images, seed=0, photo_like=True)
            images = sorted((data / "JPEGImages").glob("*.jpg"))
        else:
            data = make_mini_coco(root / "coco", n_images=args.images, seed=0, size_range=(400, 640), photo_like=True)
            images = sorted((data / "val2017").glob("*.jpg"))
        tensors = [tool.preprocess(read_image_bgr(p))[0][None] for p in images]
        data_s = data_path_seconds(tool, images)
        print(f"{args.tool}: {len(images)} images, {os.cpu_count()} cores, {args.workers} preprocess workers, "
              f"numpy {np.__version__}; decode + preprocess {data_s * 1e3:.1f} ms/image on one thread")
        configurations = {"all cores": None, "device core": str(args.device_threads)}
        for i, (label, threads) in enumerate(configurations.items()):
            if threads is None:
                os.environ.pop(THREADS_ENV, None)
            else:
                os.environ[THREADS_ENV] = threads
            alone = inference_alone(onnx_path, tensors)
            stage, whole = streaming(tool, data, onnx_path, root / f"stream{i}", args.workers, len(images))
            bound = ""
            if threads is None:
                infer_s = (os.cpu_count() or 1) / alone  # CPU seconds per image of inference on every core
                bound = f"; CPU-share bound {infer_s / (infer_s + data_s):.2f}"
            print(f"  {label:<12} onnxruntime threads {threads or 'all'}: inference alone {alone:.2f} img/s, "
                  f"streaming {stage:.2f} img/s, ratio {stage / alone:.2f}{bound} (whole command with model load "
                  f"and final evaluation: {whole:.2f} img/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
