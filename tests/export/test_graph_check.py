"""Graph hygiene: every exported graph passes the full checker and uses only ops in TensorRT's
ONNX support matrix (kept as data); external data past the size threshold; no half files."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from tiny_models import TINY_TRANSFORMERS

from cogvx.export import onnx_export
from cogvx.export.graph_check import check_graph, io_float_types, tensorrt_support
from cogvx.contract.shapes import ShapeProfile, ShapeSpec

from .test_transformer_export import export, reference, run, tiny


def test_support_matrix_is_the_tensorrt_10_table():
    support = tensorrt_support()
    operators = support["operators"]
    assert support["opsets"] == [9, 20] and len(operators) > 150
    assert operators["MatMul"]["supported"] and operators["Softmax"]["supported"]
    assert not operators["Bernoulli"]["supported"]  # a row the parser marks N


def _graph(op_type: str, domain: str = "", **attributes) -> onnx.ModelProto:
    node = helper.make_node(op_type, ["x"], ["y"], domain=domain, name="n0", **attributes)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    opsets = [helper.make_opsetid("", 20)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets)


def test_unsupported_and_unknown_ops_are_named():
    assert check_graph(_graph("Relu")).problems == []
    assert "Bernoulli" in check_graph(_graph("Bernoulli")).problems[0]
    assert "neither ONNX nor a local function" in check_graph(_graph("Mystery", domain="acme")).problems[0]
    model = _graph("Relu")
    model.opset_import[0].version = 21
    assert "opset 21" in check_graph(model).problems[0]


@pytest.mark.parametrize("variant", ["2b", "1.5-i2v"])
def test_exported_transformer_is_tensorrt_ready(variant, tmp_path):
    transformer, descriptor = tiny(variant)
    spec = ShapeSpec(batch=1, frames=9, height=32, width=32, text_len=TINY_TRANSFORMERS[variant]["max_text_seq_length"])
    if variant == "5b-i2v":
        spec = ShapeSpec(batch=1, frames=9, height=64, width=64, text_len=spec.text_len)
    path = export(descriptor, transformer, ShapeProfile.static(spec), tmp_path)
    model = onnx.load(path)
    report = check_graph(model)
    assert report.problems == []
    assert report.plugin_nodes == transformer.config.num_layers  # one plugin node per layer
    assert io_float_types(model) == {"FP32"}


def test_external_data_past_the_threshold(tmp_path, monkeypatch):
    """The >2 GB path, exercised at a 64 KiB threshold: one .data file, ORT equal, nothing temporary left."""
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 64 * 1024)
    transformer, descriptor = tiny("5b")
    spec = ShapeSpec(batch=1, frames=9, height=32, width=32, text_len=7)
    path = export(descriptor, transformer, ShapeProfile.static(spec), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["transformer.onnx", "transformer.onnx.data"]
    model = onnx.load(path, load_external_data=False)
    locations = {entry.value for tensor in model.graph.initializer for entry in tensor.external_data
                 if entry.key == "location"}
    assert locations == {"transformer.onnx.data"} and (tmp_path / "transformer.onnx.data").stat().st_size > 64 * 1024
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = descriptor.sample_inputs(spec)
    expected = reference(transformer, descriptor, inputs)
    assert np.abs(run(session, descriptor, inputs) - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
