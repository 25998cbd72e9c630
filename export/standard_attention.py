"""The attention seam in standard ONNX ops: `--attention standard`, for runtimes without the plugin.

The default export writes each attention as one `cogvx::RoPEAttention3D` node (export/attention_op.py),
which TensorRT swaps for the fused plugin and ONNX Runtime runs through its local function body.
This pass rewrites a finished export so that no custom node is left: each node becomes

```
q_text   = q[:, :, :L]                                (B, N, L, Dh)
q_vision = q[:, :, L:] -> fp32                        (B, N, V, Dh)
q_roped  = Concat(q_text, RotaryEmbedding(q_vision, cos_half, sin_half, interleaved=1) -> q's dtype)
           (same for k)
out      = Attention(q_roped, k_roped, v)             (B, N, S, Dh), scale 1/sqrt(Dh)
```

with ONNX opset 23's `RotaryEmbedding` and `Attention`, which ONNX Runtime runs and TensorRT
imports natively (Attention from TensorRT 10.14, RotaryEmbedding from 10.15: see
export/tensorrt_onnx_ops.json). The rotation runs in fp32 and is rounded back to the model dtype,
as the reference does; a 16-bit graph's Attention gets `softmax_precision` fp32.

RotaryEmbedding takes half-width caches (one angle per pair); without position ids they are 3-D,
(B, V, Dh / 2). The tables the model feeds are (V, Dh) with each angle repeated for the two members
of its pair (modeling/positions.py `repeat_interleave(2)`), so the caches are the even columns,
expanded over the batch. A table whose pair members differ would not survive this form: the plugin
form (and its function body) takes any table.

Only the default-domain opset import changes, from the exporter's 20 to 23; no version converter
runs. That is sound only when every other op of the graph means the same at 23 as at 20:
`opset_change_problems` compares each op's schema at both versions (inputs, outputs, attributes and
their defaults, type constraints) and accepts only ops whose type lists merely grew (Cast, Reshape,
Shape, ... gained the new float types). An op whose signature changed (GroupNormalization-21,
QuantizeLinear-21 / 23, DequantizeLinear-21 / 23) stops the pass with its name.
"""

from __future__ import annotations

import logging

import onnx
from onnx import TensorProto, helper

from cogvx.contract.components import ATTENTION_FORMS
from cogvx.errors import CogvxError

from .attention_op import DERIVED_TEXT, DOMAIN, OP_TYPE
from .graph_passes import FreshNames, graph_nodes

logger = logging.getLogger(__name__)

OPSET = 23
FORMS = ATTENTION_FORMS  # what `cogvx export --attention` accepts
PLUGIN, STANDARD = FORMS
_DEFAULT_DOMAINS = ("", "ai.onnx")
_END = 2**62
_SIXTEEN_BIT = (TensorProto.FLOAT16, TensorProto.BFLOAT16)


class StandardAttentionError(CogvxError):
    """A graph the standard attention form cannot be made from; the message says why."""


def _schema_signature(schema: onnx.defs.OpSchema) -> tuple:
    inputs = [(p.name, p.option) for p in schema.inputs]
    outputs = [(p.name, p.option) for p in schema.outputs]
    attributes = {name: (a.type, a.required, a.default_value.SerializeToString())
                  for name, a in schema.attributes.items()}
    return inputs, outputs, attributes


def opset_change_problems(op_types: set[str], old: int, new: int = OPSET) -> list[str]:
    """The default-domain ops among `op_types` whose meaning may differ between opsets `old` and
    `new`: a signature change beyond wider type lists."""
    problems = []
    for op_type in sorted(op_types):
        try:
            before, after = onnx.defs.get_schema(op_type, old, ""), onnx.defs.get_schema(op_type, new, "")
        except onnx.defs.SchemaError:
            problems.append(f"{op_type} has no schema at opset {old} or {new}")
            continue
        if before.since_version == after.since_version:
            continue
        constraints = {c.type_param_str: set(c.allowed_type_strs) for c in after.type_constraints}
        widened = all(set(c.allowed_type_strs) <= constraints.get(c.type_param_str, set())
                      for c in before.type_constraints)
        if _schema_signature(before) != _schema_signature(after) or not widened:
            problems.append(f"{op_type} changed between opset {old} (version {before.since_version}) and {new} "
                            f"(version {after.since_version})")
    return problems


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Value name -> element type, as the exporter declared them (shape inference where it did not)."""
    def declared(graph: onnx.GraphProto) -> dict[str, int]:
        return {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output, *graph.value_info]
                if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type}
    types = declared(model.graph)
    wanted = [n.input[0] for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE]
    if not all(name in types for name in wanted):
        types |= declared(onnx.shape_inference.infer_shapes(model).graph)
    return types


def _attribute(node: onnx.NodeProto, name: str):
    found = [a for a in node.attribute if a.name == name]
    if not found:
        raise StandardAttentionError(f"{node.name}: {OP_TYPE} node has no {name} attribute")
    return helper.get_attribute_value(found[0])


def _replacement(node: onnx.NodeProto, dtype: int | None, names: FreshNames, caches: dict, constants: dict) -> list:
    """The standard-op nodes computing what one RoPEAttention3D node computes, under its output name."""
    make = helper.make_node
    q, k, v, cos, sin = node.input
    (out,) = node.output
    text = int(_attribute(node, "num_text_tokens"))
    stem = node.name or names.fresh("attention")
    nodes: list[onnx.NodeProto] = []

    def constant(name: str, values: list[int]) -> str:
        if name not in constants:
            constants[name] = names.fresh(f"standard_attention_{name}")
            nodes.append(make("Constant", [], [constants[name]], name=names.fresh(f"{constants[name]}_node"),
                              value=helper.make_tensor(constants[name], TensorProto.INT64, [len(values)], values)))
        return constants[name]

    zero, two, end = constant("zero", [0]), constant("two", [2]), constant("end", [_END])
    axis1, axis2 = constant("axis1", [1]), constant("axis2", [2])
    if text == DERIVED_TEXT:  # dynamic text length: the rows before the tables' V rows
        rows, table_rows, text_len = (names.fresh(f"{stem}_{s}") for s in ("rows", "table_rows", "text_len"))
        nodes += [make("Shape", [q], [rows], name=names.fresh(f"{rows}_node"), start=2, end=3),
                  make("Shape", [cos], [table_rows], name=names.fresh(f"{table_rows}_node"), start=0, end=1),
                  make("Sub", [rows, table_rows], [text_len], name=names.fresh(f"{text_len}_node"))]
    else:
        text_len = constant(f"text_{text}", [text])
    if (cos, sin) not in caches:  # one set of caches per pair of tables, shared by every layer
        halves = []
        for table in (cos, sin):
            half = names.fresh(f"{table}_half")
            # pairs share one angle: every second column is the (V, Dh / 2) cache
            nodes.append(make("Slice", [table, zero, end, axis1, two], [half], name=names.fresh(f"{half}_node")))
            halves.append(half)
        caches[(cos, sin)] = halves
    cos_half, sin_half = caches[(cos, sin)]

    batch, half_shape, cache_shape = names.fresh(f"{stem}_batch"), names.fresh(f"{stem}_half_shape"), names.fresh(f"{stem}_cache_shape")
    nodes += [make("Shape", [q], [batch], name=names.fresh(f"{batch}_node"), start=0, end=1),  # [B]
              make("Shape", [cos_half], [half_shape], name=names.fresh(f"{half_shape}_node")),  # [V, Dh / 2]
              make("Concat", [batch, half_shape], [cache_shape], name=names.fresh(f"{cache_shape}_node"), axis=0)]
    cos_cache, sin_cache = names.fresh(f"{stem}_cos_cache"), names.fresh(f"{stem}_sin_cache")
    nodes += [make("Expand", [cos_half, cache_shape], [cos_cache], name=names.fresh(f"{cos_cache}_node")),  # (B, V, Dh/2)
              make("Expand", [sin_half, cache_shape], [sin_cache], name=names.fresh(f"{sin_cache}_node"))]

    roped = []
    for x in (q, k):
        p = lambda s, x=x: names.fresh(f"{stem}_{x}_{s}")  # noqa: E731
        vision, vision_f, rotated_f, rotated = p("vision"), p("vision_f"), p("rotated_f"), p("rotated")
        nodes += [
            make("Slice", [x, text_len, end, axis2], [vision], name=names.fresh(f"{vision}_node")),  # (B, N, V, Dh)
            make("Cast", [vision], [vision_f], name=names.fresh(f"{vision_f}_node"), to=TensorProto.FLOAT),
            make("RotaryEmbedding", [vision_f, cos_cache, sin_cache], [rotated_f], name=names.fresh(f"{rotated_f}_node"),
                 interleaved=1),
            make("CastLike", [rotated_f, x], [rotated], name=names.fresh(f"{rotated}_node")),  # back to the model dtype
        ]
        if text:
            x_text, x_roped = p("text"), p("roped")
            nodes += [make("Slice", [x, zero, text_len, axis2], [x_text], name=names.fresh(f"{x_text}_node")),  # (B, N, L, Dh)
                      make("Concat", [x_text, rotated], [x_roped], name=names.fresh(f"{x_roped}_node"), axis=2)]
            roped.append(x_roped)
        else:
            roped.append(rotated)
    fp32_softmax = {} if dtype == TensorProto.FLOAT else {"softmax_precision": TensorProto.FLOAT}
    nodes.append(make("Attention", [roped[0], roped[1], v], [out], name=names.fresh(f"{stem}_attention"), **fp32_softmax))
    return nodes


def to_standard_attention(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every `cogvx::RoPEAttention3D` node of the main graph replaced by standard opset-23 ops, the
    default opset raised to 23, the cogvx function and domain dropped. In place; returns the model.
    A graph without the node is returned unchanged (its opset too)."""
    targets = [node for node in model.graph.node if node.domain == DOMAIN and node.op_type == OP_TYPE]
    nested = sum(1 for node in graph_nodes(model) if node.domain == DOMAIN and node.op_type == OP_TYPE)
    if nested != len(targets):
        raise StandardAttentionError(f"{nested - len(targets)} {OP_TYPE} nodes sit inside If / Loop / Scan bodies, "
                                     "which this pass does not rewrite; export with --attention plugin")
    if not targets:
        return model
    opset = next(o for o in model.opset_import if o.domain in _DEFAULT_DOMAINS)
    if opset.version > OPSET:
        raise StandardAttentionError(f"the graph is at opset {opset.version}, above the {OPSET} this pass writes")
    used = {node.op_type for node in graph_nodes(model) if node.domain in _DEFAULT_DOMAINS}
    problems = opset_change_problems(used, opset.version)
    if problems:
        raise StandardAttentionError("cannot raise the graph to opset 23 for the standard attention form: "
                                     + "; ".join(problems) + "; export with --attention plugin")
    types = _elem_types(model)
    names, caches, constants = FreshNames(model), {}, {}
    rewritten = []
    for node in model.graph.node:
        if node.domain == DOMAIN and node.op_type == OP_TYPE:
            rewritten += _replacement(node, types.get(node.input[0]), names, caches, constants)
        else:
            rewritten.append(node)
    copies = [onnx.NodeProto() for _ in rewritten]
    for copy, node in zip(copies, rewritten):
        copy.CopyFrom(node)
    model.graph.ClearField("node")
    model.graph.node.extend(copies)
    opset.version = OPSET
    model.ir_version = max(model.ir_version, helper.find_min_ir_version_for([helper.make_opsetid("", OPSET)]))
    kept = [f for f in model.functions if not (f.domain == DOMAIN and f.name == OP_TYPE)]
    if len(kept) != len(model.functions):
        functions = [onnx.FunctionProto() for _ in kept]
        for copy, function in zip(functions, kept):
            copy.CopyFrom(function)
        model.ClearField("functions")
        model.functions.extend(functions)
    imports = [helper.make_opsetid(o.domain, o.version) for o in model.opset_import if o.domain != DOMAIN]
    model.ClearField("opset_import")
    model.opset_import.extend(imports)
    logger.debug("%d attention nodes written as RotaryEmbedding + Attention (opset %d)", len(targets), OPSET)
    return model
