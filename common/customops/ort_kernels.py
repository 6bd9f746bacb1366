"""Runtime side of the Ascend custom operators on CPU: rewrite a graph's Ascend nodes into
onnxruntime-extensions' custom domain (:func:`to_cpu_graph`), register the NumPy references as their
kernels (:func:`register_ascend_ops`) and open an ONNX Runtime session (:func:`cpu_session`).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Sequence

from common.customops.reference import (
    ASCEND_OPS,
    NMS_ATTRS,
    NMS_OP,
    ONNX_FLOAT,
    ONNX_FLOAT16,
    ROI_DEFAULTS,
    ROI_LEVELS,
    ROI_OP,
    batch_multiclass_nms,
    roi_extractor,
)
from common.errors import ToolError

#: onnxruntime-extensions runs Python operators only from this domain
CPU_DOMAIN = "ai.onnx.contrib"
_DEFAULT_DOMAINS = ("", "ai.onnx")



def _subgraphs(graph):
    """The graph and every subgraph nested in its nodes (If/Loop/Scan bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == attr.GRAPH:
                yield from _subgraphs(attr.g)
            elif attr.type == attr.GRAPHS:
                for sub in attr.graphs:
                    yield from _subgraphs(sub)


def _set_attrs(node, values: dict[str, Any]) -> None:
    """Replace ``node``'s attributes with ``values`` typed exactly as the CPU kernels declare them."""
    from onnx import helper

    del node.attribute[:]
    node.attribute.extend(helper.make_attribute(k, v) for k, v in values.items())


def _normalise_nms(node) -> None:
    from onnx import helper

    label = f"{NMS_OP} node '{node.name or node.output[0]}'"
    if len(node.input) != 2 or len(node.output) != 4:
        raise ToolError(f"{label} has {len(node.input)} inputs / {len(node.output)} outputs; the CPU kernel "
                        "supports boxes+scores -> 4 outputs only (no clip_window / num_valid_boxes)")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    missing = [k for k in NMS_ATTRS if k not in attrs]
    if missing:
        raise ToolError(f"{label} lacks attribute(s) {', '.join(missing)}: re-export with all four set")
    _set_attrs(node, {"score_threshold": float(attrs["score_threshold"]),
                      "iou_threshold": float(attrs["iou_threshold"]),
                      "max_size_per_class": int(attrs["max_size_per_class"]),
                      "max_total_size": int(attrs["max_total_size"])})


def _normalise_roi(node) -> None:
    from onnx import helper

    label = f"{ROI_OP} node '{node.name or node.output[0]}'"
    if len(node.input) != ROI_LEVELS + 1:
        raise ToolError(f"{label} has {len(node.input)} inputs; the CPU kernel takes "
                        f"{ROI_LEVELS} FPN maps + rois")
    attrs = dict(ROI_DEFAULTS)
    attrs.update({a.name: helper.get_attribute_value(a) for a in node.attribute})
    mode = attrs["pool_mode"].decode() if isinstance(attrs["pool_mode"], bytes) else str(attrs["pool_mode"])
    if mode != "avg":
        raise ToolError(f"{label} has pool_mode '{mode}': Ascend RoiExtractor supports only 'avg'")
    scales = attrs["spatial_scale"]
    if isinstance(scales, (bytes, str)):  # already converted by an earlier to_cpu_graph
        scales = (scales.decode() if isinstance(scales, bytes) else scales).split(",")
    scales = [float(s) for s in scales]
    if len(scales) != ROI_LEVELS:
        raise ToolError(f"{label} has {len(scales)} spatial_scale values for {ROI_LEVELS} feature maps: "
                        "give one per level")
    # the Python-op API has no list attributes: carry the scales as text
    _set_attrs(node, {"finest_scale": int(attrs["finest_scale"]),
                      "roi_scale_factor": float(attrs["roi_scale_factor"]),
                      "spatial_scale": ",".join(repr(s) for s in scales),
                      "pooled_height": int(attrs["pooled_height"]),
                      "pooled_width": int(attrs["pooled_width"]),
                      "sample_num": int(attrs["sample_num"]), "pool_mode": mode,
                      "aligned": int(bool(attrs["aligned"]))})


def _is_ascend(node) -> bool:
    return node.op_type in ASCEND_OPS and node.domain in _DEFAULT_DOMAINS + (CPU_DOMAIN,)


def _float_inputs(graph) -> None:
    """Feed the custom nodes float32: the Python-op API rejects float16 tensors.

    A Cast-to-float16 whose output only custom nodes read becomes Cast-to-float32; one that also
    feeds other nodes keeps its type and the custom node gets its own float32 Cast. Nodes are
    tracked by position because protobuf wrappers have no stable identity.
    """
    from onnx import helper

    nodes = list(graph.node)
    producer = {out: i for i, n in enumerate(nodes) for out in n.output}
    readers: dict[str, set[int]] = {}
    for i, n in enumerate(nodes):
        for name in n.input:
            readers.setdefault(name, set()).add(i)
    custom = {i for i, n in enumerate(nodes) if _is_ascend(n)}
    graph_outputs = {v.name for v in graph.output}
    taken = {name for n in nodes for name in list(n.input) + list(n.output)}
    taken |= {v.name for v in list(graph.input) + list(graph.output) + list(graph.value_info)}
    retyped: set[str] = set()
    inserted: dict[int, list] = {}  # custom node position -> float32 Casts to place before it
    for i in sorted(custom):
        node = nodes[i]
        for slot, name in enumerate(node.input):
            cast = nodes[producer[name]] if name in producer else None
            if cast is None or cast.op_type != "Cast" or cast.domain not in _DEFAULT_DOMAINS:
                continue
            to = next((a for a in cast.attribute if a.name == "to"), None)
            if to is None or to.i != ONNX_FLOAT16:
                continue
            if readers.get(name, set()) <= custom and name not in graph_outputs:
                to.i = ONNX_FLOAT
                retyped.add(name)
                continue
            new_name, k = f"{name}_float32", 1
            while new_name in taken:
                new_name, k = f"{name}_float32_{k}", k + 1
            taken.add(new_name)
            inserted.setdefault(i, []).append(
                helper.make_node("Cast", [cast.input[0]], [new_name], to=ONNX_FLOAT, name=f"{new_name}_cast"))
            node.input[slot] = new_name
    if inserted:
        ordered = []
        for i, n in enumerate(nodes):
            ordered.extend(inserted.get(i, []))
            ordered.append(type(n).FromString(n.SerializeToString()))
        del graph.node[:]
        graph.node.extend(ordered)
    for value in graph.value_info:
        if value.name in retyped and value.type.HasField("tensor_type"):
            value.type.tensor_type.elem_type = ONNX_FLOAT


def to_cpu_graph(model):
    """Copy of ``model`` whose Ascend custom nodes run in ONNX Runtime with :func:`register_ascend_ops`.

    Moves BatchMultiClassNMS / RoiExtractor (found by op type) into domain ``ai.onnx.contrib`` and
    adds that opset import, rewrites their attributes into the types the CPU kernels declare
    (filling RoiExtractor's documented defaults, spatial_scale as text) and turns float16 Casts
    feeding them into float32. A graph without these ops comes back as an unchanged copy.
    """
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    found = 0
    for graph in _subgraphs(out.graph):
        custom = [n for n in graph.node if _is_ascend(n)]
        for node in custom:
            (_normalise_nms if node.op_type == NMS_OP else _normalise_roi)(node)
            node.domain = CPU_DOMAIN
        if custom:
            _float_inputs(graph)
        found += len(custom)
    if found and not any(o.domain == CPU_DOMAIN for o in out.opset_import):
        out.opset_import.append(onnx.helper.make_opsetid(CPU_DOMAIN, 1))
    return out


_REGISTERED = False
_REGISTER_LOCK = threading.Lock()


def _nms_kernel(boxes, scores, **attrs):
    return batch_multiclass_nms(boxes, scores, score_threshold=attrs["score_threshold"],
                                iou_threshold=attrs["iou_threshold"],
                                max_size_per_class=attrs["max_size_per_class"],
                                max_total_size=attrs["max_total_size"])


def _roi_kernel(*inputs, **attrs):
    return roi_extractor(list(inputs[:-1]), inputs[-1], pooled_height=attrs["pooled_height"],
                         pooled_width=attrs["pooled_width"],
                         spatial_scale=[float(s) for s in attrs["spatial_scale"].split(",")],
                         finest_scale=attrs["finest_scale"], sample_num=attrs["sample_num"],
                         aligned=bool(attrs["aligned"]), roi_scale_factor=attrs["roi_scale_factor"])


def register_ascend_ops() -> None:
    """Register the NumPy kernels as onnxruntime-extensions Python ops (once per process).

    Must run before a session loads ``onnxruntime_extensions.get_library_path()``; calling it
    again is a no-op (a second registration would add a duplicate definition).
    """
    global _REGISTERED
    with _REGISTER_LOCK:
        if _REGISTERED:
            return
        from onnxruntime_extensions import PyCustomOpDef as T
        from onnxruntime_extensions import onnx_op

        onnx_op(op_type=NMS_OP, inputs=[T.dt_float, T.dt_float],
                outputs=[T.dt_float, T.dt_float, T.dt_float, T.dt_int32],
                attrs={"score_threshold": T.dt_float, "iou_threshold": T.dt_float,
                       "max_size_per_class": T.dt_int64, "max_total_size": T.dt_int64})(_nms_kernel)
        onnx_op(op_type=ROI_OP, inputs=[T.dt_float] * (ROI_LEVELS + 1), outputs=[T.dt_float],
                attrs={"finest_scale": T.dt_int64, "roi_scale_factor": T.dt_float,
                       "spatial_scale": T.dt_string,
                       "pooled_height": T.dt_int64, "pooled_width": T.dt_int64, "sample_num": T.dt_int64,
                       "pool_mode": T.dt_string, "aligned": T.dt_int64})(_roi_kernel)
        _REGISTERED = True


def cpu_session(model: str | os.PathLike | Any, providers: Sequence[str] | None = None, options: Any = None):
    """ONNX Runtime session for an ONNX file or ModelProto, Ascend custom ops included.

    Applies :func:`to_cpu_graph`, registers the kernels and the onnxruntime-extensions library;
    works unchanged for graphs without custom ops. ``options``: the caller's ``ort.SessionOptions``.
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise ToolError(f"ONNX model {path} not found: export it first or fix the path")
        try:
            proto = onnx.load(str(path))
        except Exception as err:
            raise ToolError(f"ONNX model {path} cannot be read ({type(err).__name__}): "
                            "re-export it") from None
        label = str(path)
    else:
        proto, label = model, "in-memory ONNX model"
    cpu = to_cpu_graph(proto)
    register_ascend_ops()
    options = options or ort.SessionOptions()
    options.log_severity_level = 3
    options.register_custom_ops_library(get_library_path())
    try:
        return ort.InferenceSession(cpu.SerializeToString(), sess_options=options,
                                    providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as err:
        raise ToolError(f"ONNX Runtime cannot load {label}: {' '.join(str(err).split())[:300]}") from None
