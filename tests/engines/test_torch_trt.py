"""torch-tensorrt for the transformer (engines/torch_trt.py): what decides, on CPU, against references.

- the "standard" form's decomposition of `cogvx::rope_attention` gives the traced transformer's
  output at the profile's corners (vs the eager wrapper) and leaves only aten SDPA;
- the plugin's view of each traced node (head dim, dtype, text length: an int or DERIVED_TEXT);
- what the plugin refuses, named;
- without torch-tensorrt, `compile_transformer` says what to install.

Compiling needs torch-tensorrt, TensorRT and a GPU: that test is marked and skipped here.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from tiny_models import TINY_TRANSFORMERS, TINY_VAE, randomize_, scaled_error

from cogvx.contract.shapes import ShapeProfile, ShapeSpec
from cogvx.engines import torch_trt
from cogvx.engines.tensorrt_build import TensorRTError, TensorRTMissing
from cogvx.export.attention_op import DERIVED_TEXT
from cogvx.export.descriptors import TransformerDescriptor
from cogvx.modeling.attention import rope_attention
from cogvx.modeling.configs import SchedulerConfig, TransformerConfig, VAEConfig, model_config
from cogvx.modeling.transformer import CogVideoXTransformer

HAS_TORCH_TENSORRT = importlib.util.find_spec("torch_tensorrt") is not None


def tiny(variant: str):
    config = TransformerConfig.from_dict(TINY_TRANSFORMERS[variant])
    transformer = randomize_(CogVideoXTransformer(config), seed=3).eval()
    return transformer, model_config(config, VAEConfig(**TINY_VAE), SchedulerConfig())


def dynamic_profile(variant: str) -> ShapeProfile:
    """Frames, height and width vary; the text length too where RoPE lets it (the 2B's sincos table
    spans text and vision: its text length is fixed)."""
    text = TINY_TRANSFORMERS[variant]["max_text_seq_length"]
    low = 2 if TINY_TRANSFORMERS[variant].get("use_rotary_positional_embeddings") else text
    return ShapeProfile(ShapeSpec(1, 9, 32, 32, low), ShapeSpec(1, 13, 48, 32, text), ShapeSpec(1, 17, 48, 64, text))


def wrapper_output(transformer, model, inputs):
    descriptor = TransformerDescriptor(model)
    with torch.no_grad():
        return descriptor.wrap(transformer)(**{name: inputs[name] for name in descriptor.input_names})


@pytest.mark.parametrize("variant, text", [("2b", 7), ("5b", DERIVED_TEXT)])
def test_standard_form_is_the_reference_in_aten_ops(variant, text):
    """The plugin's view of every traced node; decomposed: no cogvx op left, one SDPA per layer,
    the traced transformer's output at the profile's min and max equals the eager wrapper's."""
    transformer, model = tiny(variant)
    profile = dynamic_profile(variant)
    program = torch_trt.trace_transformer(transformer, model, profile)
    layers = transformer.config.num_layers
    assert len(torch_trt.attention_nodes(program)) == layers
    calls = [torch_trt.plugin_call(node) for node in torch_trt.attention_nodes(program)]
    head_dim = TINY_TRANSFORMERS[variant]["attention_head_dim"]
    # a text length that varies reaches the node as a symbol: the plugin derives it from the shapes;
    # the 2B's attentions get identity RoPE tables from the wrapper, so the plugin takes them too
    assert {(c.head_dim, c.dtype, c.num_text_tokens) for c in calls} == {(head_dim, torch.float32, text)}

    decomposed = torch_trt.decompose_attention(program)
    assert not torch_trt.attention_nodes(decomposed)
    targets = [str(node.target) for node in decomposed.graph.nodes if node.op == "call_function"]
    assert sum(target.startswith(torch_trt.SDPA_OPS) for target in targets) == layers
    descriptor = TransformerDescriptor(model)
    for spec, batch in ((profile.min, 1), (profile.max, 2)):
        inputs = descriptor.sample_inputs(spec, batch=batch, seed=batch)
        with torch.no_grad():
            got = decomposed.module()(**{name: inputs[name] for name in descriptor.input_names})
        expected = wrapper_output(transformer, model, inputs)
        assert got.shape == expected.shape
        assert scaled_error(got, expected) <= 1e-5


def test_fixed_text_length_is_the_plugin_attribute():
    transformer, model = tiny("1.5")
    spec = ShapeSpec(batch=1, frames=9, height=32, width=32, text_len=5)
    program = torch_trt.trace_transformer(transformer, model, ShapeProfile.static(spec))
    calls = [torch_trt.plugin_call(node) for node in torch_trt.attention_nodes(program)]
    assert [c.num_text_tokens for c in calls] == [5] * transformer.config.num_layers
    assert len({c.node for c in calls}) == len(calls)


class _Attention(torch.nn.Module):
    def __init__(self, rope: bool, text: int):
        super().__init__()
        self.rope, self.text = rope, text

    def forward(self, q, k, v, cos, sin):
        return rope_attention(q, k, v, cos if self.rope else None, sin if self.rope else None, self.text)


def _node(head_dim: int = 8, dtype=torch.float32, rope: bool = True, table_dtype=torch.float32, text: int = 2):
    q = torch.randn(1, 2, 6, head_dim, dtype=dtype)
    tables = torch.randn(6 - text, head_dim, dtype=table_dtype)
    program = torch.export.export(_Attention(rope, text), (q, q, q, tables, tables))
    (node,) = torch_trt.attention_nodes(program)
    return node


def test_plugin_refusals_are_named():
    assert torch_trt.plugin_refusal(_node()) is None
    assert torch_trt.plugin_call(_node(text=2)).num_text_tokens == 2
    assert "no RoPE tables" in torch_trt.plugin_refusal(_node(rope=False))
    assert "head dim 9" in torch_trt.plugin_refusal(_node(head_dim=9))
    assert "head dim 272" in torch_trt.plugin_refusal(_node(head_dim=272))
    assert "torch.float64" in torch_trt.plugin_refusal(_node(dtype=torch.float64, table_dtype=torch.float64))
    assert "tables are torch.float16" in torch_trt.plugin_refusal(_node(dtype=torch.float16, table_dtype=torch.float16))
    with pytest.raises(TensorRTError, match="no RoPE tables"):
        torch_trt.plugin_call(_node(rope=False))


def test_text_attribute():
    assert torch_trt.text_attribute(0) == 0 and torch_trt.text_attribute(226) == 226
    assert torch_trt.text_attribute(torch.fx.Graph().placeholder("text_len")) == DERIVED_TEXT
    with pytest.raises(TensorRTError, match="negative"):
        torch_trt.text_attribute(-3)


@pytest.mark.skipif(HAS_TORCH_TENSORRT, reason="torch-tensorrt is installed here")
def test_compile_without_torch_tensorrt_says_what_to_install():
    transformer, model = tiny("5b")
    profile = ShapeProfile.static(ShapeSpec(1, 9, 32, 32, 5))
    with pytest.raises(TensorRTError, match="attention form 'fused'"):
        torch_trt.compile_transformer(transformer, model, profile, form="fused")
    with pytest.raises(TensorRTMissing, match=r"pip install torch-tensorrt"):
        torch_trt.compile_transformer(transformer, model, profile)
    with pytest.raises(TensorRTMissing):
        torch_trt.register_converter()


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_TORCH_TENSORRT and torch.cuda.is_available()), reason="needs torch-tensorrt and a CUDA GPU")
@pytest.mark.parametrize("form", torch_trt.FORMS)
def test_compiled_transformer_matches_torch(form):
    transformer, model = tiny("5b")
    profile = dynamic_profile("5b")
    compiled = torch_trt.compile_transformer(transformer, model, profile, form=form, dtype=torch.float16)
    descriptor = TransformerDescriptor(model)
    inputs = descriptor.sample_inputs(profile.max, torch.float16, batch=2)
    expected = wrapper_output(transformer.cuda().half(), model, {n: t.cuda() for n, t in inputs.items()})
    got = compiled(**{name: inputs[name].cuda() for name in descriptor.input_names})
    assert scaled_error(got.float().cpu(), expected.float().cpu()) <= 1e-2
