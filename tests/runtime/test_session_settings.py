"""ONNX Runtime session settings per stage: the streaming decoder runs in the graph's own order.

ONNX Runtime's default order (a reverse depth-first walk from the graph outputs) computes every
node that depends only on a graph input as early as it can. In the VAE decoder those are the
SpatialNorm convolutions of the upsampled latents, so their full-resolution outputs are all alive
at once (3.3 GiB against 1.0 GiB at 9x128x192, docs/onnxruntime-performance.md). These tests run a
real exported decoder graph through real sessions and read the executed order from ONNX Runtime's
own profiler (runtime/onnxruntime_profile.py)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from cogvx.contract.components import COMPONENTS
from cogvx.contract.shapes import ShapeProfile, ShapeSpec
from cogvx.engines.export_dir import export_engines
from cogvx.runtime.onnxruntime_backend import SessionSettings, session_options, settings_for
from cogvx.runtime.onnxruntime_profile import live_peak, profile_graph, random_feeds


@pytest.fixture(scope="module")
def decoder_graph(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("decoder")
    export_engines(tiny_checkpoint("5b"), out, ["vae_decoder"], ShapeProfile.static(ShapeSpec(1, 9, 64, 64, 7)))
    (path,) = out.glob("vae_decoder_first_*.onnx")  # 9 frames: one first chunk of 3 latent frames
    return path


def test_streaming_stages_run_in_program_order_and_need_less_memory(decoder_graph):
    settings = settings_for(COMPONENTS["vae_decoder"])
    assert settings.program_order and not settings.arena
    model = onnx.load(decoder_graph)
    program = [node.name for node in model.graph.node]

    ours = profile_graph(decoder_graph, session_options(settings)).order
    assert ours == program  # exactly the order torch ran the module in

    options = ort.SessionOptions()  # ONNX Runtime's default order, the same graph optimizations as ours
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    default = profile_graph(decoder_graph, options).order
    assert sorted(default) == sorted(program) and default != program
    # the default order keeps the hoisted SpatialNorm branches alive:
    # 2.6x on this tiny decoder, 3.3x at 9x128x192 with the real VAE
    assert live_peak(model, default) > 1.5 * live_peak(model, ours)
    # the order changes memory, not results
    sessions = [ort.InferenceSession(str(decoder_graph), o, providers=["CPUExecutionProvider"])
                for o in (session_options(settings), options)]
    feeds = random_feeds(sessions[0])
    for got, expected in zip(*(s.run(None, feeds) for s in sessions)):
        scale = max(1.0, float(np.abs(expected).max()))
        assert float(np.abs(got - expected).max()) / scale < 1e-5


def test_other_stages_keep_the_defaults():
    for name in ("text_encoder", "transformer", "vae_encoder"):
        assert settings_for(COMPONENTS[name]) == SessionSettings()
    options = session_options(SessionSettings())
    assert options.enable_cpu_mem_arena and options.execution_order == ort.ExecutionOrder.DEFAULT
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
