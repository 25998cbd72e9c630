"""The transformer exported to ONNX and run on ONNX Runtime CPU against torch, every family."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from tiny_models import TINY_TRANSFORMERS, TINY_VAE, randomize_

from cogvx.export.descriptors import TransformerDescriptor
from cogvx.export.onnx_export import export_component
from cogvx.contract.shapes import ShapeProfile, ShapeSpec
from cogvx.modeling.configs import SchedulerConfig, TransformerConfig, VAEConfig, model_config
from cogvx.modeling.transformer import CogVideoXTransformer

TOLERANCE = 1e-4


def tiny(variant: str):
    config = TransformerConfig.from_dict(TINY_TRANSFORMERS[variant])
    transformer = randomize_(CogVideoXTransformer(config), seed=1).eval()
    model = model_config(config, VAEConfig(**TINY_VAE), SchedulerConfig())
    return transformer, TransformerDescriptor(model)


def run(session, descriptor, inputs):
    feeds = {name: inputs[name].numpy() for name in descriptor.input_names}
    return session.run(None, feeds)[0]


def reference(transformer, descriptor, inputs):
    with torch.no_grad():
        return descriptor.wrap(transformer)(**{name: inputs[name] for name in descriptor.input_names}).numpy()


def export(descriptor, module, profile, folder):
    """The one export loop, for the transformer's one graph; its path."""
    (graph,) = export_component(descriptor, module, profile, torch.float32, folder)
    return folder / graph.file_name


def error(got, expected):
    return np.abs(got - expected).max() / max(1.0, np.abs(expected).max())


# frames 9..17 (3..5 latent frames), 32..64 pixels; the 5B-I2V's learned table fixes the size.
PROFILES = {
    "2b": ("9:13:17", "32:48:64", "32:64:64"),
    "5b": ("9:13:17", "32:48:64", "32:64:64"),
    "5b-i2v": ("5:9:9", "64", "64"),
    "1.5": ("9:13:17", "32:48:64", "32:64:64"),
    "1.5-i2v": ("9:13:17", "32:48:64", "32:64:64"),
}


@pytest.mark.parametrize("variant", list(TINY_TRANSFORMERS))
def test_dynamic_profile_min_opt_max(variant, tmp_path):
    from cogvx.contract.shapes import parse_profile

    transformer, descriptor = tiny(variant)
    frames, height, width = PROFILES[variant]
    default = ShapeSpec(batch=1, text_len=TINY_TRANSFORMERS[variant]["max_text_seq_length"])
    profile = parse_profile("dynamic", default, frames=frames, height=height, width=width)
    path = export(descriptor, transformer, profile, tmp_path)
    model = onnx.load(path)
    nodes = [n for n in model.graph.node if n.domain == "cogvx"]
    assert len(nodes) == transformer.config.num_layers and {n.op_type for n in nodes} == {"RoPEAttention3D"}
    assert all({a.name for a in n.attribute} >= {"plugin_namespace", "plugin_version", "num_text_tokens"} for n in nodes)
    assert [f.name for f in model.functions if f.domain == "cogvx"] == ["RoPEAttention3D"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for spec, batch in ((profile.min, 1), (profile.opt, 2), (profile.max, 2)):
        inputs = descriptor.sample_inputs(spec, batch=batch, seed=batch)
        assert error(run(session, descriptor, inputs), reference(transformer, descriptor, inputs)) <= TOLERANCE


def test_static_profile(tmp_path):
    transformer, descriptor = tiny("5b")
    profile = ShapeProfile.static(ShapeSpec(batch=1, frames=9, height=48, width=64, text_len=7))
    path = export(descriptor, transformer, profile, tmp_path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = descriptor.sample_inputs(profile.opt)
    assert error(run(session, descriptor, inputs), reference(transformer, descriptor, inputs)) <= TOLERANCE
    assert not list(tmp_path.glob(".*tmp"))  # nothing temporary left behind


@pytest.mark.parametrize("form", ["plugin", "standard"])
@pytest.mark.parametrize("variant", ["5b", "1.5"])
def test_dynamic_text_length_with_rope(variant, form, tmp_path):
    """A text length that varies across the profile: the attention's text prefix cannot be a fixed
    attribute, so the node says DERIVED_TEXT (-1) and the graph takes it from the shapes (rows minus
    the RoPE tables' rows); both attention forms against torch at three text lengths."""
    from cogvx.export.attention_op import DERIVED_TEXT

    transformer, descriptor = tiny(variant)
    max_text = TINY_TRANSFORMERS[variant]["max_text_seq_length"]
    low, high = ShapeSpec(1, 9, 32, 32, 2), ShapeSpec(1, 9, 32, 32, max_text)
    profile = ShapeProfile(low, high, high)
    (graph,) = export_component(descriptor, transformer, profile, torch.float32, tmp_path, attention=form)
    model = onnx.load(tmp_path / graph.file_name)
    if form == "plugin":
        texts = {a.i for n in model.graph.node if n.domain == "cogvx" for a in n.attribute if a.name == "num_text_tokens"}
        assert texts == {DERIVED_TEXT}
    session = ort.InferenceSession(str(tmp_path / graph.file_name), providers=["CPUExecutionProvider"])
    for text_len in (2, max_text - 2, max_text):
        inputs = descriptor.sample_inputs(ShapeSpec(1, 9, 32, 32, text_len), batch=2, seed=text_len)
        assert error(run(session, descriptor, inputs), reference(transformer, descriptor, inputs)) <= TOLERANCE
