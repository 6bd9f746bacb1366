"""ONNX graph tools used between export and ATC.

Every published recipe patches its ONNX file with a one-off script that edits hard-coded node
names or indices (``Concat_742``, "the first Pad initializer"), which breaks on any re-export.
The edits here find what they fix by structure (op type, constant values, inferred dtypes), copy
the model instead of mutating the caller's proto, and return how many places they changed so a
tool can refuse a fix that found nothing when it expected something.

Written against onnx 1.10 and only uses APIs that still exist in current onnx releases.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from common.errors import ToolError
from common.fsutil import atomic_path

#: domains whose operators belong to the standard ONNX registry ("" and "ai.onnx" are the same domain)
DEFAULT_DOMAINS = ("", "ai.onnx")
FLOAT_TYPES = (TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.BFLOAT16)
#: private domain that hides unregistered default-domain ops from onnxsim's checker
_HIDDEN_DOMAIN = "ascend.hidden"
_PROTOBUF_LIMIT = 2**31 - 1


# --------------------------------------------------------------------------- files

def load(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file; a missing, unreadable or non-ONNX file is a one-line ToolError."""
    p = Path(path)
    if not p.exists():
        raise ToolError(f"ONNX model {p} not found: export it first or fix the path")
    if p.is_dir():
        raise ToolError(f"ONNX model {p} is a directory: pass the .onnx file inside it")
    try:
        model = onnx.load(str(p))
    except Exception as err:  # protobuf DecodeError, missing external data, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ToolError(f"ONNX model {p} cannot be read ({first}): re-export it") from None
    # random bytes sometimes decode as an (empty) protobuf message: require a real graph
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.node:
        raise ToolError(f"ONNX model {p} is not a valid ONNX model (no graph): re-export it")
    return model


def save(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write ``model`` atomically so an interrupted run never leaves a truncated .onnx."""
    final = Path(path)
    if model.ByteSize() > _PROTOBUF_LIMIT:
        raise ToolError(f"ONNX model for {final} is larger than 2 GB: protobuf cannot store it in one file")
    with atomic_path(final) as tmp:
        tmp.write_bytes(model.SerializeToString())
    return final


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _model_name(model: onnx.ModelProto, name: str | None) -> str:
    return name or model.graph.name or "ONNX model"


def default_opset(model: onnx.ModelProto) -> int:
    """Opset version of the default ONNX domain (ATC and the Pad rules depend on it)."""
    for imp in model.opset_import:
        if imp.domain in DEFAULT_DOMAINS:
            return int(imp.version)
    return 0


# --------------------------------------------------------------------------- walking

def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every nested subgraph (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for sub in _subgraphs(node):
            yield from _all_graphs(sub)


def _names_used_inside(node: onnx.NodeProto) -> set[str]:
    """Every tensor name read anywhere inside ``node``'s subgraphs (outer-scope reads included)."""
    used: set[str] = set()
    for sub in _subgraphs(node):
        for g in _all_graphs(sub):
            for n in g.node:
                used.update(i for i in n.input if i)
            used.update(o.name for o in g.output)
    return used


def _unique_name(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def _all_tensor_names(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for g in _all_graphs(graph):
        names.update(i.name for i in g.input)
        names.update(t.name for t in g.initializer)
        for n in g.node:
            names.update(n.input)
            names.update(n.output)
            if n.name:
                names.add(n.name)
    return names


def _attr(node: onnx.NodeProto, name: str) -> onnx.AttributeProto | None:
    for a in node.attribute:
        if a.name == name:
            return a
    return None


# --------------------------------------------------------------------------- names / outputs

def input_names(model: onnx.ModelProto) -> list[str]:
    """Real graph inputs, without initializers that old exporters also list as inputs."""
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def output_names(model: onnx.ModelProto) -> list[str]:
    return [o.name for o in model.graph.output]


def select_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """Keep only the named graph outputs, in the given order, and drop nodes nothing needs any more.

    ATC's ``--out_nodes`` and ais_bench's output files follow graph-output order, so tools pin it
    here instead of relying on exporter order.
    """
    wanted = [names] if isinstance(names, str) else list(names)
    current = {o.name: o for o in model.graph.output}
    unknown = [n for n in wanted if n not in current]
    if unknown:
        raise ToolError(
            f"output(s) {', '.join(unknown)} not in {_model_name(model, None)}: "
            f"its outputs are {', '.join(current) or '(none)'}")
    dupes = sorted({n for n in wanted if wanted.count(n) > 1})
    if dupes:
        raise ToolError(f"output(s) {', '.join(dupes)} requested twice: list each output once")
    if not wanted:
        raise ToolError("no outputs selected: name at least one graph output")
    out = _copy(model)
    kept = [onnx.ValueInfoProto() for _ in wanted]
    for proto, name in zip(kept, wanted):
        proto.CopyFrom(current[name])
    del out.graph.output[:]
    out.graph.output.extend(kept)
    _prune(out.graph)
    return out


def _prune(graph: onnx.GraphProto) -> None:
    """Remove nodes, initializers and value_infos that no graph output depends on."""
    needed = {o.name for o in graph.output}
    init_names = {t.name for t in graph.initializer}
    live: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output if o):
            live.append(node)
            needed.update(i for i in node.input if i)
            needed.update(_names_used_inside(node))
    live.reverse()
    _keep_only(graph.node, live)
    _keep_only(graph.initializer, [t for t in graph.initializer if t.name in needed])
    # real inputs stay (the interface must not change); initializers listed as inputs go with them
    _keep_only(graph.input, [i for i in graph.input if i.name not in init_names or i.name in needed])
    _keep_only(graph.value_info, [v for v in graph.value_info if v.name in needed])


def _keep_only(field, kept: list) -> None:
    """Make a repeated protobuf field hold exactly ``kept`` (a subsequence of it)."""
    if len(kept) != len(field):
        del field[:]
        field.extend(kept)


# --------------------------------------------------------------------------- simplify

def _hide_unregistered_ops(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Move default-domain ops without an ONNX schema (Ascend custom ops) into a private domain.

    onnxsim runs ``onnx.checker`` which rejects unknown ops in the default domain but ignores
    custom domains; the nodes are moved back after simplification.
    """
    opset = default_opset(model)
    hidden = []
    for g in _all_graphs(model.graph):
        for node in g.node:
            if node.domain in DEFAULT_DOMAINS and not _has_schema(node.op_type, opset, ""):
                node.domain = _HIDDEN_DOMAIN
                hidden.append(node)
    if hidden:
        model.opset_import.append(helper.make_opsetid(_HIDDEN_DOMAIN, 1))
    return hidden


def _restore_hidden_ops(model: onnx.ModelProto) -> None:
    for g in _all_graphs(model.graph):
        for node in g.node:
            if node.domain == _HIDDEN_DOMAIN:
                node.domain = ""
    keep = [imp for imp in model.opset_import if imp.domain != _HIDDEN_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(keep)


#: onnxsim passes never run: ``eliminate_duplicate_initializer`` calls onnx IR's
#: ``Graph::eraseInitializerAndInput``, which reads the Value it has just freed (use after free,
#: fixed upstream in onnx PR #7614, after onnxsim 0.4.36; onnxsim issue #341). Whether that read
#: crashes (``eraseOutput: Assertion outputs_[i]->uses().empty()``) depends on heap contents, so a
#: graph may pass at one input size and fail at another (FCOS TARGET=onnx at 800x1333, whose three
#: FPN levels above nms_pre each bring a TopK k=1000 constant). :func:`merge_duplicate_initializers`
#: does the pass's job instead.
SKIPPED_ONNXSIM_PASSES = ("eliminate_duplicate_initializer",)


def merge_duplicate_initializers(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Let readers of equal initializers share the first one and drop the copies.

    Exporters emit one constant per call site (a TopK k, a Clip bound, a Reshape shape), so equal
    tensors repeat; merging them lets onnxsim's common-subexpression pass see identical nodes.
    Initializers that are also graph inputs (overridable defaults) or graph outputs are kept.
    Returns ``(new_model, number_of_initializers_removed)``.
    """
    out = _copy(model)
    graph = out.graph
    fixed = {i.name for i in graph.input} | {o.name for o in graph.output}
    first: dict[tuple, str] = {}
    alias: dict[str, str] = {}
    for t in graph.initializer:
        if t.name in fixed:
            continue
        key = (t.data_type, tuple(t.dims), numpy_helper.to_array(t).tobytes())
        if key in first:
            alias[t.name] = first[key]
        else:
            first[key] = t.name
    if not alias:
        return out, 0
    for g in _all_graphs(graph):
        for node in g.node:
            for k, name in enumerate(node.input):
                if name in alias:
                    node.input[k] = alias[name]
    _keep_only(graph.initializer, [t for t in graph.initializer if t.name not in alias])
    _keep_only(graph.value_info, [v for v in graph.value_info if v.name not in alias])
    return out, len(alias)


def simplify(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None, *,
             name: str | None = None, check_n: int = 0, skip_shape_inference: bool = False,
             custom_lib: str | None = None) -> onnx.ModelProto:
    """Fold constants and fuse ops with onnxsim (0.4.x), the step every recipe runs before ATC.

    ``input_shapes`` fixes input dims (``{"input": [1, 3, 512, 512]}``). ``check_n`` random runs
    compare the result with the original in ONNX Runtime (0 = structural check only, because
    graphs with Ascend custom ops cannot run there; tools check parity separately). Equal
    initializers are merged here, before and after onnxsim, instead of by onnxsim's own pass
    (see :data:`SKIPPED_ONNXSIM_PASSES`).
    """
    label = _model_name(model, name)
    try:
        import onnxsim
    except ImportError:
        raise ToolError(
            "onnxsim is not installed: pip install onnx-simplifier (pinned in the tool's requirements.txt)"
        ) from None
    shapes = {k: [int(d) for d in v] for k, v in (input_shapes or {}).items()}
    unknown = [k for k in shapes if k not in input_names(model)]
    if unknown:
        raise ToolError(f"input_shapes name(s) {', '.join(unknown)} not inputs of {label}: "
                        f"its inputs are {', '.join(input_names(model))}")
    work, _ = merge_duplicate_initializers(model)
    hidden = _hide_unregistered_ops(work)
    try:
        simplified, check_ok = onnxsim.simplify(
            work, check_n=check_n, overwrite_input_shapes=shapes or None,
            test_input_shapes=shapes or None, skip_shape_inference=skip_shape_inference,
            custom_lib=custom_lib, skipped_optimizers=list(SKIPPED_ONNXSIM_PASSES))
    except Exception as err:  # onnxsim raises bare RuntimeError/ValidationError from C++
        msg = " ".join(str(err).split())[:300] or type(err).__name__
        raise ToolError(f"onnxsim failed on {label}: {msg} (retry with skip_shape_inference, "
                        "or export at a fixed input size)") from None
    if not check_ok:
        raise ToolError(f"onnxsim result for {label} differs from the original model in ONNX Runtime: "
                        "keep the unsimplified model and report the onnxsim version")
    if hidden:
        _restore_hidden_ops(simplified)
    return merge_duplicate_initializers(simplified)[0]  # constants that folding made equal


# --------------------------------------------------------------------------- Pad -inf

def _pad_mode(node: onnx.NodeProto) -> str:
    a = _attr(node, "mode")
    if a is None:
        return "constant"
    return a.s.decode() if isinstance(a.s, bytes) else str(a.s)


def _constant_node_array(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
    return None


def _is_neg_inf(arr: np.ndarray | None) -> bool:
    return (arr is not None and arr.size == 1 and arr.dtype.kind == "f"
            and bool(np.isneginf(arr.astype(np.float64)).all()))


def replace_neg_inf_pads(model: onnx.ModelProto, value: float = 0.0) -> tuple[onnx.ModelProto, int]:
    """Give every constant-mode Pad whose fill value is -inf the fill ``value`` instead.

    EfficientDet's 'same' max-pool padding exports as Pad(-inf); Ascend's fp16 path turns that
    into NaN/overflow, and the recipe patched a single hard-coded initializer. The fill may be an
    initializer, a Constant node output or (opset < 11) the ``value`` attribute. A fill tensor
    also read by other nodes is left alone and the Pads get a new initializer.
    Returns ``(new_model, number_of_pads_changed)``.
    """
    out = _copy(model)
    taken = _all_tensor_names(out.graph)
    count = 0
    for graph in list(_all_graphs(out.graph)):
        count += _fix_pads_in_graph(out, graph, float(value), taken)
    return out, count


def _fix_pads_in_graph(model: onnx.ModelProto, graph: onnx.GraphProto, value: float, taken: set[str]) -> int:
    inits = {t.name: t for t in graph.initializer}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.domain in DEFAULT_DOMAINS
              and len(n.output) == 1}
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = collections.defaultdict(list)
    outer_reads: set[str] = set()
    for node in graph.node:
        for idx, name in enumerate(node.input):
            if name:
                readers[name].append((node, idx))
        outer_reads |= _names_used_inside(node)
    graph_outputs = {o.name for o in graph.output}

    count = 0
    by_fill: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for node in graph.node:
        if node.op_type != "Pad" or node.domain not in DEFAULT_DOMAINS or _pad_mode(node) != "constant":
            continue
        if len(node.input) >= 3 and node.input[2]:
            fill = node.input[2]
            arr = (numpy_helper.to_array(inits[fill]) if fill in inits
                   else _constant_node_array(consts[fill]) if fill in consts else None)
            if _is_neg_inf(arr):
                by_fill[fill].append(node)
        else:
            attr = _attr(node, "value")  # Pad-1/Pad-2 keep the fill as an attribute
            if attr is not None and np.isneginf(attr.f):
                attr.f = value
                count += 1

    for fill, pads in by_fill.items():
        source = inits[fill] if fill in inits else None
        old = numpy_helper.to_array(source) if source is not None else _constant_node_array(consts[fill])
        new_arr = np.full(old.shape, value, dtype=old.dtype)
        pad_ids = {id(p) for p in pads}
        shared = (fill in graph_outputs or fill in outer_reads
                  or any(id(n) not in pad_ids or idx != 2 for n, idx in readers[fill]))
        if shared:
            new_name = _unique_name(f"{fill}_pad_fill", taken)
            graph.initializer.append(numpy_helper.from_array(new_arr, name=new_name))
            if model.ir_version < 4:  # IR < 4 requires every initializer to be listed as an input
                graph.input.append(helper.make_tensor_value_info(
                    new_name, _np_to_onnx(new_arr.dtype), list(new_arr.shape)))
            for p in pads:
                p.input[2] = new_name
        elif source is not None:
            source.CopyFrom(numpy_helper.from_array(new_arr, name=fill))
        else:
            const = consts[fill]
            for a in const.attribute:
                if a.name == "value":
                    a.t.CopyFrom(numpy_helper.from_array(new_arr, name=a.t.name))
                elif a.name == "value_float":
                    a.f = value
        count += len(pads)
    return count


def _np_to_onnx(dtype: np.dtype) -> int:
    return {np.dtype(np.float16): TensorProto.FLOAT16, np.dtype(np.float32): TensorProto.FLOAT,
            np.dtype(np.float64): TensorProto.DOUBLE}[np.dtype(dtype)]


# --------------------------------------------------------------------------- dtypes

def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor of the main graph that can be known.

    Shape inference refuses graphs whose declared types conflict with what it infers (exactly the
    graphs that need fixing), so on failure it is retried without the declared output/value_info
    types; explicit sources (inputs, initializers, Constant, Cast) always win.
    """
    types: dict[str, int] = {}

    def collect(values: Iterable[onnx.ValueInfoProto]) -> None:
        for v in values:
            if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
                types[v.name] = v.type.tensor_type.elem_type

    inferred = None
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        bare = _copy(model)
        del bare.graph.value_info[:]
        for o in bare.graph.output:
            o.type.tensor_type.elem_type = TensorProto.UNDEFINED
        try:
            inferred = onnx.shape_inference.infer_shapes(bare)
        except Exception:
            inferred = None
    collect(model.graph.output)
    collect(model.graph.value_info)
    if inferred is not None:
        collect(inferred.graph.value_info)
        collect(o for o in inferred.graph.output if o.type.tensor_type.elem_type)
    collect(model.graph.input)
    for t in model.graph.initializer:
        types[t.name] = t.data_type
    for node in model.graph.node:
        if node.domain not in DEFAULT_DOMAINS:
            continue
        if node.op_type == "Cast" and _attr(node, "to") is not None:
            types[node.output[0]] = _attr(node, "to").i
        elif node.op_type == "Constant":
            arr_attr = _attr(node, "value")
            if arr_attr is not None:
                types[node.output[0]] = arr_attr.t.data_type
            elif _attr(node, "value_float") is not None:
                types[node.output[0]] = TensorProto.FLOAT
    return types


def dtype_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type).lower()


def unify_input_dtypes(model: onnx.ModelProto, op_types: Iterable[str] = ("Concat",),
                       to: int = TensorProto.FLOAT16, *, only_mixed: bool = True,
                       where: Callable[[onnx.NodeProto], bool] | None = None,
                       keep_output_dtype: bool = False) -> tuple[onnx.ModelProto, int]:
    """Insert Casts so nodes of ``op_types`` read all their float inputs as ``to``.

    RetinaMask's Concat ends up with an fp16 and an fp32 input inside ATC; the recipe inserted
    Casts at hard-coded node indices. Here nodes are found by structure: with ``only_mixed`` those
    whose float inputs have different (inferred) dtypes; otherwise every matching node with a float
    input that is not ``to`` (narrow it with ``where``). The node's output then has dtype ``to``;
    ``keep_output_dtype`` casts it back so the rest of the graph is untouched. Main graph only.
    Returns ``(new_model, number_of_nodes_changed)``.
    """
    if to not in FLOAT_TYPES:
        raise ToolError(f"unify_input_dtypes: 'to' must be a float TensorProto type, got {to}")
    ops = set(op_types)
    out = _copy(model)
    graph = out.graph
    taken = _all_tensor_names(graph)
    casts: dict[str, str] = {}
    changed = 0
    for _ in range(len(graph.node) + 1):  # a changed output can make a downstream node mixed
        types = _elem_types(out)
        fixed_now = 0
        new_nodes: list[onnx.NodeProto] = []
        changed_outputs: list[str] = []
        for node in graph.node:
            selected = node.op_type in ops and node.domain in DEFAULT_DOMAINS
            if not (selected and (where is None or where(node))):
                new_nodes.append(node)
                continue
            floats = {types[i] for i in node.input if i and types.get(i) in FLOAT_TYPES}
            need = (len(floats) > 1) if only_mixed else bool(floats - {to})
            if not need:
                new_nodes.append(node)
                continue
            for idx, name in enumerate(node.input):
                if name and types.get(name) in FLOAT_TYPES and types[name] != to:
                    if name not in casts:
                        cast_out = _unique_name(f"{name}_as_{dtype_name(to)}", taken)
                        new_nodes.append(helper.make_node(
                            "Cast", [name], [cast_out], to=to, name=_unique_name(f"Cast_{cast_out}", taken)))
                        casts[name] = cast_out
                    node.input[idx] = casts[name]
            new_nodes.append(node)
            for o_idx, o_name in enumerate(node.output):
                before = types.get(o_name)
                if keep_output_dtype and before in FLOAT_TYPES and before != to:
                    inner = _unique_name(f"{o_name}_{dtype_name(to)}", taken)
                    node.output[o_idx] = inner
                    new_nodes.append(helper.make_node(
                        "Cast", [inner], [o_name], to=before, name=_unique_name(f"Cast_{o_name}", taken)))
                elif o_name:
                    changed_outputs.append(o_name)
            fixed_now += 1
        if not fixed_now:
            break
        del graph.node[:]
        graph.node.extend(new_nodes)
        _retype_downstream(graph, changed_outputs, to)
        changed += fixed_now
        if not only_mixed:
            break  # every matching node was handled in one pass
    if changed:
        _reinfer_output_types(out)
    return out, changed


def _reinfer_output_types(model: onnx.ModelProto) -> None:
    """Fill graph-output dtypes cleared by a retype from shape inference (ORT rejects a missing type)."""
    missing = [o for o in model.graph.output if not o.type.tensor_type.elem_type]
    if not missing:
        return
    inferred = _elem_types(model)
    for o in missing:
        if inferred.get(o.name):
            o.type.tensor_type.elem_type = inferred[o.name]


def _retype_downstream(graph: onnx.GraphProto, changed: list[str], to: int) -> None:
    """Drop stale type info below outputs whose dtype just changed; declare ``to`` on graph outputs."""
    if not changed:
        return
    dirty = set(changed)
    for node in graph.node:  # nodes are topologically sorted
        if any(i in dirty for i in node.input):
            dirty.update(o for o in node.output if o)
    infos = [v for v in graph.value_info if v.name not in dirty]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    for o in graph.output:
        if o.name in changed:
            o.type.tensor_type.elem_type = to
        elif o.name in dirty:
            o.type.tensor_type.elem_type = TensorProto.UNDEFINED  # let the runtime infer it again


# --------------------------------------------------------------------------- shapes

def _shape_text(value: onnx.ValueInfoProto) -> tuple[str, bool]:
    """``("[batch,3,?,512]", is_static)`` for a tensor value info."""
    tt = value.type.tensor_type
    if not tt.HasField("shape"):
        return "unknown rank", False
    dims, static = [], True
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(str(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
            static = False
    return "[" + ",".join(dims) + "]", static


def static_shape_report(model: onnx.ModelProto, *, include_value_info: bool = True) -> list[str]:
    """One entry per input/output (and value_info) whose shape is not fully static.

    ATC needs static shapes for these models; a symbolic dim left by the exporter is the usual
    cause of a failed or slow (dynamic-shape) compile.
    """
    inits = {t.name for t in model.graph.initializer}
    groups = [("input", [v for v in model.graph.input if v.name not in inits]),
              ("output", model.graph.output)]
    if include_value_info:
        groups.append(("value_info", model.graph.value_info))
    report = []
    for kind, values in groups:
        for v in values:
            if not v.type.HasField("tensor_type"):
                continue
            text, static = _shape_text(v)
            if not static:
                report.append(f"{kind} {v.name}: {text}")
    return report


def assert_static(model: onnx.ModelProto, *, name: str | None = None,
                  include_value_info: bool = False) -> None:
    """Raise a ToolError naming every input/output with a dynamic or unknown dim."""
    report = static_shape_report(model, include_value_info=include_value_info)
    if report:
        shown = "; ".join(report[:8]) + (f"; and {len(report) - 8} more" if len(report) > 8 else "")
        raise ToolError(f"{_model_name(model, name)} has non-static shapes ({shown}): "
                        "export with a fixed input size or pass input_shapes to simplify")


# --------------------------------------------------------------------------- ops

def _op_key(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}:{node.op_type}"


def op_types(model: onnx.ModelProto) -> collections.Counter:
    """Count of nodes per op type, subgraphs included; non-default domains as ``domain:op``."""
    return collections.Counter(_op_key(n) for g in _all_graphs(model.graph) for n in g.node)


def _has_schema(op_type: str, opset: int, domain: str) -> bool:
    try:
        onnx.defs.get_schema(op_type, max(opset, 1), domain)
        return True
    except Exception:  # SchemaError: not registered (at this opset)
        return False


def custom_ops(model: onnx.ModelProto) -> collections.Counter:
    """Nodes whose op is not a standard ONNX op at the model's opset (ATC needs a plugin or NPU op)."""
    versions = {imp.domain or "": int(imp.version) for imp in model.opset_import}
    opset = default_opset(model)
    found: collections.Counter = collections.Counter()
    for g in _all_graphs(model.graph):
        for n in g.node:
            if n.domain in DEFAULT_DOMAINS:
                if not _has_schema(n.op_type, opset, ""):
                    found[_op_key(n)] += 1
            elif n.domain == "ai.onnx.ml" and _has_schema(n.op_type, versions.get(n.domain, 1), n.domain):
                continue
            else:
                found[_op_key(n)] += 1
    return found


def summary(model: onnx.ModelProto, *, name: str | None = None) -> str:
    """Human-readable table: opset, inputs, outputs, node counts per op (custom ops marked)."""
    inits = {t.name for t in model.graph.initializer}
    customs = custom_ops(model)
    counts = op_types(model)
    lines = [f"model: {_model_name(model, name)}  (ir {model.ir_version}, opset {default_opset(model)}, "
             f"{sum(counts.values())} nodes, {len(model.graph.initializer)} initializers)"]

    def io_rows(kind: str, values: Iterable[onnx.ValueInfoProto]) -> None:
        for v in values:
            tt = v.type.tensor_type
            dt = dtype_name(tt.elem_type) if tt.elem_type else "?"
            lines.append(f"  {kind:<7} {v.name:<32} {dt:<9} {_shape_text(v)[0]}")

    io_rows("input", [v for v in model.graph.input if v.name not in inits])
    io_rows("output", model.graph.output)
    lines.append(f"  {'op':<40} {'count':>6}")
    for op, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        mark = "  (custom)" if op in customs else ""
        lines.append(f"  {op:<40} {n:>6}{mark}")
    return "\n".join(lines)
