"""Passes over an exported ONNX model before it is written: `finalize` runs them all.

Export wraps, it never edits: the reference modules stay as they are, and what the ONNX files
need beyond what torch.onnx writes is done here, on the graph.

1. `strip_metadata`. torch.onnx's dynamo exporter annotates every node with `metadata_props`
   (the Python stack trace with absolute paths of the exporting checkout and virtualenv, the FX
   node, the module path) and the graph and its values with the export signature: 8 % of the toy
   transformer graph in fp32, 14 % in fp16, over 80 % of a tiny VAE decoder, and it makes the
   bytes depend on where the export ran. All metadata_props and doc_strings go, in the main graph,
   its subgraphs and the local functions, so the same checkpoint exported from any folder gives
   the same file. Anything meant to stay in the file (a provenance stamp) must be added after
   `finalize`.

2. `normalization_statistics_in_fp32`. In a 16-bit graph a GroupNorm exports as
   InstanceNormalization (over a (B, G, -1) view) in fp16 / bf16. The ONNX spec does not say in
   what precision the statistics accumulate; ONNX's reference evaluator accumulates in the input
   dtype, where the sum of a VAE group's squared deviations overflows fp16 (65,504) and loses
   most of its digits in bf16: the output is then off by about its own scale. ONNX Runtime happens
   to upcast. Each 16-bit InstanceNormalization / GroupNormalization / LayerNormalization gets
   Casts to fp32 on its inputs and a Cast back on its output, so the graph itself says that mean
   and variance are computed in fp32, as torch does (TensorRT keeps the casts in a strongly typed
   network). Cast is in TensorRT's ONNX support matrix.

3. `drop_unused_functions`. A model-local function no node calls, and the opset import of a
   domain no node uses, are dead weight and tell a reader (or TensorRT's plugin lookup) that the
   graph has custom nodes it does not have.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import onnx
from onnx import TensorProto, helper

logger = logging.getLogger(__name__)

# op type -> how many leading inputs are data / scale / bias (all of the one type T in the spec)
NORMALIZATIONS = {"InstanceNormalization": 3, "GroupNormalization": 3, "LayerNormalization": 3}
SIXTEEN_BIT = {TensorProto.FLOAT16, TensorProto.BFLOAT16}
_DEFAULT_DOMAINS = ("", "ai.onnx")


def finalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """All passes, in place; returns the model for chaining."""
    strip_metadata(model)
    normalization_statistics_in_fp32(model)
    drop_unused_functions(model)
    return model


# -- walking ------------------------------------------------------------------------------------


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            yield attribute.g
        yield from attribute.graphs


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """A graph and every subgraph (If / Loop / Scan bodies) in it, depth first."""
    yield graph
    for node in graph.node:
        for subgraph in _subgraphs(node):
            yield from _graphs(subgraph)


def graph_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every node of the main graph and its subgraphs."""
    for graph in _graphs(model.graph):
        yield from graph.node


def _all_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every node of the main graph, its subgraphs and the local function bodies."""
    yield from graph_nodes(model)
    for function in model.functions:
        yield from function.node


# -- 1. metadata --------------------------------------------------------------------------------


def _clear(message) -> None:
    """Drop a proto's metadata_props and doc_string, where its type has them."""
    fields = message.DESCRIPTOR.fields_by_name
    if "metadata_props" in fields:
        message.ClearField("metadata_props")
    if "doc_string" in fields:
        message.ClearField("doc_string")


def _strip_node(node: onnx.NodeProto) -> None:
    _clear(node)
    for attribute in node.attribute:
        _clear(attribute)
        if attribute.HasField("t"):
            _clear(attribute.t)
        for tensor in attribute.tensors:
            _clear(tensor)


def strip_metadata(model: onnx.ModelProto) -> None:
    """Remove every metadata_props and doc_string: model, graphs, nodes, values, tensors, functions."""
    _clear(model)
    for graph in _graphs(model.graph):
        _clear(graph)
        for value in [*graph.input, *graph.output, *graph.value_info]:
            _clear(value)
        for tensor in graph.initializer:
            _clear(tensor)
        for sparse in graph.sparse_initializer:
            _clear(sparse.values)
            _clear(sparse.indices)
        for node in graph.node:
            _strip_node(node)
    for function in model.functions:
        _clear(function)
        for value in function.value_info:
            _clear(value)
        for node in function.node:
            _strip_node(node)


# -- 2. fp32 normalization statistics -----------------------------------------------------------


class FreshNames:
    """Fresh value / node names, unique across the whole model."""

    def __init__(self, model: onnx.ModelProto):
        self.taken: set[str] = set()
        for graph in _graphs(model.graph):
            self.taken |= {v.name for v in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]}
            for node in graph.node:
                self.taken |= {node.name, *node.input, *node.output}

    def fresh(self, stem: str) -> str:
        name, count = stem, 0
        while name in self.taken:
            count += 1
            name = f"{stem}_{count}"
        self.taken.add(name)
        return name


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Value name -> ONNX element type, from what the model declares (inputs, outputs, value_info,
    initializers, Constant nodes)."""
    types: dict[str, int] = {}
    for graph in _graphs(model.graph):
        for value in [*graph.input, *graph.output, *graph.value_info]:
            if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
                types[value.name] = value.type.tensor_type.elem_type
        types |= {tensor.name: tensor.data_type for tensor in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                if value is not None:
                    types[node.output[0]] = value.data_type
    return types


def _is_normalization(node: onnx.NodeProto) -> bool:
    return node.domain in _DEFAULT_DOMAINS and node.op_type in NORMALIZATIONS


def _normalization_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element types, complete for every normalization's data input. The exporter declares them
    all; shape inference fills in for a graph that does not (it does not need weight data)."""
    types = _elem_types(model)
    if all(node.input[0] in types for node in graph_nodes(model) if _is_normalization(node)):
        return types
    inferred = onnx.shape_inference.infer_shapes(model)
    types |= _elem_types(inferred)
    unknown = [node.name for node in graph_nodes(inferred) if _is_normalization(node) and node.input[0] not in types]
    if unknown:
        raise ValueError(f"cannot tell the input dtype of normalization nodes {unknown[:5]}: the exported graph "
                         "declares no type for them and shape inference found none; export with value_info")
    return types


def _in_fp32(node: onnx.NodeProto, dtype: int, names: FreshNames, fp32_of: dict[str, str]) -> list[onnx.NodeProto]:
    """[Cast in]*, node (now fp32), Cast back to `dtype` under the node's original output name."""
    added = []
    for index in range(min(NORMALIZATIONS[node.op_type], len(node.input))):
        source = node.input[index]
        if not source:  # an absent optional input (LayerNormalization's bias)
            continue
        if source not in fp32_of:  # scale / bias constants are shared: cast each once per graph
            fp32_of[source] = names.fresh(f"{source}_fp32")
            added.append(helper.make_node("Cast", [source], [fp32_of[source]], name=names.fresh(f"{source}_to_fp32"),
                                          to=TensorProto.FLOAT))
        node.input[index] = fp32_of[source]
    # Only Y (output 0) is in the input's type; LayerNormalization's Mean / InvStdDev are its own
    # stash type, which the input's dtype does not change.
    result = node.output[0]
    node.output[0] = names.fresh(f"{result}_fp32")
    back = helper.make_node("Cast", [node.output[0]], [result], name=names.fresh(f"{node.name}_to_input_dtype"),
                            to=dtype)
    return [*added, node, back]


def _rewrite_graph(graph: onnx.GraphProto, types: dict[str, int], names: FreshNames) -> int:
    """Rewrite the 16-bit normalizations of one graph (and its subgraphs) in place; returns how many."""
    rewritten, nodes, fp32_of = 0, [], {}
    for node in graph.node:
        for subgraph in _subgraphs(node):
            rewritten += _rewrite_graph(subgraph, types, names)
        dtype = types.get(node.input[0]) if _is_normalization(node) else None
        if dtype in SIXTEEN_BIT:
            nodes += _in_fp32(node, dtype, names, fp32_of)
            rewritten += 1
        else:
            nodes.append(node)
    if rewritten:
        # the Casts go right before / after their node, so the node order stays topological
        copies = [onnx.NodeProto() for _ in nodes]
        for copy, node in zip(copies, nodes):
            copy.CopyFrom(node)
        graph.ClearField("node")
        graph.node.extend(copies)
    return rewritten


def normalization_statistics_in_fp32(model: onnx.ModelProto) -> int:
    """Every normalization with a 16-bit input computes in fp32 between Casts; returns how many.

    Local function bodies are left alone: they carry no types to tell a 16-bit norm by (the one
    function the exporter's graphs hold, the attention reference, has no normalization)."""
    if not any(_is_normalization(node) for node in graph_nodes(model)):
        return 0
    rewritten = _rewrite_graph(model.graph, _normalization_types(model), FreshNames(model))
    if rewritten:
        logger.debug("%d 16-bit normalization nodes now compute their statistics in fp32", rewritten)
    return rewritten


# -- 3. unused functions and domains ------------------------------------------------------------


def drop_unused_functions(model: onnx.ModelProto) -> None:
    """Remove local functions no node calls (directly or through another function) and the opset
    imports of domains no node uses; the default domain always stays."""
    functions = {(f.domain, f.name): f for f in model.functions}
    called: set[tuple[str, str]] = set()
    pending = list(graph_nodes(model))
    while pending:
        node = pending.pop()
        key = (node.domain, node.op_type)
        if key in functions and key not in called:
            called.add(key)
            pending += functions[key].node
    kept = [f for f in model.functions if (f.domain, f.name) in called]
    if len(kept) != len(model.functions):
        copies = [onnx.FunctionProto() for _ in kept]
        for copy, function in zip(copies, kept):
            copy.CopyFrom(function)
        model.ClearField("functions")
        model.functions.extend(copies)
    used = {node.domain for node in _all_nodes(model)}
    imports = [o for o in model.opset_import if o.domain in _DEFAULT_DOMAINS or o.domain in used]
    if len(imports) != len(model.opset_import):
        kept_imports = [helper.make_opsetid(o.domain, o.version) for o in imports]
        model.ClearField("opset_import")
        model.opset_import.extend(kept_imports)
