"""Ascend custom operators (BatchMultiClassNMS, RoiExtractor) on CPU.

The published Mask R-CNN and FCOS recipes replace NMS and multi-level RoIAlign with two Ascend
operators that ATC compiles but no other runtime knows. Each has three sides, one module each:

* :mod:`.reference` - the NumPy reference (:func:`batch_multiclass_nms`, :func:`roi_extractor`),
  the one definition of what the operator computes;
* :mod:`.torch_export` - the export side (``BatchMultiClassNMSOp``, ``RoiExtractorOp``,
  :func:`export_kwargs`) writing the node in the default ONNX domain, as ATC expects;
* :mod:`.ort_kernels` - the runtime side (:func:`to_cpu_graph`, :func:`register_ascend_ops`,
  :func:`cpu_session`) running such a graph in ONNX Runtime through onnxruntime-extensions.

This package re-exports their public names (tools import ``common.customops``); importing it
needs neither torch nor onnx.
"""

from __future__ import annotations

from typing import Any

from common.customops.ort_kernels import CPU_DOMAIN, cpu_session, register_ascend_ops, to_cpu_graph
from common.customops.reference import (
    ASCEND_OPS,
    NMS_ATTRS,
    NMS_OP,
    ROI_DEFAULTS,
    ROI_LEVELS,
    ROI_OP,
    batch_multiclass_nms,
    iou_one_to_many,
    iou_one_to_many_unguarded,
    nms_single_class,
    roi_align_one,
    roi_extractor,
    roi_levels,
)
from common.customops.torch_export import ascend_batch_nms, ascend_roi_extractor, export_kwargs, torch_op

__all__ = [
    "ASCEND_OPS", "CPU_DOMAIN", "NMS_ATTRS", "NMS_OP", "ROI_DEFAULTS", "ROI_LEVELS", "ROI_OP",
    "ascend_batch_nms", "ascend_roi_extractor", "batch_multiclass_nms", "cpu_session", "export_kwargs",
    "iou_one_to_many", "iou_one_to_many_unguarded", "nms_single_class", "register_ascend_ops", "roi_align_one",
    "roi_extractor", "roi_levels", "to_cpu_graph",
]


def __getattr__(name: str) -> Any:
    """``customops.BatchMultiClassNMSOp`` / ``RoiExtractorOp``: the torch classes, built on first access."""
    return torch_op(name)
