"""Accuracy evaluators shared by the tools: COCO detection/segmentation AP and VOC mIoU.

All evaluators follow detectron2's three-call protocol (``reset`` / ``process`` /
``evaluate``) so a tool's accuracy step is the same loop whatever the task, and images can
be streamed without holding every raw output in memory.

Values are percentages (0-100), the scale the published figures use. A figure that the
data cannot define (COCO AP for an area range with no ground truth, IoU of a class absent
from both prediction and ground truth) is ``nan``, never a made-up 0.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from common.errors import ToolError
from common.fsutil import read_json

#: COCO 2017 category ids of the 80 detection classes, in contiguous-index order.
#: Used when no annotation file is at hand (the ids are fixed by the dataset).
COCO80_CATEGORY_IDS: tuple[int, ...] = (
    tuple(range(1, 12)) + tuple(range(13, 26)) + (27, 28) + tuple(range(31, 45))
    + tuple(range(46, 66)) + (67, 70) + tuple(range(72, 83)) + tuple(range(84, 91))
)

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)

COCO_IOU_TYPES = ("bbox", "segm")
#: COCOeval.stats[0:6] in order, under the names mmdet/detectron2 users expect
COCO_STAT_NAMES = ("mAP", "AP50", "AP75", "APs", "APm", "APl")


class Evaluator(ABC):
    """The common protocol: feed one image at a time, then ask for dataset-level figures."""

    @abstractmethod
    def reset(self) -> None:
        """Forget everything processed so far."""

    @abstractmethod
    def process(self, key: Any, prediction: Any) -> None:
        """Accumulate one image's prediction."""

    @abstractmethod
    def evaluate(self) -> dict[str, float]:
        """Dataset-level metrics in percent."""


# --------------------------------------------------------------------------- COCO helpers

def _pycocotools():
    """Import pycocotools lazily: the VOC tool's environment does not need it."""
    try:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise ToolError("pycocotools is not installed: pip install pycocotools "
                        "(it is pinned in the tool's requirements.txt)") from None
    return COCO, COCOeval, mask_utils


def _load_coco_dataset(annotation_file: str | os.PathLike) -> dict:
    """Read and sanity-check a COCO ground-truth file, naming it in every error."""
    path = Path(annotation_file)
    if path.is_dir():
        raise ToolError(f"COCO annotation file {path} is a directory: pass the JSON file "
                        "(e.g. annotations/instances_val2017.json)")
    try:
        data = read_json(path, what="COCO annotation file")
    except PermissionError:
        raise ToolError(f"COCO annotation file {path} is not readable: fix its permissions") from None
    if not isinstance(data, dict):
        raise ToolError(f"COCO annotation file {path} is not a COCO dataset (top level is not an object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ToolError(
                f"COCO annotation file {path} has no '{key}' list: pass a ground-truth file "
                "such as instances_val2017.json (not image_info_test or a results file)")
    return data


def coco_category_ids(annotation_file: str | os.PathLike) -> list[int]:
    """Category ids sorted ascending: ``ids[i]`` is the COCO id of contiguous class index ``i``.

    Models trained with mmdet/detectron2 number the 80 classes 0..79 in this order.
    """
    data = _load_coco_dataset(annotation_file)
    try:
        return sorted(int(c["id"]) for c in data["categories"])
    except (KeyError, TypeError, ValueError):
        raise ToolError(f"COCO annotation file {annotation_file}: a category lacks an integer 'id'") from None


def coco80_class_index(ann: Mapping[str, Any], model: str) -> int:
    """The contiguous class index (0..79) of a COCO annotation's category id.

    A detector trained on COCO's 80 classes can only be scored on those ids; any other id (one of
    the 10 COCO leaves unused, or another dataset's) is refused, naming the annotation and ``model``.
    """
    cat = int(ann["category_id"])
    if cat not in COCO80_CATEGORY_IDS:
        raise ToolError(f"annotation {ann.get('id')} has category_id {cat}, which is not one of COCO's 80 "
                        f"category ids that {model} predicts: the annotation file is not COCO's")
    return COCO80_CATEGORY_IDS.index(cat)


def xyxy_to_xywh(boxes: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Corner boxes (x1, y1, x2, y2) -> COCO boxes (x, y, width, height), float64 (N, 4)."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ToolError(f"boxes must have shape (N, 4) in x1,y1,x2,y2 order, got {arr.shape}")
    out = arr.copy()
    out[:, 2:] = arr[:, 2:] - arr[:, :2]
    return out


def mask_to_rle(mask: np.ndarray) -> dict:
    """Binary (H, W) mask -> compressed COCO RLE with a JSON-safe str ``counts``."""
    _, _, mask_utils = _pycocotools()
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ToolError(f"a mask must be 2-D (H, W), got shape {m.shape}")
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def to_coco_results(image_id: int, boxes_xyxy: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                    category_ids: Sequence[int], masks_rle: Sequence[dict] | None = None) -> list[dict]:
    """Build COCO result dicts from one image's detections.

    ``labels`` are contiguous 0-based class indices, mapped through ``category_ids``
    (see :func:`coco_category_ids`).
    """
    xywh = xyxy_to_xywh(np.asarray(boxes_xyxy).reshape(-1, 4))
    scores = np.asarray(scores).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if not (len(xywh) == len(scores) == len(labels)):
        raise ToolError(f"image {image_id}: {len(xywh)} boxes, {len(scores)} scores and "
                        f"{len(labels)} labels do not match: the outputs were read with the wrong layout")
    if masks_rle is not None and len(masks_rle) != len(labels):
        raise ToolError(f"image {image_id}: {len(masks_rle)} masks for {len(labels)} detections")
    bad = labels[(labels < 0) | (labels >= len(category_ids))]
    if bad.size:
        raise ToolError(f"image {image_id}: class index {int(bad[0])} outside 0..{len(category_ids) - 1}: "
                        "the label offset (0- or 1-based) or the class count is wrong")
    results = []
    for i in range(len(labels)):
        res = {"image_id": int(image_id), "category_id": int(category_ids[labels[i]]),
               "bbox": [float(v) for v in xywh[i]], "score": float(scores[i])}
        if masks_rle is not None:
            res["segmentation"] = masks_rle[i]
        results.append(res)
    return results


# --------------------------------------------------------------------------- COCO evaluator

class CocoEvaluator(Evaluator):
    """COCO AP via pycocotools, on exactly the images processed (or the ``image_ids`` given).

    A subset run (``--limit``) is therefore scored on that subset, not penalised for the
    images it never saw. With ``image_ids`` the evaluated set is fixed up front: an image
    that is never processed counts as an image with no detections, and :attr:`missing`
    lists it so the report can say so.
    """

    def __init__(self, annotation_file: str | os.PathLike, iou_types: Iterable[str] = ("bbox",),
                 image_ids: Iterable[int] | None = None) -> None:
        self.annotation_file = Path(annotation_file)
        self.iou_types = tuple(iou_types)
        bad = [t for t in self.iou_types if t not in COCO_IOU_TYPES]
        if not self.iou_types or bad:
            raise ToolError(f"unsupported COCO iou type(s) {bad or '(none)'}: use bbox and/or segm")
        COCO, _, _ = _pycocotools()
        dataset = _load_coco_dataset(self.annotation_file)
        self._gt = COCO()
        self._gt.dataset = dataset
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                self._gt.createIndex()
        except (KeyError, TypeError) as err:
            raise ToolError(f"COCO annotation file {self.annotation_file} is malformed "
                            f"(missing field {err}): regenerate or re-download it") from None
        self._valid_ids = set(self._gt.getImgIds())
        #: images the annotation file lists (a run over fewer is a partial evaluation)
        self.num_images = len(dataset.get("images", []))
        self._cat_ids = set(self._gt.getCatIds())
        self._stem_to_id = {Path(img.get("file_name", "")).stem: img_id
                            for img_id, img in self._gt.imgs.items() if img.get("file_name")}
        self._fixed_ids: list[int] | None = None
        if image_ids is not None:
            ids = sorted({int(i) for i in image_ids})
            unknown = [i for i in ids if i not in self._valid_ids]
            if unknown:
                raise ToolError(f"image id {unknown[0]} is not in {self.annotation_file} "
                                f"({len(unknown)} unknown id(s)): use the annotation file of that split")
            self._fixed_ids = ids
        self._fixed_set = set(self._fixed_ids or ())
        #: pycocotools' printed summary per iou type, kept for logs/reports
        self.summaries: dict[str, str] = {}
        self.reset()

    def reset(self) -> None:
        self._results: list[dict] = []
        self._seen: set[int] = set()
        self.summaries = {}

    @property
    def image_ids(self) -> list[int]:
        """The images the next :meth:`evaluate` scores."""
        return list(self._fixed_ids) if self._fixed_ids is not None else sorted(self._seen)

    @property
    def missing(self) -> list[int]:
        """Fixed image ids never processed (always empty without ``image_ids``)."""
        return [i for i in (self._fixed_ids or []) if i not in self._seen]

    def resolve_image_id(self, key: int | str) -> int:
        """Map an image id or a file stem ("000000000139") to the annotation's image id."""
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            image_id = int(key)
        elif isinstance(key, str) and key in self._stem_to_id:
            image_id = self._stem_to_id[key]
        elif isinstance(key, str) and key.isdigit():
            image_id = int(key)
        else:
            raise ToolError(f"image '{key}' is not in {self.annotation_file}: "
                            "its file stem matches no image file_name")
        if image_id not in self._valid_ids:
            raise ToolError(f"image id {image_id} (from '{key}') is not in {self.annotation_file}: "
                            "use the annotation file of the split the images come from")
        if self._fixed_ids is not None and image_id not in self._fixed_set:
            raise ToolError(f"image id {image_id} (from '{key}') is outside the image_ids chosen for "
                            "this run")
        return image_id

    def process(self, key: int | str, prediction: Sequence[Mapping[str, Any]]) -> None:
        """Add one image's detections (COCO result dicts; ``image_id`` may be left out)."""
        image_id = self.resolve_image_id(key)
        if image_id in self._seen:
            raise ToolError(f"image id {image_id} was processed twice: each output file must be read once")
        self._seen.add(image_id)
        for det in prediction:
            self._results.append(self._normalise(image_id, det))

    def _normalise(self, image_id: int, det: Mapping[str, Any]) -> dict:
        """Plain-Python copy of a result dict, checked so pycocotools never asserts mid-run."""
        where = f"image {image_id}"
        try:
            given_id = det.get("image_id", image_id)
            if int(given_id) != image_id:
                raise ToolError(f"{where}: a detection carries image_id {given_id}: "
                                "outputs and images are mixed up")
            cat = int(det["category_id"])
            bbox = [float(v) for v in det["bbox"]]
            score = float(det["score"])
        except KeyError as err:
            raise ToolError(f"{where}: a detection lacks {err} (need category_id, bbox, score)") from None
        except (TypeError, ValueError) as err:
            raise ToolError(f"{where}: a detection has a non-numeric field ({err})") from None
        if cat not in self._cat_ids:
            raise ToolError(f"{where}: category_id {cat} is not in {self.annotation_file}: map contiguous "
                            "class indices through coco_category_ids()")
        if len(bbox) != 4 or not all(math.isfinite(v) for v in bbox) or bbox[2] < 0 or bbox[3] < 0:
            raise ToolError(f"{where}: bbox {bbox} is not a finite [x, y, width, height] with "
                            "width, height >= 0 (convert x1,y1,x2,y2 with xyxy_to_xywh)")
        if not math.isfinite(score):
            raise ToolError(f"{where}: score {score} is not finite: the model output is broken")
        out = {"image_id": image_id, "category_id": cat, "bbox": bbox, "score": score}
        segm = det.get("segmentation")
        if segm is not None:
            if not isinstance(segm, Mapping) or "counts" not in segm or "size" not in segm:
                raise ToolError(f"{where}: segmentation must be a compressed RLE dict (use mask_to_rle)")
            counts = segm["counts"]
            out["segmentation"] = {"size": [int(s) for s in segm["size"]],
                                   "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
        elif "segm" in self.iou_types:
            raise ToolError(f"{where}: segm evaluation needs a 'segmentation' RLE on every detection")
        return out

    def results(self) -> list[dict]:
        """All processed detections as JSON-safe COCO result dicts (for detections.json)."""
        return copy.deepcopy(self._results)

    def evaluate(self) -> dict[str, float]:
        """AP/AP50/AP75/APs/APm/APl per iou type, e.g. ``bbox_mAP``; percent, nan where undefined."""
        _, COCOeval, _ = _pycocotools()
        img_ids = self.image_ids
        if not img_ids:
            raise ToolError("no images were processed: nothing to evaluate (check the outputs directory)")
        metrics: dict[str, float] = {}
        self.summaries = {}
        for iou_type in self.iou_types:
            dets = [self._for_iou_type(d, iou_type) for d in self._results]
            buf = io.StringIO()
            try:
                with contextlib.redirect_stdout(buf):
                    dt = self._load_results(dets)
                    ev = COCOeval(self._gt, dt, iou_type)
                    ev.params.imgIds = img_ids
                    ev.evaluate()
                    ev.accumulate()
                    ev.summarize()
            except KeyError as err:
                raise ToolError(f"COCO annotation file {self.annotation_file}: an annotation lacks {err}, "
                                f"needed for {iou_type} evaluation (segm needs 'segmentation')") from None
            self.summaries[iou_type] = buf.getvalue()
            for name, value in zip(COCO_STAT_NAMES, ev.stats[: len(COCO_STAT_NAMES)]):
                # pycocotools writes -1 where no ground truth exists (e.g. no small objects)
                metrics[f"{iou_type}_{name}"] = float(value) * 100.0 if value >= 0 else float("nan")
        return metrics

    @staticmethod
    def _for_iou_type(det: dict, iou_type: str) -> dict:
        d = dict(det)
        if iou_type == "segm":
            # Without the box, pycocotools takes the mask area for the small/medium/large split
            # (with it, the box area), which is how COCO defines the ranges for masks.
            d.pop("bbox", None)
        else:
            d.pop("segmentation", None)
        return d

    def _load_results(self, dets: list[dict]):
        """``COCO.loadRes`` that accepts an empty list (pycocotools indexes dets[0])."""
        if dets:
            return self._gt.loadRes(dets)
        COCO, _, _ = _pycocotools()
        empty = COCO()
        empty.dataset = {"images": list(self._gt.dataset["images"]),
                         "categories": copy.deepcopy(self._gt.dataset["categories"]), "annotations": []}
        empty.createIndex()
        return empty


# --------------------------------------------------------------------------- VOC segmentation

class VocSegEvaluator(Evaluator):
    """Dataset-level IoU as mmseg 0.16 computes it for VOC.

    Per class, intersection, union, prediction area and ground-truth area are summed over
    all images (pixels whose ground truth is ``ignore_index`` are dropped first), then
    IoU = sum I / sum U and Acc = sum I / sum GT. A class with zero union (absent from both)
    has IoU nan; a class absent from the ground truth has Acc nan; a class predicted but
    absent from the ground truth has IoU 0. mIoU and mAcc are nan-means, aAcc = sum I / sum GT
    over all classes. Unlike mmseg (whose histogram silently drops out-of-range values), a
    label outside ``0..num_classes-1`` is an error here: it means a wrong class count or label map.
    """

    def __init__(self, num_classes: int = 21, ignore_index: int = 255,
                 class_names: Sequence[str] | None = None) -> None:
        if num_classes < 1:
            raise ToolError(f"num_classes must be >= 1, got {num_classes}")
        names = tuple(class_names) if class_names is not None else (
            VOC_CLASSES if num_classes == len(VOC_CLASSES) else tuple(str(i) for i in range(num_classes)))
        if len(names) != num_classes:
            raise ToolError(f"{len(names)} class names given for num_classes={num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = names
        self.reset()

    def reset(self) -> None:
        n = self.num_classes
        self.area_intersect = np.zeros(n, dtype=np.int64)
        self.area_pred = np.zeros(n, dtype=np.int64)
        self.area_label = np.zeros(n, dtype=np.int64)
        self._seen: set[str] = set()

    @property
    def area_union(self) -> np.ndarray:
        return self.area_pred + self.area_label - self.area_intersect

    @property
    def num_images(self) -> int:
        return len(self._seen)

    def process(self, key: str, prediction: tuple[np.ndarray, np.ndarray]) -> None:
        """Add one image: ``prediction`` is ``(pred_label_map, gt_label_map)``, both (H, W)."""
        stem = str(key)
        try:
            pred, gt = prediction
        except (TypeError, ValueError):
            raise ToolError(f"image {stem}: expected a (prediction, ground_truth) pair") from None
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.shape != gt.shape or pred.ndim != 2:
            raise ToolError(f"image {stem}: prediction shape {pred.shape} does not match ground truth "
                            f"{gt.shape} (both must be (H, W)): crop the padding and resize to the "
                            "original size")
        if stem in self._seen:
            raise ToolError(f"image {stem} was processed twice: each image must be evaluated once")
        for arr, what in ((pred, "prediction"), (gt, "ground truth")):
            if not np.issubdtype(arr.dtype, np.integer):
                raise ToolError(f"image {stem}: {what} label map has dtype {arr.dtype}, expected integers")
        valid = gt != self.ignore_index
        g = gt[valid].astype(np.int64)
        p = pred[valid].astype(np.int64)
        n = self.num_classes
        for arr, what in ((g, "ground truth"), (p, "prediction")):
            if arr.size and (arr.min() < 0 or arr.max() >= n):
                bad = int(arr.max() if arr.max() >= n else arr.min())
                raise ToolError(f"image {stem}: {what} holds label {bad} outside 0..{n - 1} "
                                f"(ignore index {self.ignore_index}): wrong class count or label map")
        self._seen.add(stem)
        self.area_intersect += np.bincount(g[p == g], minlength=n)
        self.area_pred += np.bincount(p, minlength=n)
        self.area_label += np.bincount(g, minlength=n)

    def per_class(self) -> tuple[np.ndarray, np.ndarray]:
        """(IoU, Acc) per class as fractions, nan where undefined."""
        inter = self.area_intersect.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / self.area_union
            acc = inter / self.area_label
        return iou, acc

    def evaluate(self) -> dict[str, float]:
        """mIoU, mAcc, aAcc and ``IoU.<class>`` / ``Acc.<class>``, in percent."""
        if not self._seen:
            raise ToolError("no images were processed: nothing to evaluate (check the outputs directory)")
        iou, acc = self.per_class()
        total = self.area_label.sum()
        metrics = {
            "mIoU": _nanmean(iou) * 100.0,
            "mAcc": _nanmean(acc) * 100.0,
            "aAcc": float(self.area_intersect.sum() / total) * 100.0 if total else float("nan"),
        }
        for name, v in zip(self.class_names, iou):
            metrics[f"IoU.{name}"] = float(v) * 100.0
        for name, v in zip(self.class_names, acc):
            metrics[f"Acc.{name}"] = float(v) * 100.0
        return metrics


def _nanmean(values: np.ndarray) -> float:
    """Mean over defined entries; nan (without numpy's warning) when none is defined."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")
