"""The attention seam in ONNX: one `cogvx::RoPEAttention3D` node per attention.

The node is opaque to the exporter (emitted through `custom_translation_table` with a registered
`OpSchema`) and carries:
- attributes `num_text_tokens`, and `plugin_namespace` / `plugin_version`, which TensorRT's
  plugin registry reads to swap in the fused kernel without re-exporting. `num_text_tokens` is
  DERIVED_TEXT (-1) when the profile's text length is dynamic: the text rows are then the rows
  before the last V, V being the RoPE tables' rows (`text = S - V`);
- a model-local FunctionProto of the same name with the reference math in standard ONNX ops, so
  ONNX Runtime (which inlines local functions) runs it as is.

The function is attached after export: the exporter's version-conversion pass would inline a
function attached earlier. RoPE runs in fp32 (cos / sin are fp32 inputs), as in the reference;
so does the softmax, whatever the model dtype.

Models without RoPE (2B) get cos = 1 and sin = 0 tables, for which the rotation is exact identity.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper
from onnx.defs import OpSchema

DOMAIN = "cogvx"
OP_TYPE = "RoPEAttention3D"
PLUGIN_VERSION = "1"
DERIVED_TEXT = -1  # num_text_tokens of a node whose text length is dynamic: S minus the tables' rows

SCHEMA = OpSchema(
    OP_TYPE, DOMAIN, 1,
    doc="RoPE on the vision rows of q and k (rows >= num_text_tokens), then full softmax attention.",
    inputs=[OpSchema.FormalParameter("q", "T"), OpSchema.FormalParameter("k", "T"),
            OpSchema.FormalParameter("v", "T"), OpSchema.FormalParameter("cos", "F"),
            OpSchema.FormalParameter("sin", "F")],
    outputs=[OpSchema.FormalParameter("out", "T")],
    type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "q, k, v, out"),
                      ("F", ["tensor(float)"], "RoPE tables (V, Dh)")],
    attributes=[OpSchema.Attribute("num_text_tokens", OpSchema.AttrType.INT,
                                   "text rows, not rotated (-1: all but the last V rows, V = rows of cos)"),
                OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING, "TensorRT plugin namespace"),
                OpSchema.Attribute("plugin_version", OpSchema.AttrType.STRING, "TensorRT plugin version")],
)


def register_schema() -> None:
    """Make the op known to onnx (needed by the exporter); idempotent."""
    try:
        onnx.defs.get_schema(OP_TYPE, 1, DOMAIN)
    except onnx.defs.SchemaError:
        onnx.defs.register_schema(SCHEMA)


def translation():
    """The `custom_translation_table` entry for `torch.ops.cogvx.rope_attention.default`."""
    import onnxscript

    register_schema()
    op = onnxscript.values.Op(onnxscript.values.Opset(DOMAIN, 1), OP_TYPE, SCHEMA)

    def rope_attention(q, k, v, cos, sin, num_text_tokens):
        # a dynamic text length reaches the translation as a symbolic value, not an int
        text = num_text_tokens if isinstance(num_text_tokens, int) else DERIVED_TEXT
        return op(q, k, v, cos, sin, num_text_tokens=text, plugin_namespace=DOMAIN, plugin_version=PLUGIN_VERSION)

    return rope_attention


def function_proto(opset: int = 20) -> onnx.FunctionProto:
    """The reference body: (B, N, S, Dh) q, k, v; (V, Dh) cos, sin; S = num_text_tokens + V."""
    n = helper.make_node
    ints = lambda name, values: n("Constant", [], [name], value_ints=values)  # noqa: E731
    nodes = [
        ints("zero", [0]), ints("one", [1]), ints("two", [2]), ints("end", [2**62]),
        ints("axis2", [2]), ints("axis4", [4]), ints("pairs", [0, 0, 0, -1, 2]),
        n("Constant", [], ["text_scalar"], value_int=0),
    ]
    nodes[-1].attribute[0].ref_attr_name = "num_text_tokens"
    nodes += [
        n("Reshape", ["text_scalar", "one"], ["text_given"]),
        # DERIVED_TEXT (-1): the text rows are those before the tables' V rows
        n("Shape", ["q"], ["rows"], start=2, end=3),
        n("Shape", ["cos"], ["table_rows"], start=0, end=1),
        n("Sub", ["rows", "table_rows"], ["text_derived"]),
        n("Less", ["text_given", "zero"], ["text_is_derived"]),
        n("Where", ["text_is_derived", "text_derived", "text_given"], ["text_len"]),
    ]

    def rotate(prefix: str, x: str) -> list[onnx.NodeProto]:
        """x (B, N, V, Dh) fp32 -> x cos + rotate_pairs(x) sin, rotate_pairs (a, b) -> (-b, a)."""
        p = lambda s: f"{prefix}_{s}"  # noqa: E731
        return [
            n("Shape", [x], [p("shape")]),
            n("Reshape", [x, "pairs"], [p("pairs")]),
            n("Slice", [p("pairs"), "zero", "one", "axis4"], [p("a")]),
            n("Slice", [p("pairs"), "one", "two", "axis4"], [p("b")]),
            n("Neg", [p("b")], [p("minus_b")]),
            n("Concat", [p("minus_b"), p("a")], [p("rotated_pairs")], axis=4),
            n("Reshape", [p("rotated_pairs"), p("shape")], [p("rotated")]),
            n("Mul", [x, "cos"], [p("x_cos")]),
            n("Mul", [p("rotated"), "sin"], [p("rot_sin")]),
            n("Add", [p("x_cos"), p("rot_sin")], [p("out")]),
        ]

    for name in ("q", "k"):
        nodes += [
            n("Cast", [name], [f"{name}_f"], to=TensorProto.FLOAT),
            n("Slice", [f"{name}_f", "zero", "text_len", "axis2"], [f"{name}_text"]),
            n("Slice", [f"{name}_f", "text_len", "end", "axis2"], [f"{name}_vision"]),
            *rotate(f"{name}_rope", f"{name}_vision"),
            n("Concat", [f"{name}_text", f"{name}_rope_out"], [f"{name}_roped"], axis=2),
        ]
    nodes += [
        n("Cast", ["v"], ["v_f"], to=TensorProto.FLOAT),
        n("Shape", ["q"], ["head_dim"], start=3, end=4),
        n("Cast", ["head_dim"], ["head_dim_f"], to=TensorProto.FLOAT),
        n("Sqrt", ["head_dim_f"], ["sqrt_head_dim"]),
        n("Transpose", ["k_roped"], ["k_t"], perm=[0, 1, 3, 2]),
        # the 1 / sqrt(Dh) scale on q (S x Dh) rather than on the scores (S x S): S / Dh times less to
        # touch (22x at 1426 tokens, head dim 64), the same as SDPA up to rounding
        n("Div", ["q_roped", "sqrt_head_dim"], ["q_scaled"]),
        n("MatMul", ["q_scaled", "k_t"], ["scores"]),
        n("Softmax", ["scores"], ["weights"], axis=-1),
        n("MatMul", ["weights", "v_f"], ["out_f"]),
        n("CastLike", ["out_f", "v"], ["out"]),
    ]
    return helper.make_function(
        DOMAIN, OP_TYPE, ["q", "k", "v", "cos", "sin"], ["out"], nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=["num_text_tokens", "plugin_namespace", "plugin_version"],
    )


def _calls_op(graph: onnx.GraphProto) -> bool:
    """Whether a node of the graph, or of a subgraph in it, is a `cogvx::RoPEAttention3D`."""
    for node in graph.node:
        if node.domain == DOMAIN and node.op_type == OP_TYPE:
            return True
        for attribute in node.attribute:  # If / Loop / Scan bodies
            subgraphs = [attribute.g] if attribute.HasField("g") else []
            if any(_calls_op(subgraph) for subgraph in [*subgraphs, *attribute.graphs]):
                return True
    return False


def attach_function(model: onnx.ModelProto) -> onnx.ModelProto:
    """Append the local function (once) and the domain import, after export, where a node calls the
    op: a graph without attention (the VAE, T5) carries neither."""
    if not _calls_op(model.graph):
        return model
    if not any(f.domain == DOMAIN and f.name == OP_TYPE for f in model.functions):
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        model.functions.append(function_proto(opset))
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return model
