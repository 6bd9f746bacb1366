"""Datasets on disk: COCO val2017 and VOC2012 layouts, safe image and label-map reading."""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import ToolError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class CocoImage:
    image_id: int
    path: Path
    width: int
    height: int


def existing_root(root: str | os.PathLike, layout: str) -> Path:
    """``root`` as a Path when it is a directory; else the one-line error naming what DATA must be."""
    root = Path(root)
    if not root.is_dir():
        raise ToolError(f"dataset directory {root} not found: pass DATA={layout}")
    return root


@dataclass(frozen=True)
class CocoDataset:
    """``<root>/val2017/*.jpg`` + ``<root>/annotations/instances_val2017.json`` (the recipes' layout)."""

    root: Path
    annotation_file: Path
    images: tuple[CocoImage, ...]

    @classmethod
    def open(cls, root: str | os.PathLike, split: str = "val2017") -> CocoDataset:
        root = existing_root(root, f"<coco root> (holding {split}/ and annotations/)")
        image_dir = root / split
        ann = root / "annotations" / f"instances_{split}.json"
        if not image_dir.is_dir():
            raise ToolError(f"{image_dir} not found: DATA must be a COCO root holding {split}/ and annotations/")
        if not ann.is_file():
            raise ToolError(f"annotation file {ann} not found: put instances_{split}.json under {root}/annotations")
        try:
            data = json.loads(ann.read_text(encoding="utf-8"))
            records = data["images"]
            images = tuple(
                CocoImage(int(r["id"]), image_dir / r["file_name"], int(r["width"]), int(r["height"]))
                for r in records)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ToolError(f"annotation file {ann} is unreadable ({type(err).__name__}: {err}): "
                            "download it again") from None
        if not images:
            raise ToolError(f"annotation file {ann} lists no images: is it the right file?")
        if not any(image_dir.iterdir()):
            raise ToolError(f"image directory {image_dir} is empty: unpack {split}.zip there")
        return cls(root=root, annotation_file=ann, images=images)


@dataclass(frozen=True)
class VocImage:
    image_id: int  # position in the split list
    path: Path  # JPEGImages/<name>.jpg
    label_path: Path  # SegmentationClass/<name>.png


@dataclass(frozen=True)
class VocDataset:
    """``<root>/JPEGImages``, ``SegmentationClass``, ``ImageSets/Segmentation/<split>.txt`` (VOC2012).

    ``annotation_file`` is the split list: the file that says which images the metric covers.
    """

    root: Path
    annotation_file: Path
    images: tuple[VocImage, ...]

    @classmethod
    def open(cls, root: str | os.PathLike, split: str = "val") -> VocDataset:
        root = existing_root(root, "<VOC2012 root> (holding JPEGImages/, SegmentationClass/ and "
                                   "ImageSets/Segmentation/)")
        listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        for needed in (root / "JPEGImages", root / "SegmentationClass"):
            if not needed.is_dir():
                raise ToolError(f"{needed} not found: DATA must be a VOC2012 root (VOCdevkit/VOC2012)")
        if not listing.is_file():
            raise ToolError(f"split list {listing} not found: it comes with VOC2012 (ImageSets/Segmentation)")
        try:
            names = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as err:
            raise ToolError(f"split list {listing} is unreadable ({err}): download VOC2012 again") from None
        if not names:
            raise ToolError(f"split list {listing} names no images: is it the right file?")
        images = tuple(VocImage(i, root / "JPEGImages" / f"{n}.jpg", root / "SegmentationClass" / f"{n}.png")
                       for i, n in enumerate(names))
        missing = [im.label_path for im in images if not im.label_path.is_file()]
        if missing:
            raise ToolError(f"{len(missing)} label map(s) listed in {listing} are missing, first {missing[0]}: "
                            "unpack SegmentationClass completely")
        return cls(root=root, annotation_file=listing, images=images)


def open_dataset(kind: str, root: str | os.PathLike) -> CocoDataset | VocDataset:
    """The dataset a model is evaluated on, by its data file's ``dataset`` (``coco2017-val``, ``voc2012-val``)."""
    if kind.startswith("coco"):
        return CocoDataset.open(root)
    if kind.startswith("voc"):
        return VocDataset.open(root)
    raise ToolError(f"unknown dataset kind '{kind}' in the model's data file (valid: coco2017-val, voc2012-val)")


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """A ground-truth label map (palette or grayscale PNG) as class indices, uint8 (H, W).

    PIL, not cv2: cv2 would turn VOC's palette PNGs into colours instead of class indices.
    """
    from PIL import Image

    p = Path(path)
    try:
        with Image.open(p) as img:
            if img.mode not in ("P", "L"):
                raise ToolError(f"label map {p} is a {img.mode} image, not class indices (palette or grayscale PNG)")
            return np.asarray(img, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise ToolError(f"label map {p} not found") from None
    except (OSError, ValueError) as err:
        raise ToolError(f"label map {p} is corrupt ({err}): replace it") from None


def read_image_bgr(path: str | os.PathLike, *, exif: bool = False) -> np.ndarray:
    """Read an image as BGR uint8 (cv2's pixels; a plain JPEG decoded by the faster Pillow,
    :func:`decode_jpeg_with_pil`), turning unreadable files into a ToolError naming them.

    ``exif``: turn a JPEG by its EXIF orientation, as cv2.imread/mmcv.imread do (the FCOS and
    PSPNet recipes; the data file's ``exif_orientation``); by default the stored pixels are kept.
    """
    import cv2

    p = Path(path)
    if not p.is_file():
        raise ToolError(f"image {p} not found")
    try:
        raw = p.read_bytes()
    except OSError as err:
        raise ToolError(f"image {p} cannot be read ({err.strerror or err}): check its permissions, or pass "
                        "--skip-bad to leave it out") from None
    image = decode_jpeg_with_pil(raw, exif=exif)
    if image is None:
        data = np.frombuffer(raw, dtype=np.uint8)
        # IGNORE_ORIENTATION by default: COCO boxes are in stored-pixel orientation, and PIL-based upstreams do
        # not rotate
        flags = cv2.IMREAD_COLOR if exif else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
        image = cv2.imdecode(data, flags) if data.size else None
    if image is None or image.ndim != 3 or 0 in image.shape:
        raise ToolError(f"image {p} is corrupt or not an image: replace it, or pass --skip-bad to leave it out")
    if not image_complete(raw):
        raise ToolError(f"image {p} is corrupt (truncated: the file ends before its end-of-image marker): "
                        "replace it, or pass --skip-bad to leave it out")
    return image


def decode_jpeg_with_pil(raw: bytes, *, exif: bool = False) -> np.ndarray | None:
    """A complete colour or greyscale JPEG decoded by Pillow, as the BGR array cv2 would give; None for
    everything else, which :func:`read_image_bgr` leaves to cv2 (and to its checks and messages).

    Why: Pillow's wheels ship libjpeg-turbo with its SIMD code, opencv-python's decoder is 1.6x slower
    (3.5 against 5.6 ms for a 640x480 photo here), and decoding is the largest part of the data step.
    Both are libjpeg-turbo's default decoder (integer IDCT, fancy upsampling): the pixels are the same,
    bit for bit (tests/common/test_decode.py, on every sampling, progressive, greyscale, odd sizes).
    Left to cv2: CMYK and other modes (cv2 converts them its own way), truncated or broken files, and,
    with ``exif``, a JPEG whose EXIF orientation is not 1 (cv2's rotation rule stays the one applied).
    """
    if raw[:3] != b"\xff\xd8\xff":
        return None
    try:
        import cv2
        from PIL import Image
    except ImportError:
        return None
    try:
        with Image.open(io.BytesIO(raw), formats=("JPEG",)) as image:
            if image.mode not in ("RGB", "L") or (exif and image.getexif().get(_EXIF_ORIENTATION, 1) != 1):
                return None
            image.load()
            rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    except Exception:  # truncated, corrupt, a decompression bomb: cv2 and the checks after it decide
        return None
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


_EXIF_ORIENTATION = 0x0112


#: in a JPEG scan, the first byte pair that is a marker: FF followed by neither a stuffed 00, a restart
#: marker (D0-D7) nor a fill byte (FF)
_JPEG_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_complete(raw: bytes) -> bool:
    """False for a JPEG or PNG cut short, which cv2 still decodes (the missing part comes out grey).

    PIL and the upstream loaders refuse such files, so we do too. The rule is structural, not a
    second decode: a JPEG's segments and scans must reach its end-of-image marker (FFD9), a PNG's
    chunks its IEND chunk; bytes after those are allowed. Other formats are taken as decoded.
    """
    if raw[:2] == b"\xff\xd8":
        return _jpeg_complete(raw)
    if raw[:8] == _PNG_SIGNATURE:
        return _png_complete(raw)
    return True


def _jpeg_complete(raw: bytes) -> bool:
    """Walk the marker segments (skipping embedded thumbnails by their lengths) up to EOI."""
    pos, size = 2, len(raw)
    while pos + 2 <= size:
        if raw[pos] != 0xFF or raw[pos + 1] == 0xFF:  # garbage or fill bytes between segments
            pos = raw.find(b"\xff", pos + 1)
            if pos < 0:
                return False
            continue
        marker = raw[pos + 1]
        if marker == 0xD9:
            return True
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        if pos + 4 > size:
            return False
        pos += 2 + int.from_bytes(raw[pos + 2:pos + 4], "big")
        if marker == 0xDA:  # start of scan: entropy-coded data runs up to the next real marker
            found = _JPEG_SCAN_END.search(raw, pos)
            if found is None:
                return False
            pos = found.start()
    return False


def _png_complete(raw: bytes) -> bool:
    """Walk the chunks (length, type, data, CRC) up to a whole IEND chunk."""
    pos, size = len(_PNG_SIGNATURE), len(raw)
    while pos + 8 <= size:
        length = int.from_bytes(raw[pos:pos + 4], "big")
        kind = raw[pos + 4:pos + 8]
        pos += 12 + length
        if kind == b"IEND":
            return pos <= size
    return False
