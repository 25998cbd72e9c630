"""The VAE decoder as first-chunk / next-chunk ONNX graphs with explicit conv caches, streamed on ORT."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tiny_models import TINY_VAE, randomize_

from cogvx.export.descriptors import VAEDecoderDescriptor, first_chunk_sizes
from cogvx.export.onnx_export import export_component
from cogvx.contract.shapes import ShapeSpec, parse_profile
from cogvx.modeling.configs import SchedulerConfig, TransformerConfig, VAEConfig, model_config
from cogvx.modeling.vae import DECODE_CHUNK, CogVideoXVAE, chunk_bounds

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("decoder")
    vae = randomize_(CogVideoXVAE(VAEConfig(**TINY_VAE)), seed=4).eval()
    transformer = TransformerConfig(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4)
    model = model_config(transformer, vae.config, SchedulerConfig())
    profile = parse_profile("dynamic", ShapeSpec(batch=1), frames="1:17:49", height="32:48:64", width="32:48:80",
                            batch="1:1:2")
    assert first_chunk_sizes(profile) == [1, 2, 3]
    exported = export_component(VAEDecoderDescriptor(model), vae, profile, torch.float32, folder)
    assert [g.role for g in exported] == ["first_1", "first_2", "first_3", "next"]
    graphs = {}
    for graph in exported:
        session = ort.InferenceSession(str(folder / graph.file_name), providers=["CPUExecutionProvider"])
        graphs[graph.file_name.removesuffix(".onnx")] = (session, graph)
    return vae, graphs


def stream(graphs, latents: torch.Tensor) -> np.ndarray:
    frames, cache = [], {}
    for index, (start, end) in enumerate(chunk_bounds(latents.shape[2], DECODE_CHUNK)):
        session, descriptor = graphs[f"vae_decoder_first_{end - start}" if index == 0 else "vae_decoder_next"]
        feeds = {"latents": latents[:, :, start:end].numpy()}
        feeds |= {name: cache[name.replace("conv_cache.", "conv_cache_out.")] for name in descriptor.input_names[1:]}
        outputs = dict(zip(descriptor.output_names, session.run(None, feeds)))
        frames.append(outputs.pop("frames"))
        cache = outputs
    return np.concatenate(frames, axis=2)


@pytest.mark.parametrize("video_frames,height,width,batch", [(1, 32, 32, 1), (9, 48, 48, 2), (17, 64, 80, 1),
                                                              (49, 32, 48, 1)])
def test_streamed_graphs_equal_reference_decode(exported, video_frames, height, width, batch):
    vae, graphs = exported
    latents = torch.randn(batch, 4, (video_frames - 1) // 4 + 1, height // 8, width // 8,
                          generator=torch.Generator().manual_seed(video_frames))
    with torch.no_grad():
        expected = vae.decode(latents).numpy()
    got = stream(graphs, latents)
    assert got.shape == expected.shape == (batch, 3, video_frames, height, width)
    assert np.abs(got - expected).max() / max(1.0, np.abs(expected).max()) <= TOLERANCE


def test_cache_is_explicit_graph_io(exported):
    _, graphs = exported
    session, descriptor = graphs["vae_decoder_next"]
    names = [i.name for i in session.get_inputs()]
    assert names[0] == "latents" and len(names) > 10 and all(n.startswith("conv_cache.decoder.") for n in names[1:])
    first_session, _ = graphs["vae_decoder_first_3"]
    assert [i.name for i in first_session.get_inputs()] == ["latents"]
    assert len(first_session.get_outputs()) == len(names)  # frames + one cache output per cache input
