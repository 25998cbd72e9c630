"""`--attention standard`: each attention as opset-23 RotaryEmbedding + Attention, no custom node.

The pass is checked three ways: on one attention node against numpy (interleaved-pair RoPE on the
vision rows, softmax attention) and against the plugin form's function body, both on ONNX Runtime;
on every tiny transformer family through the one export loop, against torch at the min / opt / max
of a dynamic profile; and on what it must refuse (ops whose meaning changed between opsets 20 and 23).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from tiny_models import TINY_TRANSFORMERS

from cogvx.contract.shapes import ShapeSpec, parse_profile
from cogvx.export import attention_op
from cogvx.export.graph_check import check_graph
from cogvx.export.onnx_export import export_component
from cogvx.export.standard_attention import (
    OPSET, StandardAttentionError, opset_change_problems, to_standard_attention,
)

from .test_transformer_export import PROFILES, error, reference, run, tiny


def attention_graph(text: int, heads: int = 2, head_dim: int = 8, elem_type: int = TensorProto.FLOAT):
    """One cogvx::RoPEAttention3D node over graph inputs, as the exporter writes it (opset 20)."""
    attention_op.register_schema()
    node = helper.make_node(attention_op.OP_TYPE, ["q", "k", "v", "cos", "sin"], ["out"], domain=attention_op.DOMAIN,
                            name="attention", num_text_tokens=text, plugin_namespace="cogvx", plugin_version="1")
    qkv = [helper.make_tensor_value_info(n, elem_type, ["B", heads, "S", head_dim]) for n in ("q", "k", "v")]
    tables = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["V", head_dim]) for n in ("cos", "sin")]
    graph = helper.make_graph([node], "attention", [*qkv, *tables],
                              [helper.make_tensor_value_info("out", elem_type, ["B", heads, "S", head_dim])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("cogvx", 1)],
                              ir_version=10)  # as the exporter writes opset 20
    return attention_op.attach_function(model)


def numpy_reference(q, k, v, cos, sin, text):
    """Interleaved-pair RoPE on rows >= text of q and k, then softmax(q k^T / sqrt(Dh)) v, in float64."""
    def rope(x):
        x = x.astype(np.float64)
        rotated = np.stack([-x[..., 1::2], x[..., 0::2]], axis=-1).reshape(x.shape)  # (a, b) -> (-b, a)
        out = x.copy()
        out[:, :, text:] = x[:, :, text:] * cos + rotated[:, :, text:] * sin
        return out
    q, k = rope(q), rope(k)
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return (weights / weights.sum(-1, keepdims=True)) @ v.astype(np.float64)


def inputs(text: int, vision: int, heads: int = 2, head_dim: int = 8, batch: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((batch, heads, text + vision, head_dim)).astype(np.float32) for _ in range(3))
    angles = rng.uniform(-3.1, 3.1, (vision, head_dim // 2))
    cos, sin = (np.repeat(f(angles), 2, axis=1).astype(np.float32) for f in (np.cos, np.sin))  # pairs share an angle
    return {"q": q, "k": k, "v": v, "cos": cos, "sin": sin}


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("text, vision", [(5, 11), (0, 13), (9, 0)], ids=["text+vision", "vision only", "text only"])
def test_one_node_matches_numpy_and_the_function_body(text, vision):
    plugin_form = attention_graph(text)
    standard = to_standard_attention(attention_graph(text))
    onnx.checker.check_model(standard, full_check=True)
    assert [(o.domain, o.version) for o in standard.opset_import] == [("", OPSET)] and standard.ir_version == 11
    assert not standard.functions
    assert {n.op_type for n in standard.graph.node} >= {"RotaryEmbedding", "Attention"}
    assert all(helper.get_attribute_value(a) == 1 for n in standard.graph.node if n.op_type == "RotaryEmbedding"
               for a in n.attribute if a.name == "interleaved")
    feeds = inputs(text, vision)
    expected = numpy_reference(**feeds, text=text)
    (got,) = session(standard).run(None, feeds)
    scale = max(1.0, np.abs(expected).max())
    assert np.abs(got - expected).max() / scale <= 1e-5
    if vision:  # the function body's pair Reshape (..., -1, 2) fails on ORT for zero vision rows (and ORT's
        # ReshapeFusion turns a spelled-out Dh / 2 back into -1); CogVideoX always has vision rows
        (body,) = session(plugin_form).run(None, feeds)
        assert np.abs(body - expected).max() / scale <= 1e-5
    if vision:  # the rotation matters: without it the answer is different
        unrotated = numpy_reference(**(feeds | {"cos": np.ones_like(feeds["cos"]), "sin": np.zeros_like(feeds["sin"])}),
                                    text=text)
        assert np.abs(unrotated - expected).max() > 0.05


def test_sixteen_bit_attention_keeps_fp32_softmax_and_rotation():
    standard = to_standard_attention(attention_graph(4, elem_type=TensorProto.FLOAT16))
    (node,) = [n for n in standard.graph.node if n.op_type == "Attention"]
    assert {a.name: a.i for a in node.attribute} == {"softmax_precision": TensorProto.FLOAT}
    rotary = [n for n in standard.graph.node if n.op_type == "RotaryEmbedding"]
    casts = {n.output[0]: n for n in standard.graph.node if n.op_type == "Cast"}
    assert all(casts[n.input[0]].attribute[0].i == TensorProto.FLOAT for n in rotary)  # rotated in fp32
    feeds = inputs(4, 12)
    half = {name: (value.astype(np.float16) if name in "qkv" else value) for name, value in feeds.items()}
    (got,) = session(standard).run(None, half)
    expected = numpy_reference(**{n: v.astype(np.float32) for n, v in half.items()}, text=4)
    assert got.dtype == np.float16
    assert np.abs(got - expected).max() / max(1.0, np.abs(expected).max()) <= 2e-3


@pytest.mark.parametrize("variant", list(TINY_TRANSFORMERS))
def test_every_family_through_the_export_loop(variant, tmp_path):
    transformer, descriptor = tiny(variant)
    frames, height, width = PROFILES[variant]
    default = ShapeSpec(batch=1, text_len=TINY_TRANSFORMERS[variant]["max_text_seq_length"])
    profile = parse_profile("dynamic", default, frames=frames, height=height, width=width)
    (graph,) = export_component(descriptor, transformer, profile, torch.float32, tmp_path, attention="standard")
    model = onnx.load(tmp_path / graph.file_name)
    layers = transformer.config.num_layers
    assert not [n for n in model.graph.node if n.domain] and not model.functions
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]
    assert sum(n.op_type == "Attention" for n in model.graph.node) == layers
    assert sum(n.op_type == "RotaryEmbedding" for n in model.graph.node) == 2 * layers  # q and k
    report = check_graph(model)
    assert report.problems == [] and report.plugin_nodes == 0 and report.tensorrt == "10.15"
    runtime = ort.InferenceSession(str(tmp_path / graph.file_name), providers=["CPUExecutionProvider"])
    for spec, batch in ((profile.min, 1), (profile.opt, 2), (profile.max, 2)):
        feeds = descriptor.sample_inputs(spec, batch=batch, seed=batch)
        assert error(run(runtime, descriptor, feeds), reference(transformer, descriptor, feeds)) <= 1e-4


def test_ops_whose_meaning_changed_are_refused():
    assert opset_change_problems({"Cast", "Reshape", "MatMul", "Softmax", "LayerNormalization"}, 20) == []
    problems = opset_change_problems({"GroupNormalization", "QuantizeLinear", "Cast"}, 20)
    assert [p.split()[0] for p in problems] == ["GroupNormalization", "QuantizeLinear"]
    model = attention_graph(3)
    norm = helper.make_node("GroupNormalization", ["out", "scale", "bias"], ["normed"], num_groups=2)
    model.graph.node.append(norm)
    with pytest.raises(StandardAttentionError, match="GroupNormalization changed between opset 20"):
        to_standard_attention(model)


def test_a_graph_without_attention_is_left_alone():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    before = model.SerializeToString()
    assert to_standard_attention(model).SerializeToString() == before
