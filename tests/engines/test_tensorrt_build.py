"""TensorRT build and runtime logic that needs neither TensorRT nor a GPU, against references:
optimization profiles against the shapes the descriptors and the VAE really make, buffers against
tensor sizes, precision and plan-compatibility decisions, plugin attribute checks, build records in
the manifest, and `cogvx build` on a machine without TensorRT. The tests that build and run plans
are marked `tensorrt` and `gpu` and are skipped here (TensorRT cannot be installed on this machine)."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

from cogvx.cli import main
from cogvx.contract.components import COMPONENTS
from cogvx.contract.manifest import (
    BuildRecord, EngineDirectoryError, Manifest, UnsafeManifestError, file_sha256,
)
from cogvx.contract.shapes import ShapeProfile, ShapeSpec, parse_profile
from cogvx.engines import plugin
from cogvx.engines.export_dir import export_engines
from cogvx.engines.tensorrt_build import (
    Device, RebuildError, TensorRTError, TensorRTMissing, check_plan, check_precision, evaluate_dim, graph_io,
    optimization_profile, plan_buffers, precision_needs, require_tensorrt,
)
from cogvx.export.descriptors import TransformerDescriptor, VAEEncoderDescriptor, load_vae
from cogvx.modeling.precision import Precision

TEXT_LEN = 7


def _real_tensorrt() -> bool:
    try:
        require_tensorrt()
    except TensorRTMissing:
        return False
    return True


HAS_TENSORRT = _real_tensorrt()


@pytest.fixture(scope="module")
def dynamic_engines(tiny_checkpoint, tmp_path_factory):
    """Every component of the tiny 1.5-I2V, exported with a dynamic batch, frames, height and width."""
    checkpoint = tiny_checkpoint("1.5-i2v")
    out = tmp_path_factory.mktemp("dynamic") / "engines"
    profile = parse_profile("dynamic", ShapeSpec(batch=1, frames=9, text_len=TEXT_LEN), frames="9:13:17",
                            height="48:64:64", width="64:64:80", batch="1:1:2")
    export_engines(checkpoint, out, list(COMPONENTS), profile)
    return checkpoint, out, Manifest.load(out), profile


def _corners(component: str, profile: ShapeProfile):
    cfg = component in ("transformer", "text_encoder")  # prompts and negative prompts in one batch
    return [(profile.min, profile.min.batch), (profile.opt, 2 * profile.opt.batch if cfg else profile.opt.batch),
            (profile.max, 2 * profile.max.batch if cfg else profile.max.batch)]


def _expected_shapes(component: str, role: str, model, checkpoint, spec: ShapeSpec, batch: int) -> dict:
    """What the stage really feeds the graph at one request shape, made by the code that makes it."""
    if component == "transformer":
        inputs = TransformerDescriptor(model).sample_inputs(spec, batch=batch)
        return {name: tuple(t.shape) for name, t in inputs.items()}
    if component == "text_encoder":
        return {"input_ids": (batch, spec.text_len)}
    if component == "vae_encoder":
        return {"video": tuple(VAEEncoderDescriptor(model).sample_inputs(spec)["video"].shape)}
    vae = load_vae(checkpoint, "vae", torch.float32)
    s = model.vae.spatial_compression
    frames = 2 if role == "next" else int(role.removeprefix("first_"))
    latents = torch.zeros(batch, model.vae.latent_channels, frames, spec.height // s, spec.width // s)
    shapes = {"latents": tuple(latents.shape)}
    if role == "next":
        with torch.no_grad():
            _, cache = vae.decode_chunk(torch.zeros(batch, model.vae.latent_channels, 2, *latents.shape[3:]), None)
        shapes |= {f"conv_cache.{name}": tuple(t.shape) for name, t in cache.items()}
    return shapes


def test_optimization_profiles_are_the_shapes_the_stages_feed(dynamic_engines):
    checkpoint, out, manifest, profile = dynamic_engines
    model = manifest.model_config()
    checked = 0
    for component, record in manifest.stages.items():
        for role, file_name in record.graphs.items():
            inputs, _ = graph_io(onnx.load(out / file_name, load_external_data=False))
            shapes = optimization_profile(component, model, profile, inputs)
            assert set(shapes) == set(record.inputs[role])
            for corner, (spec, batch) in enumerate(_corners(component, profile)):
                expected = _expected_shapes(component, role, model, checkpoint, spec, batch)
                assert {name: shape[corner] for name, shape in shapes.items()} == expected, (component, role, corner)
                checked += 1
    assert checked == 3 * sum(len(r.graphs) for r in manifest.stages.values()) == 3 * 6  # decoder: first_2, first_3, next


def test_torch_tensorrt_input_ranges_are_the_build_profile(dynamic_engines):
    """torch-tensorrt's dynamic inputs for the traced transformer (engines/torch_trt.py) are the
    optimization profile `cogvx build` gives the exported graph: one profile, two compilers."""
    from cogvx.engines.torch_trt import input_ranges

    _, out, manifest, profile = dynamic_engines
    model = manifest.model_config()
    inputs, _ = graph_io(onnx.load(out / "transformer.onnx", load_external_data=False))
    ranges = input_ranges(model, profile)
    assert {name: shapes for name, (shapes, _) in ranges.items()} == optimization_profile("transformer", model, profile,
                                                                                          inputs)
    assert ranges["timestep"][1] == torch.int64 and ranges["latents"][1] == torch.float32


def test_compare_feeds_are_the_profile_corners_in_each_inputs_domain(dynamic_engines):
    """`cogvx build --compare` feeds (engines/compare.py): the optimization profile's shapes and the
    graph's dtypes at every corner, real position tables, timesteps in [0, 1000), token ids."""
    from cogvx.engines.compare import TOKEN_IDS, corner_feeds

    _, out, manifest, profile = dynamic_engines
    model = manifest.model_config()
    for component, record in manifest.stages.items():
        for role, file_name in record.graphs.items():
            graph = onnx.load(out / file_name, load_external_data=False)
            inputs, _ = graph_io(graph)
            shapes = optimization_profile(component, model, profile, inputs)
            feeds = corner_feeds(component, model, profile, graph)
            assert [{n: f.shape for n, f in feed.items()} for feed in feeds] == [
                {n: corners[i] for n, corners in shapes.items()} for i in range(3)], (component, role)
            for tensor in inputs:
                assert all(feed[tensor.name].dtype == onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
                           for feed in feeds)
            if component == "text_encoder":
                assert all(0 <= feed["input_ids"].min() and feed["input_ids"].max() < TOKEN_IDS for feed in feeds)
    feeds = corner_feeds("transformer", model, profile, onnx.load(out / "transformer.onnx", load_external_data=False))
    tables = TransformerDescriptor(model).table_inputs(profile.max)
    assert all(torch.equal(torch.from_numpy(feeds[2][name]), table) for name, table in tables.items())
    assert all(feed["timestep"].min() >= 0 and feed["timestep"].max() < 1000 for feed in feeds)
    assert not np.array_equal(feeds[1]["latents"][:1], feeds[2]["latents"][:1])  # seeded per corner


def test_compare_passes_the_same_math_and_names_a_wrong_graph(dynamic_engines, tmp_path):
    """polygraphy's Comparator with a candidate at every corner: the standard-form export of the
    same transformer passes (exact forms of one function), a graph with one weight 1 % off fails
    at every corner with its error reported."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    from cogvx.engines.compare import TOLERANCES, compare_graph

    checkpoint, out, manifest, profile = dynamic_engines
    model = manifest.model_config()
    standard = tmp_path / "standard"
    export_engines(checkpoint, standard, ["transformer"], profile, attention="standard")
    candidate = OnnxrtRunner(SessionFromOnnx(str(standard / "transformer.onnx")), name="standard form")
    passed = compare_graph("transformer", "main", model, profile, out / "transformer.onnx", candidate, 1e-5)
    assert [(c.corner, c.output) for c in passed] == [(corner, "velocity") for corner in ("min", "opt", "max")]
    assert all(c.passed for c in passed), passed
    B, F, _, h, w = TransformerDescriptor(model).latent_shape(profile.max, 2 * profile.max.batch)
    assert passed[2].shape == (B, F, model.transformer.out_channels, h, w)

    wrong = onnx.load(out / "transformer.onnx")
    initializers = {t.name: t for t in wrong.graph.initializer}
    last = next(n for n in reversed(wrong.graph.node) if n.op_type in ("MatMul", "Gemm")
                and any(i in initializers for i in n.input))  # proj_out, the velocity's last weight
    weight = initializers[next(i for i in last.input if i in initializers)]
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * 1.01, weight.name))
    onnx.save(wrong, tmp_path / "wrong.onnx")
    candidate = OnnxrtRunner(SessionFromOnnx(str(tmp_path / "wrong.onnx")), name="one weight off")
    failed = compare_graph("transformer", "main", model, profile, out / "transformer.onnx", candidate,
                           TOLERANCES[Precision.parse(manifest.stages["transformer"].dtype)])
    assert not any(c.passed for c in failed) and all(c.error > 1e-3 for c in failed), failed


def test_buffers_at_the_max_profile_are_the_tensor_sizes(dynamic_engines):
    checkpoint, out, manifest, profile = dynamic_engines
    model = manifest.model_config()
    inputs, outputs = graph_io(onnx.load(out / "transformer.onnx", load_external_data=False))
    plan = plan_buffers("transformer", model, profile, inputs, outputs)
    sample = TransformerDescriptor(model).sample_inputs(profile.max, batch=2 * profile.max.batch)
    for name, tensor in sample.items():
        assert plan[name] == (tuple(tensor.shape), tensor.numel() * tensor.element_size())
    B, F, _, h, w = sample["latents"].shape  # I2V latents carry the image's channels too; velocity does not
    velocity = (B, F, model.transformer.out_channels, h, w)
    assert plan["velocity"] == (velocity, math.prod(velocity) * 4)  # fp32 graph


def test_dim_expressions_are_evaluated_never_executed():
    symbols = {"batch": 2, "grid_t": 3}
    assert evaluate_dim("2*grid_t", symbols) == 6 and evaluate_dim("batch", symbols) == 2 and evaluate_dim(5, {}) == 5
    assert evaluate_dim("grid_t*4 + batch - 1", symbols) == 13
    for bad in ("__import__('os').getcwd()", "batch.real", "grid_t ** 2", "unknown * 2", "2*"):
        with pytest.raises(TensorRTError):
            evaluate_dim(bad, symbols)


def _qdq_graph(zero_type: int, io_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    zero = helper.make_tensor("zero", zero_type, [], [0])
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [0.1])
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", io_type, [4])],
                              [helper.make_tensor_value_info("y", io_type, [4])], initializer=[zero, scale])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def test_fp8_qdq_needs_compute_capability_89():
    fp8 = _qdq_graph(TensorProto.FLOAT8E4M3FN)
    assert precision_needs(fp8) == {"FP8 Q/DQ": (8, 9)}
    with pytest.raises(TensorRTError, match=r"FP8 Q/DQ, which needs compute capability 8\.9\+; A100 is 8\.0: "
                                            r"export with --dtype int8"):
        check_precision(fp8, (8, 0), "A100")
    check_precision(fp8, (8, 9))  # Ada
    check_precision(fp8, (9, 0))  # Hopper
    int8 = _qdq_graph(TensorProto.INT8)
    assert precision_needs(int8) == {}
    check_precision(int8, (7, 5))
    bf16 = _qdq_graph(TensorProto.INT8, io_type=TensorProto.BFLOAT16)
    with pytest.raises(TensorRTError, match="BF16, which needs compute capability 8.0"):
        check_precision(bf16, (7, 5), "T4")


def _records(key: str = "k" * 32, tensorrt: str = "10.15.1.29", capability: str = "9.0", compat: str = "none"):
    from cogvx.contract.manifest import StageRecord

    stage = StageRecord(component="transformer", key=key, dtype="fp16", profile={}, files={}, graphs={})
    build = BuildRecord(component="transformer", key=key, tensorrt=tensorrt, gpu="NVIDIA H100 80GB HBM3",
                        compute_capability=capability, hardware_compat=compat, plans={}, files={})
    return stage, build


def test_plan_compatibility_decisions(caplog):
    h100 = Device("10.15.1.29", "NVIDIA H100 80GB HBM3", (9, 0))
    stage, build = _records()
    check_plan(build, stage, h100)
    stage.key = "x" * 32
    with pytest.raises(RebuildError, match="built from an earlier export.*cogvx build"):
        check_plan(build, stage, h100)
    stage, build = _records(tensorrt="10.14.1.48")
    with pytest.raises(RebuildError, match="built with TensorRT 10.14.1.48, this is 10.15.1.29.*cogvx build"):
        check_plan(build, stage, h100)
    a100 = Device("10.15.1.29", "NVIDIA A100-SXM4-80GB", (8, 0))
    stage, build = _records()
    with pytest.raises(RebuildError, match=r"compute capability 9\.0\), this is NVIDIA A100.*--hardware-compat ampere\+"):
        check_plan(build, stage, a100)
    stage, build = _records(compat="ampere+")
    check_plan(build, stage, a100)  # an Ampere+ plan runs on any Ampere or newer GPU
    with pytest.raises(RebuildError, match="older than Ampere"):
        check_plan(build, stage, Device("10.15.1.29", "Tesla T4", (7, 5)))
    stage, build = _records()
    h100_pcie = Device("10.15.1.29", "NVIDIA H100 PCIe", (9, 0))
    check_plan(build, stage, h100_pcie)  # same generation, another board: runs, with a warning
    assert "built on NVIDIA H100 80GB HBM3 and run on NVIDIA H100 PCIe" in caplog.text


def test_exported_plugin_nodes_match_the_registered_plugin(dynamic_engines):
    _, out, manifest, _ = dynamic_engines
    graph = onnx.load(out / "transformer.onnx", load_external_data=False)
    nodes = plugin.plugin_nodes(graph)
    assert len(nodes) == manifest.model_config().transformer.num_layers
    assert all(plugin.plugin_attribute_problems(node) == [] for node in nodes)
    baked = plugin.baked_attributes(graph)
    assert set(baked) == {n.name for n in nodes} and {a["num_text_tokens"] for a in baked.values()} == {TEXT_LEN}
    plugin.check_baked_attributes(baked, (TEXT_LEN, TEXT_LEN))
    with pytest.raises(plugin.PluginError, match="built for 7 text tokens, the stage takes 5 to 7"):
        plugin.check_baked_attributes(baked, (5, 7))
    # exported for a dynamic text length: the kernel takes the prefix from the shapes, any length fits
    plugin.check_baked_attributes({n: {"num_text_tokens": -1} for n in baked}, (5, 7))


def test_plugin_attribute_mismatches_are_named():
    def node(**attributes):
        base = {"num_text_tokens": 7, "plugin_namespace": "cogvx", "plugin_version": "1"}
        return helper.make_node("RoPEAttention3D", ["q", "k", "v", "cos", "sin"], ["o"], domain="cogvx",
                                name="layer0", **{k: v for k, v in (base | attributes).items() if v is not None})
    assert plugin.plugin_attribute_problems(node()) == []
    assert plugin.plugin_attribute_problems(node(aot=1)) == []  # read by the parser, not passed on
    assert plugin.plugin_attribute_problems(node(num_text_tokens=None)) == [
        "layer0 lacks attribute num_text_tokens, which plugin cogvx::RoPEAttention3D declares"]
    assert "declares INT" in plugin.plugin_attribute_problems(node(num_text_tokens=7.0))[0]
    assert "attributes ['scale']" in plugin.plugin_attribute_problems(node(scale=0.125))[0]
    assert "plugin_version '2', the registered plugin is '1'" in plugin.plugin_attribute_problems(
        node(plugin_version="2"))[0]
    assert "below -1" in plugin.plugin_attribute_problems(node(num_text_tokens=-2))[0]
    assert plugin.plugin_attribute_problems(node(num_text_tokens=-1)) == []  # derived from the shapes
    model = helper.make_model(helper.make_graph([node(scale=0.1)], "g", [], []))
    with pytest.raises(plugin.PluginError, match="do not match the registered plugin"):
        plugin.baked_attributes(model)


def test_plugin_tactics_are_the_kernel_configurations():
    """TensorRT numbers tactics from 1 (0: none chosen); each maps to one launch configuration."""
    from cogvx.engines.triton_attention import GPU_TACTICS, TACTICS

    assert all(len(configs) == TACTICS for configs in GPU_TACTICS.values())
    tactics = plugin.plugin_tactics(TACTICS)
    assert tactics == list(range(1, TACTICS + 1))
    assert [plugin.kernel_tactic(t, TACTICS) for t in tactics] == list(range(TACTICS))
    assert plugin.kernel_tactic(0, TACTICS) == plugin.kernel_tactic(None, TACTICS) == 0
    with pytest.raises(plugin.PluginError, match="tactic 4; the plugin advertises 1 to 3"):
        plugin.kernel_tactic(4, 3)
    with pytest.raises(plugin.PluginError):
        plugin.plugin_tactics(0)


def test_ptx_parameter_trimming():
    ptx = (".version 8.4\n.target sm_90a\n.visible .entry k(\n\t.param .u64 .ptr .global .align 1 k_param_0,\n"
           "\t.param .u32 k_param_1,\n\t.param .u64 .ptr .global .align 1 k_param_2,\n\t.param .u64 .ptr .global "
           ".align 1 k_param_3\n)\n{\n\tld.param.u64 %rd1, [k_param_0];\n\tld.param.u32 %r1, [k_param_1];\n}\n")
    assert plugin.ptx_parameters(ptx) == ["k_param_0", "k_param_1", "k_param_2", "k_param_3"]
    trimmed = plugin.tensorrt_ptx(ptx, 2)
    assert plugin.ptx_parameters(trimmed) == ["k_param_0", "k_param_1"] and "ld.param.u32 %r1, [k_param_1]" in trimmed
    with pytest.raises(plugin.PluginError, match="scratch memory"):
        plugin.tensorrt_ptx(ptx, 2, scratch_bytes=256)
    with pytest.raises(plugin.PluginError, match="scratch memory"):
        plugin.tensorrt_ptx(ptx, 1)  # k_param_1 is read by the body: it cannot go
    assert plugin.tensorrt_ptx(ptx, 4) == ptx


def test_build_records_round_trip_and_are_checked(dynamic_engines, tmp_path):
    _, out, _, _ = dynamic_engines
    copy = tmp_path / "engines"
    shutil.copytree(out, copy)
    (copy / "transformer.plan").write_bytes(b"not a real plan")
    manifest = Manifest.load(copy)
    manifest.builds["transformer"] = BuildRecord(
        component="transformer", key=manifest.stages["transformer"].key, tensorrt="10.15.1.29", gpu="NVIDIA H100",
        compute_capability="9.0", hardware_compat="none", plans={"main": "transformer.plan"},
        files={"transformer.plan": file_sha256(copy / "transformer.plan")}, plugins={"n": {"num_text_tokens": 7}},
        options={"opt_level": 3, "plugin": "aot"})
    manifest.save(copy)
    assert Manifest.load(copy).builds == manifest.builds
    data = json.loads((copy / "manifest.json").read_text())
    data["builds"]["transformer"]["files"] = {"../outside.plan": "0" * 64}
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(UnsafeManifestError):
        Manifest.load(copy)
    data["builds"]["transformer"]["files"] = {"transformer.plan": "0" * 64}
    data["builds"]["transformer"]["plans"] = {"first_9": "transformer.plan"}
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(EngineDirectoryError, match="no such graph role"):
        Manifest.load(copy)
    data["builds"]["transformer"]["surprise"] = 1
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(EngineDirectoryError, match="unknown keys"):
        Manifest.load(copy)


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the machine without TensorRT")
def test_a_plan_is_checked_before_tensorrt_sees_it(dynamic_engines, tmp_path):
    """`checked_plan` (the runner's and --compare's way to a plan): the hash the build recorded, the
    export and machine it was built for; a truncated plan never reaches TensorRT's deserializer."""
    from cogvx.engines.tensorrt_runtime import checked_plan

    _, out, _, _ = dynamic_engines
    copy = tmp_path / "engines"
    shutil.copytree(out, copy)
    plan = copy / "vae_encoder.plan"
    plan.write_bytes(b"\x00" * 4096)
    manifest = Manifest.load(copy)
    h100 = Device("10.15.1.29", "NVIDIA H100", (9, 0))
    manifest.builds["vae_encoder"] = BuildRecord(
        component="vae_encoder", key=manifest.stages["vae_encoder"].key, tensorrt=h100.tensorrt, gpu=h100.gpu,
        compute_capability="9.0", hardware_compat="none", plans={"main": plan.name},
        files={plan.name: file_sha256(plan)}, plugins={}, options={"opt_level": 3, "plugin": "aot"})
    manifest.save(copy)
    manifest = Manifest.load(copy)
    assert checked_plan(manifest, copy, "vae_encoder", "main", h100) == plan.resolve()
    plan.write_bytes(b"\x00" * 1000)  # cut short
    with pytest.raises(RebuildError, match="does not match the manifest; run `cogvx build` again"):
        checked_plan(manifest, copy, "vae_encoder", "main", h100)
    with pytest.raises(RebuildError, match="built for NVIDIA H100 .* this is NVIDIA A100"):
        checked_plan(manifest, copy, "vae_encoder", "main", Device("10.15.1.29", "NVIDIA A100", (8, 0)))
    with pytest.raises(EngineDirectoryError, match="no TensorRT plans for transformer"):
        checked_plan(manifest, copy, "transformer", "main", h100)


def test_build_without_tensorrt_says_what_to_install(dynamic_engines):
    _, out, _, _ = dynamic_engines
    result = CliRunner().invoke(main, ["build", "--engines", str(out)])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert result.output.startswith("error: TensorRT is not installed: `pip install tensorrt`")
    with pytest.raises(TensorRTMissing):
        require_tensorrt()
    if importlib.util.find_spec("tensorrt") is not None:  # the stubs' namespace package is not TensorRT
        assert "type stubs" in result.output


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_TENSORRT and torch.cuda.is_available()), reason="needs TensorRT and a CUDA GPU")
@pytest.mark.parametrize("attention", ["plugin", "standard"])
def test_built_plans_run_like_onnxruntime(attention, tiny_checkpoint, tmp_path):
    """Build the tiny 5B's transformer and compare one denoiser call with ONNX Runtime's."""
    from cogvx.engines.tensorrt_build import build_engines
    from cogvx.engines.tensorrt_runtime import tensorrt_stages
    from cogvx.runtime.onnxruntime_backend import onnxruntime_stages

    checkpoint, out = tiny_checkpoint("5b"), tmp_path / "engines"
    spec = ShapeSpec(batch=1, frames=9, height=64, width=64, text_len=TEXT_LEN)
    export_engines(checkpoint, out, ["transformer"], ShapeProfile.static(spec), attention=attention)
    (record,) = build_engines(out)
    assert record.plans == {"main": "transformer.plan"}
    trt_stages, manifest = tensorrt_stages(out)
    ort_stages, _ = onnxruntime_stages(out, ["CPUExecutionProvider"])
    model = manifest.model_config()
    descriptor = TransformerDescriptor(model)
    inputs = descriptor.sample_inputs(spec, batch=2)
    tables = {n: t.flatten(0, 2) for n, t in inputs.items() if n in ("rope_cos", "rope_sin")}  # stage takes (V, D)
    feeds = {n: t for n, t in inputs.items() if n not in tables} | tables
    got = trt_stages["denoiser"](**{n: t.cuda() for n, t in feeds.items()})["velocity"].cpu()
    expected = ort_stages["denoiser"](**feeds)["velocity"]
    assert (got - expected).abs().max().item() / max(1.0, expected.abs().max().item()) <= 1e-3
    assert not math.isnan(got.sum().item())
    # the static profile is captured as a CUDA graph (the default): two replays with other inputs
    # give what a direct enqueue gives, and the first result survives the second replay
    direct, _ = tensorrt_stages(out, cuda_graphs=False)
    captured = trt_stages["denoiser"].runners["main"].captured
    assert captured is not None and len(captured.captures) == 1
    other = {n: (t * 0.5 if t.is_floating_point() and n not in tables else t).cuda() for n, t in feeds.items()}
    first = trt_stages["denoiser"](**other)["velocity"]
    kept = first.clone()
    again = trt_stages["denoiser"](**{n: t.cuda() for n, t in feeds.items()})["velocity"]
    assert torch.equal(first, kept)
    scale = max(1.0, kept.abs().max().item())
    assert torch.allclose(first, direct["denoiser"](**other)["velocity"], rtol=0, atol=1e-6 * scale)
    assert torch.equal(again.cpu(), got)
    from cogvx.engines.compare import compare_plans  # the plan against its graph at every corner of the profile

    comparisons = compare_plans(out)
    assert len(comparisons) == 3 and all(c.passed for c in comparisons), comparisons
