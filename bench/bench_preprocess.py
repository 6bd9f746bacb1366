"""Dataset preprocessing with N worker threads vs one, measured in the same process.

`make M-data` preprocesses 5000 COCO images (or 1449 VOC ones); this prints how much the
``--workers`` threads shorten that for a tool's real preprocess hook, on this machine.
Prints the ratio parallel / serial time (lower is better; 1.0 = no gain).

    $(python3 -m common.envs ensure efficientdet) bench/bench_preprocess.py --tool efficientdet [--images 60]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.demococo import make_mini_coco  # noqa: E402
from common.pipeline import load_tool, preprocess_dataset  # noqa: E402


def _timed(tool, coco: Path, out: Path, workers: int) -> float:
    start = time.perf_counter()
    preprocess_dataset(tool, coco, out, workers=workers, force=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tool", default="efficientdet")
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tool = load_tool(args.tool)
    with tempfile.TemporaryDirectory() as tmp:
        # COCO-like sizes: about 640x480, so resizing costs what it costs on val2017
        coco = make_mini_coco(Path(tmp) / "coco", n_images=args.images, seed=0, size_range=(400, 640), photo_like=True)
        _timed(tool, coco, Path(tmp) / "warm", 1)  # imports, page cache
        serial = min(_timed(tool, coco, Path(tmp) / "s", 1) for _ in range(args.repeat))
        parallel = min(_timed(tool, coco, Path(tmp) / "p", args.workers) for _ in range(args.repeat))
    print(f"{args.tool}: {args.images} images, serial {serial:.2f} s ({args.images / serial:.1f}/s), "
          f"{args.workers} workers {parallel:.2f} s ({args.images / parallel:.1f}/s); "
          f"ratio parallel/serial = {parallel / serial:.2f} on {os.cpu_count()} CPU cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
