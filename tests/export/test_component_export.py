"""The text encoder (T5) and the VAE encoder exported to ONNX and run on ONNX Runtime CPU against torch."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tiny_models import TINY_VAE, randomize_

from cogvx.export.descriptors import TextEncoderDescriptor, VAEEncoderDescriptor
from cogvx.export.onnx_export import export_component
from cogvx.contract.shapes import ShapeProfile, ShapeSpec, parse_profile
from cogvx.modeling.configs import PRESETS, VAEConfig
from cogvx.modeling.vae import CogVideoXVAE

TOLERANCE = 1e-4


def error(got: np.ndarray, expected: torch.Tensor) -> float:
    expected = expected.detach().numpy()
    return float(np.abs(got - expected).max() / max(1.0, np.abs(expected).max()))


@pytest.fixture(scope="module")
def t5():
    from transformers import T5EncoderModel

    torch.manual_seed(0)
    model = PRESETS["toy"]
    # real T5 v1.1 layout (gated-gelu, relative attention bias), tiny widths, 2 layers
    return model, T5EncoderModel(model.text_encoder.to_transformers()).eval()


@pytest.mark.parametrize("dynamic", [True, False])
def test_text_encoder_matches_transformers(t5, dynamic, tmp_path):
    model, encoder = t5
    descriptor = TextEncoderDescriptor(model)
    default = ShapeSpec(batch=1, frames=17, height=64, width=64, text_len=32)
    profile = (parse_profile("dynamic", default, batch="1:1:3", text_len="8:32:32") if dynamic
               else ShapeProfile.static(default))
    (graph,) = export_component(descriptor, encoder, profile, torch.float32, tmp_path)
    path = tmp_path / graph.file_name
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # min, opt and max: the text batch is the CFG batch (prompts + negative prompts), 1 .. 2 x max
    shapes = [(1, 8), (2, 32), (6, 32)] if dynamic else [(2, 32)]
    for batch, length in shapes:
        ids = descriptor.sample_inputs(ShapeSpec(batch=1, text_len=length), batch=batch, seed=batch)["input_ids"]
        with torch.no_grad():
            expected = encoder(ids)[0]  # transformers' own forward: the reference
        assert error(session.run(None, {"input_ids": ids.numpy()})[0], expected) <= TOLERANCE


@pytest.mark.parametrize("dynamic", [True, False])
def test_vae_encoder_matches_reference(dynamic, tmp_path):
    vae = randomize_(CogVideoXVAE(VAEConfig(**TINY_VAE)), seed=2).eval()
    model = dataclasses.replace(PRESETS["toy"], vae=vae.config)
    descriptor = VAEEncoderDescriptor(model)
    default = ShapeSpec(batch=1, frames=9, height=48, width=64, text_len=32)
    profile = (parse_profile("dynamic", default, batch="1:1:2", height="32:48:64", width="32:64:80") if dynamic
               else ShapeProfile.static(default))
    (graph,) = export_component(descriptor, vae, profile, torch.float32, tmp_path)
    path = tmp_path / graph.file_name
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    specs = [profile.min, profile.opt, ShapeSpec(batch=2, height=64, width=80)] if dynamic else [profile.opt]
    for seed, spec in enumerate(specs):
        video = descriptor.sample_inputs(spec, seed=seed)["video"]
        with torch.no_grad():
            posterior = vae.encode(video)
        mean, logvar = session.run(None, {"video": video.numpy()})
        assert mean.shape == tuple(posterior.mean.shape)
        assert error(mean, posterior.mean) <= TOLERANCE and error(logvar, posterior.logvar) <= TOLERANCE
