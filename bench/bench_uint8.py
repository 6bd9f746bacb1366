"""The data step with ``--input uint8`` against the recipe's approach and against the machine's floors,
all measured in this process on the same generated COCO-like images.

- baseline: the recipes' preprocessing scripts' approach, re-implemented here (one image at a time:
  cv2.imread, resize, float normalisation of the whole canvas, ``tofile`` of float32 CHW);
- ours, float: ``preprocess_dataset`` (worker threads, the tool's float tensors);
- ours, uint8: ``preprocess_dataset(input_format="uint8")`` (the canvas before normalisation);
- floors: JPEG decode rate with the same threads, and the page-cache write rate (MB/s) of as many
  fresh files of one image's bytes, so ``floor = min(decode, write_rate / bytes_per_image)``.

The images are photo-like (common.demococo.photo_texture: about COCO's 0.5 bytes per pixel): flat
synthetic shapes decode twice as fast per pixel as a photo, which would make the decode floor a floor of
no real dataset. Their decode cost per megapixel is printed beside that of a real photo
(matplotlib's sample grace_hopper.jpg). Every timed run writes into a fresh folder, as the floor's
writes do (deleting a previous run's files is not part of the step).

Prints images/s, MB/s, the ratios to the baseline and the fraction of the floor (higher is better).

    $(python3 -m common.envs ensure fcos) bench/bench_uint8.py --tool fcos [--images 60]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.contract import load_tool  # noqa: E402
from common.demococo import make_mini_coco  # noqa: E402
from common.demovoc import make_mini_voc  # noqa: E402
from common.pipeline import preprocess_dataset  # noqa: E402


def recipe_style(images: list[Path], out: Path, spec) -> None:
    """The recipes' scripts: serial, float normalisation of the whole canvas, float32 (PSPNet: float16)
    files. EfficientDet's recipe is effdet's loader: PIL decodes (``Image.open(...).convert("RGB")``) and
    resizes into a mean-filled top-left canvas; FCOS's and PSPNet's decode (mmcv.imread = cv2.imread) and
    resize with cv2 into a centred, zero-padded one."""
    import cv2
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    c, height, width = spec.input.shape
    mean = np.asarray(spec.input.mean, np.float32) * spec.input.mean_std_scale
    std = np.asarray(spec.input.std, np.float32) * spec.input.mean_std_scale
    pil = spec.raw.get("preprocess", {}).get("resize") == "pil-bilinear"
    for path in images:
        if pil:
            with Image.open(path) as opened:
                source = opened.convert("RGB")
            scale = min(height / source.height, width / source.width)
            new_w, new_h = int(source.width * scale), int(source.height * scale)
            resized = np.asarray(source.resize((new_w, new_h), Image.BILINEAR))
            canvas = np.empty((height, width, c), np.float32)
            canvas[:] = np.round(mean)
            canvas[:new_h, :new_w] = resized
            canvas = (canvas - mean) / std
        else:
            img = cv2.imread(str(path))
            if spec.input.color == "RGB":
                img = img[:, :, ::-1]
            scale = min(height / img.shape[0], width / img.shape[1])
            new_w, new_h = int(img.shape[1] * scale), int(img.shape[0] * scale)
            top, left = (height - new_h) // 2, (width - new_w) // 2
            canvas = np.zeros((height, width, c), np.float32)
            resized = cv2.resize(img, (new_w, new_h)).astype(np.float32)
            canvas[top:top + new_h, left:left + new_w] = (resized - mean) / std
        canvas.transpose(2, 0, 1).astype(spec.input.dtype).tofile(out / f"{path.stem}.bin")


def decode_rate(images: list[Path], workers: int, decoder: str) -> float:
    """Images/s decoding ``images`` from disk with ``workers`` threads: cv2.imread or Pillow."""
    import cv2
    from PIL import Image

    def pillow(path: Path):
        with Image.open(path) as image:
            return image.convert("RGB")

    decode = pillow if decoder == "pillow" else (lambda path: cv2.imread(str(path)))
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(decode, images))
    return len(images) / (time.perf_counter() - start)


def write_rate(folder: Path, nbytes: int, count: int, workers: int) -> float:
    """MB/s of writing ``count`` fresh files of ``nbytes`` each into the page cache with ``workers`` threads,
    all kept until the end (what the data step's tensor files cost, without fsync): many fresh multi-MB
    files cost the kernel more per byte than rewriting a few large ones."""
    block = np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda i: block.tofile(folder / f"w{i}.bin"), range(count)))
    rate = count * nbytes / 1e6 / (time.perf_counter() - start)
    shutil.rmtree(folder)
    return rate


def timed_into_fresh_folder(fn, folder: Path) -> float:
    """Seconds ``fn(folder)`` took; the folder is removed afterwards, untimed."""
    seconds = _timed(lambda: fn(folder))
    shutil.rmtree(folder)
    return seconds


def decode_ms_per_megapixel(paths: list[Path], repeat: int) -> float:
    """Single-thread decode time per megapixel (best of ``repeat``), from bytes already in memory."""
    import cv2

    raws = [np.frombuffer(p.read_bytes(), np.uint8) for p in paths]
    megapixels = sum(np.prod(cv2.imdecode(r, cv2.IMREAD_COLOR).shape[:2]) for r in raws) / 1e6
    best = min(_timed(lambda: [cv2.imdecode(r, cv2.IMREAD_COLOR) for r in raws]) for _ in range(repeat))
    return best * 1e3 / megapixels


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def real_photo() -> Path | None:
    """grace_hopper.jpg from matplotlib's sample data (pinned in every tool env), or None."""
    try:
        import matplotlib
    except ImportError:
        return None
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return path if path.is_file() else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tool", default="fcos")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tool = load_tool(args.tool)
    spec = tool.SPEC
    n = args.images
    c, h, w = spec.input.shape
    float_bytes = c * h * w * np.dtype(spec.input.dtype).itemsize
    u8_bytes = c * h * w
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # the dataset's sizes (COCO about 640x480, VOC 500x375), so decoding and resizing cost what they cost there
        if spec.dataset.startswith("voc"):  # PSPNet: VOC's layout
            sides = (375, 500)
            data = make_mini_voc(root / "voc", n_images=n, seed=0, size_range=sides, photo_like=True)
            images = sorted((data / "JPEGImages").glob("*.jpg"))
        else:
            sides = (400, 640)
            data = make_mini_coco(root / "coco", n_images=n, seed=0, size_range=sides, photo_like=True)
            images = sorted((data / "val2017").glob("*.jpg"))
        preprocess_dataset(tool, data, root / "warm", workers=1, force=True)  # imports, page cache
        runs = {
            "recipe-style (baseline)": (lambda out: recipe_style(images, out, spec), float_bytes),
            "ours, float": (lambda out: preprocess_dataset(tool, data, out, workers=args.workers), float_bytes),
            "ours, uint8": (lambda out: preprocess_dataset(tool, data, out, workers=args.workers,
                                                           input_format="uint8"), u8_bytes),
        }
        sizes = sorted({float_bytes, u8_bytes})
        seconds = {name: float("inf") for name in runs}
        decode = {"cv2": 0.0, "pillow": 0.0}
        disk = {nbytes: 0.0 for nbytes in sizes}
        for _ in range(args.repeat):  # interleaved: a noisy moment costs every measurement alike
            for name, (fn, _) in runs.items():
                seconds[name] = min(seconds[name], timed_into_fresh_folder(fn, root / "run"))
            for decoder in decode:
                decode[decoder] = max(decode[decoder], decode_rate(images, args.workers, decoder))
            for nbytes in sizes:
                disk[nbytes] = max(disk[nbytes], write_rate(root / "disk", nbytes, n, args.workers))
        photo = real_photo()
        per_mp = {"these images": decode_ms_per_megapixel(images, args.repeat)}
        kb_per_image = sum(p.stat().st_size for p in images) / len(images) / 1e3
        if photo is not None:
            per_mp[f"a real photo ({photo.name})"] = decode_ms_per_megapixel([photo] * 10, args.repeat)
    base = n / seconds["recipe-style (baseline)"]
    fastest = max(decode.values())
    print(f"{args.tool}: {n} images with sides of {sides[0]}-{sides[1]} px -> {c}x{h}x{w}, {args.workers} workers, "
          f"{os.cpu_count()} cores, "
          f"best of {args.repeat} interleaved; floors: decode "
          + ", ".join(f"{rate:.0f} img/s ({decoder})" for decoder, rate in decode.items())
          + ", page-cache writes " + ", ".join(f"{rate:.0f} MB/s in {nbytes / 1e6:.1f} MB files"
                                               for nbytes, rate in disk.items()))
    print("  decode per megapixel, one thread, cv2: " + ", ".join(f"{name} {ms:.1f} ms" for name, ms in per_mp.items())
          + f" ({kb_per_image:.0f} KB per image here)")
    print("  floor = min(fastest decode, write rate / bytes per image); 'decode+write' = both on the same cores")
    for name, (_, nbytes) in runs.items():
        rate = n / seconds[name]
        writes = disk[nbytes] * 1e6 / nbytes
        floor = min(fastest, writes)
        shared = 1 / (1 / fastest + 1 / writes)
        print(f"  {name:<24} {rate:6.1f} img/s  {rate * nbytes / 1e6:6.0f} MB/s  {nbytes / 1e6:5.1f} MB/img  "
              f"x{rate / base:4.1f} vs baseline  {rate / floor:4.0%} of floor ({floor:.0f} img/s)  "
              f"{rate / shared:4.0%} of decode+write ({shared:.0f} img/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
