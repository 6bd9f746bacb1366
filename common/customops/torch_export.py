"""Export side of the Ascend custom operators: ``torch.autograd.Function`` classes whose ``symbolic``
writes the node in the default ONNX domain (as ATC expects), and :func:`export_kwargs`.

The classes are built on first access so that importing this module never needs torch; their
forward runs the NumPy reference, so a traced model computes what the operator computes.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from typing import Any, Iterator, Sequence

from common.customops.reference import NMS_OP, ONNX_FLOAT, ONNX_FLOAT16, ROI_OP, batch_multiclass_nms, roi_extractor

_TORCH_OPS: dict[str, Any] = {}
_TORCH_LOCK = threading.Lock()


@contextlib.contextmanager
def _quiet_tracer(torch) -> Iterator[None]:
    """Hide the tracer's numpy warnings: the exporter replaces the whole forward by ``symbolic``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def _build_torch_ops() -> dict[str, Any]:
    """Create the autograd Functions on first use, so importing this module never needs torch."""
    import torch

    class BatchMultiClassNMSOp(torch.autograd.Function):
        """``apply(boxes, scores, score_threshold, iou_threshold, max_size_per_class, max_total_size,
        cast_fp16=False)`` -> (nmsed_boxes, nmsed_scores, nmsed_classes, nmsed_num).

        ``cast_fp16`` adds the recipes' Cast-to-float16 on both inputs (the 310 kernel takes
        float16 only) and casts the three float outputs back to float32 so the rest of the graph
        keeps one dtype.
        """

        @staticmethod
        def forward(ctx, boxes, scores, score_threshold, iou_threshold, max_size_per_class, max_total_size,
                    cast_fp16=False):
            with _quiet_tracer(torch):
                outs = batch_multiclass_nms(
                    boxes.detach().cpu().float().numpy(), scores.detach().cpu().float().numpy(),
                    score_threshold=score_threshold, iou_threshold=iou_threshold,
                    max_size_per_class=max_size_per_class, max_total_size=max_total_size)
                return tuple(torch.from_numpy(o).to(boxes.device) for o in outs)

        @staticmethod
        def symbolic(g, boxes, scores, score_threshold, iou_threshold, max_size_per_class, max_total_size,
                     cast_fp16=False):
            if cast_fp16:
                boxes = g.op("Cast", boxes, to_i=ONNX_FLOAT16)
                scores = g.op("Cast", scores, to_i=ONNX_FLOAT16)
            outs = g.op(NMS_OP, boxes, scores, score_threshold_f=float(score_threshold),
                        iou_threshold_f=float(iou_threshold), max_size_per_class_i=int(max_size_per_class),
                        max_total_size_i=int(max_total_size), outputs=4)
            if cast_fp16:
                outs = [g.op("Cast", o, to_i=ONNX_FLOAT) for o in outs[:3]] + [outs[3]]
            return tuple(outs)

    class RoiExtractorOp(torch.autograd.Function):
        """``apply(rois, pooled_height, pooled_width, spatial_scale, finest_scale, sample_num, aligned,
        *features)`` -> (K, C, pooled_height, pooled_width); the node's inputs are features..., rois."""

        @staticmethod
        def forward(ctx, rois, pooled_height, pooled_width, spatial_scale, finest_scale, sample_num, aligned,
                    *features):
            with _quiet_tracer(torch):
                out = roi_extractor([f.detach().cpu().float().numpy() for f in features],
                                    rois.detach().cpu().float().numpy(), pooled_height=pooled_height,
                                    pooled_width=pooled_width, spatial_scale=spatial_scale,
                                    finest_scale=finest_scale, sample_num=sample_num, aligned=bool(aligned))
                return torch.from_numpy(out).to(features[0].device)

        @staticmethod
        def symbolic(g, rois, pooled_height, pooled_width, spatial_scale, finest_scale, sample_num, aligned,
                     *features):
            return g.op(ROI_OP, *features, rois, finest_scale_i=int(finest_scale),
                        roi_scale_factor_f=0.0, spatial_scale_f=[float(s) for s in spatial_scale],
                        pooled_height_i=int(pooled_height), pooled_width_i=int(pooled_width),
                        sample_num_i=int(sample_num), pool_mode_s="avg", aligned_i=int(bool(aligned)))

    return {"BatchMultiClassNMSOp": BatchMultiClassNMSOp, "RoiExtractorOp": RoiExtractorOp}


def _torch_ops() -> dict[str, Any]:
    with _TORCH_LOCK:
        if not _TORCH_OPS:
            _TORCH_OPS.update(_build_torch_ops())
    return _TORCH_OPS


def torch_op(name: str) -> Any:
    """``BatchMultiClassNMSOp`` or ``RoiExtractorOp``, built on first use (AttributeError otherwise,
    so it serves as a module ``__getattr__``)."""
    if name in ("BatchMultiClassNMSOp", "RoiExtractorOp"):
        return _torch_ops()[name]
    raise AttributeError(f"module 'common.customops' has no attribute {name!r}")


__getattr__ = torch_op  # torch_export.BatchMultiClassNMSOp works too


def ascend_batch_nms(boxes, scores, *, score_threshold: float, iou_threshold: float, max_size_per_class: int,
                     max_total_size: int, cast_fp16: bool = False):
    """Keyword front end of ``BatchMultiClassNMSOp.apply`` for model patches (torch tensors in and out)."""
    op = _torch_ops()["BatchMultiClassNMSOp"]
    return op.apply(boxes, scores, float(score_threshold), float(iou_threshold), int(max_size_per_class),
                    int(max_total_size), bool(cast_fp16))


def ascend_roi_extractor(features, rois, *, pooled_height: int, pooled_width: int,
                         spatial_scale: Sequence[float], finest_scale: int = 56, sample_num: int = 0,
                         aligned: bool = False):
    """Keyword front end of ``RoiExtractorOp.apply`` for model patches (torch tensors in and out)."""
    return _torch_ops()["RoiExtractorOp"].apply(rois, int(pooled_height), int(pooled_width),
                                                tuple(float(s) for s in spatial_scale), int(finest_scale),
                                                int(sample_num), int(bool(aligned)), *features)


def export_kwargs(opset_version: int = 11) -> dict[str, Any]:
    """Keyword arguments ``torch.onnx.export`` needs for graphs holding the Ascend custom ops.

    The nodes live in the default domain (ATC requires it), which the ONNX checker rejects, so the
    checker is switched off where the exporter allows it (torch 1.8: ``enable_onnx_checker``; the
    recipes instead hand-edited torch). Default-domain ops need no ``custom_opsets`` entry. Newer
    torch (no such flag) gets ``dynamo=False`` where that exists, for the TorchScript exporter whose
    ``symbolic`` hooks this module uses; only torch 1.8 is verified here.
    """
    import inspect

    import torch

    params = inspect.signature(torch.onnx.export).parameters
    kwargs: dict[str, Any] = {"opset_version": opset_version,
                              "operator_export_type": torch.onnx.OperatorExportTypes.ONNX}
    if "enable_onnx_checker" in params:
        kwargs["enable_onnx_checker"] = False
    if "dynamo" in params:
        kwargs["dynamo"] = False
    return kwargs
