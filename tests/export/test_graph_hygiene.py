"""What every saved graph goes through (export/graph_passes.py): no machine paths, reproducible
bytes, fp32 normalization statistics in 16-bit graphs, the attention function only where used.

The passes are tested on tiny modules exported here with torch.onnx's dynamo exporter and saved
by `save_program`, and once end to end through `export_engines` (the tiny VAE decoder in fp16,
exported from two checkout paths).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf.message import Message
from onnx.reference import ReferenceEvaluator
from tiny_models import TINY_VAE, randomize_

import cogvx
from cogvx.contract.shapes import ShapeProfile, ShapeSpec
from cogvx.engines.export_dir import export_engines
from cogvx.export import attention_op, graph_passes, onnx_export
from cogvx.export.graph_check import check_graph
from cogvx.export.onnx_export import OPSET, save_program
from cogvx.modeling.configs import SchedulerConfig, TransformerConfig, VAEConfig
from cogvx.modeling.vae import CogVideoXVAE

REPO = Path(cogvx.__file__).resolve().parents[1]
# 17 frames: 5 latent frames, so a first-chunk graph (3 frames) and a next-chunk graph (2 frames)
DECODER_PROFILE = ShapeProfile.static(ShapeSpec(batch=1, frames=17, height=32, width=32, text_len=8))


# -- the export entry points these tests lean on, in one place ------------------------------------


def export_module(module: torch.nn.Module, args: tuple, path: Path) -> onnx.ModelProto:
    """Trace with the dynamo exporter as the package does and write through `save_program`."""
    program = torch.onnx.export(
        module, args, dynamo=True, opset_version=OPSET, verbose=False,
        custom_translation_table={torch.ops.cogvx.rope_attention.default: attention_op.translation()},
    )
    save_program(program.model, path)
    return onnx.load(path)


def write_checkpoint(folder: Path) -> Path:
    """A diffusers-layout folder with a tiny random VAE and the configs export reads (no transformer weights:
    only the VAE is exported)."""
    vae = randomize_(CogVideoXVAE(VAEConfig(**TINY_VAE)), seed=4).eval()
    vae.save_pretrained(folder / "vae")
    transformer = TransformerConfig(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                                    use_rotary_positional_embeddings=True)
    (folder / "transformer").mkdir(parents=True)
    (folder / "transformer" / "config.json").write_text(json.dumps(transformer.to_dict()))
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SchedulerConfig().to_dict()))
    return folder


def export_fp16_decoder(model_dir: Path, out: Path) -> dict[str, Path]:
    """The engine directory's fp16 VAE decoder graphs: {"first": ..., "next": ...}."""
    export_engines(model_dir, out, ["vae_decoder"], DECODER_PROFILE, torch.float16)
    files = sorted(out.glob("*.onnx"))
    assert len(files) == 2, files
    return {"first" if "first" in f.name else "next": f for f in files}


# -- helpers ---------------------------------------------------------------------------------------


class GroupNormBlock(torch.nn.Module):
    """per-channel affine -> GroupNorm -> SiLU, the VAE's pattern (a 1x1x1 conv would do, but ONNX
    Conv takes no bf16); GroupNorm exports as Reshape / InstanceNormalization / Reshape."""

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(8, 1, 1, 1))
        self.shift = torch.nn.Parameter(torch.zeros(8, 1, 1, 1))
        self.norm = torch.nn.GroupNorm(2, 8, eps=1e-6)

    def forward(self, x):
        return torch.nn.functional.silu(self.norm(x * self.gain + self.shift))


class TinyAttention(torch.nn.Module):
    def forward(self, q, k, v, cos, sin):
        return torch.ops.cogvx.rope_attention(q, k, v, cos, sin, 2)


def attention_inputs() -> tuple[torch.Tensor, ...]:
    """q, k, v (B, N, S, Dh) = (1, 2, 6, 16), 2 text tokens; cos, sin (V, Dh) = (4, 16)."""
    generator = torch.Generator().manual_seed(3)
    return tuple(torch.randn(shape, generator=generator) for shape in [(1, 2, 6, 16)] * 3 + [(4, 16)] * 2)


def group_norm_block(seed: int = 0) -> GroupNormBlock:
    """Gains around 3: the normalized input's variance is ~10, so a group's sum of squared
    deviations (4 x 2 x 48 x 48 = 18,432 elements) is ~2e5, past fp16's 65,504."""
    generator = torch.Generator().manual_seed(seed)
    module = GroupNormBlock().eval()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) + (3.0 if p is module.gain else 0.0))
    return module


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    """Max abs error relative to the output scale."""
    got, expected = np.asarray(got, dtype=np.float32), np.asarray(expected, dtype=np.float32)
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def metadata_holders(model: onnx.ModelProto) -> list[str]:
    """Every proto of the model that still carries metadata_props or a doc_string."""
    found = []

    def visit(message, where: str) -> None:
        fields = message.DESCRIPTOR.fields_by_name
        has_metadata = "metadata_props" in fields and len(message.metadata_props)
        if has_metadata or ("doc_string" in fields and message.doc_string):
            found.append(where)
        for field, value in message.ListFields():
            if field.message_type is None:
                continue
            items = [value] if isinstance(value, Message) else value  # a message or a repeated field
            for index, item in enumerate(items):
                visit(item, f"{where}.{field.name}[{index}]")

    visit(model, "model")
    return found


def casts_around(model: onnx.ModelProto, op_type: str) -> list[tuple[list[int], int]]:
    """For each `op_type` node: the Cast target types feeding its inputs and the one on its output."""
    producer = {output: node for node in model.graph.node for output in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def cast_to(node) -> int | None:
        return node.attribute[0].i if node is not None and node.op_type == "Cast" else None

    return [([cast_to(producer.get(name)) for name in node.input], cast_to(consumers[node.output[0]][0]))
            for node in model.graph.node if node.op_type == op_type]


# -- B. fp32 normalization statistics ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_group_norm_computes_statistics_in_fp32(dtype, tmp_path):
    module = group_norm_block()
    x = torch.randn(1, 8, 2, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = module(x).numpy()
    model = export_module(module.to(dtype), (x.to(dtype),), tmp_path / "norm.onnx")
    onnx_dtype = {torch.float16: onnx.TensorProto.FLOAT16, torch.bfloat16: onnx.TensorProto.BFLOAT16}[dtype]
    assert casts_around(model, "InstanceNormalization") == [([onnx.TensorProto.FLOAT] * 3, onnx_dtype)]
    assert check_graph(model).problems == []
    feed = x.numpy().astype(onnx.helper.tensor_dtype_to_np_dtype(onnx_dtype))
    # Before the pass, onnx's reference evaluator (statistics in the input dtype) is off by 1.05 of
    # the output scale in fp16 (the variance sum overflows to inf) and 1.35 in bf16 (8 mantissa
    # bits cannot accumulate 18,432 squares); 0.71-0.77 on the tiny VAE decoder. With the pass:
    # 1.0e-3 (fp16) and 7.7e-3 (bf16, its rounding of input and output).
    bar = {torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    assert relative_error(ReferenceEvaluator(model).run(None, {"x": feed})[0], expected) <= bar
    if dtype == torch.float16:  # ONNX Runtime's CPU kernels take no bf16 Mul / Sigmoid
        session = ort.InferenceSession(str(tmp_path / "norm.onnx"), providers=["CPUExecutionProvider"])
        assert relative_error(session.run(None, {"x": feed})[0], expected) <= bar


def test_graphs_with_external_data_are_finalized_too(tmp_path, monkeypatch):
    """Past 2 GB the weights go to external data and the graph is finalized after reloading."""
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)
    module = group_norm_block()
    x = torch.randn(1, 8, 2, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = module(x).numpy()
    model = export_module(module.half(), (x.half(),), tmp_path / "norm.onnx")
    assert (tmp_path / "norm.onnx.data").is_file()
    assert casts_around(model, "InstanceNormalization") == [([onnx.TensorProto.FLOAT] * 3, onnx.TensorProto.FLOAT16)]
    assert metadata_holders(model) == []
    got = ReferenceEvaluator(str(tmp_path / "norm.onnx")).run(None, {"x": x.half().numpy()})[0]
    assert relative_error(got, expected) <= 1e-2  # 1.05 without the fp32 statistics, as above


def test_normalizations_without_declared_types_are_found_by_inference():
    """A graph that declares no intermediate types (the exporter's do) still gets its 16-bit
    InstanceNormalization and LayerNormalization computed in fp32."""
    fp16, n = onnx.TensorProto.FLOAT16, 20000
    constants = {"ones": np.ones(2, np.float16), "zeros": np.zeros(2, np.float16),
                 "row_ones": np.ones(n, np.float16), "row_zeros": np.zeros(n, np.float16)}
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["r"]),  # r: no declared type
         onnx.helper.make_node("InstanceNormalization", ["r", "ones", "zeros"], ["instance"], epsilon=1e-6),
         onnx.helper.make_node("LayerNormalization", ["r", "row_ones", "row_zeros"], ["layer"], epsilon=1e-6)],
        "norms", [onnx.helper.make_tensor_value_info("x", fp16, [1, 2, n])],
        [onnx.helper.make_tensor_value_info(name, fp16, [1, 2, n]) for name in ("instance", "layer")],
        [onnx.numpy_helper.from_array(value, name) for name, value in constants.items()])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)])
    x = (8 * np.random.default_rng(0).standard_normal((1, 2, n))).astype(np.float16)
    relu = np.maximum(x.astype(np.float64), 0)
    expected = (relu - relu.mean(-1, keepdims=True)) / np.sqrt(relu.var(-1, keepdims=True) + 1e-6)  # both norms
    with np.errstate(over="ignore", invalid="ignore"):  # the overflow this pass removes
        before = [relative_error(y, expected) for y in ReferenceEvaluator(model).run(None, {"x": x})]
    graph_passes.finalize(model)
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node].count("Cast") == 4 + 1 + 2  # constants; r (shared); two back
    after = [relative_error(y, expected) for y in ReferenceEvaluator(model).run(None, {"x": x})]
    # measured: 1.0 (both norms) before, the 20,000 squares of ~20 overflowing fp16; 2.6e-4 after
    assert max(after) <= 1e-2 < min(before), (before, after)


def test_fp32_graph_gets_no_casts(tmp_path):
    model = export_module(group_norm_block(), (torch.randn(1, 8, 1, 8, 8),), tmp_path / "norm.onnx")
    ops = [node.op_type for node in model.graph.node]
    assert "InstanceNormalization" in ops and "Cast" not in ops


@pytest.fixture(scope="module")
def fp16_decoder(tmp_path_factory):
    """The tiny VAE decoder exported in fp16 through the engine directory, and its fp32 reference."""
    root = tmp_path_factory.mktemp("hygiene")
    model_dir = write_checkpoint(root / "a" / "model")
    graphs = export_fp16_decoder(model_dir, root / "a" / "engines")
    return root, model_dir, graphs, CogVideoXVAE.from_pretrained(model_dir / "vae").eval()


def test_fp16_vae_decoder_matches_fp32_reference_on_both_evaluators(fp16_decoder):
    _, _, graphs, vae = fp16_decoder
    generator = torch.Generator().manual_seed(0)
    first, following = (torch.randn(1, 4, frames, 4, 4, generator=generator) for frames in (3, 2))
    with torch.no_grad():
        expected_first, cache = vae.decode_chunk(first, None)
        expected_next, _ = vae.decode_chunk(following, cache)
    feeds = {
        "first": {"latents": first},
        "next": {"latents": following} | {f"conv_cache.{name}": tensor for name, tensor in cache.items()},
    }
    for role, expected in (("first", expected_first), ("next", expected_next)):
        model = onnx.load(graphs[role])
        # every norm: data, scale and bias through Casts to fp32 (scale and bias Casts shared), the
        # output through a Cast back to fp16
        norms = [n for n in model.graph.node if n.op_type == "InstanceNormalization"]
        assert norms and all(cast == ([onnx.TensorProto.FLOAT] * 3, onnx.TensorProto.FLOAT16)
                             for cast in casts_around(model, "InstanceNormalization"))
        inputs = {name: tensor.half().numpy() for name, tensor in feeds[role].items()}
        assert [i.name for i in model.graph.input] == list(inputs)
        # Measured: reference evaluator 0.71 (first) / 0.77 (next) before the pass, 2.3e-3 / 1.7e-3
        # after; ONNX Runtime 1.0e-3 / 1.1e-3 before (it upcasts itself), 1.4e-3 / 1.1e-3 after.
        got_reference = ReferenceEvaluator(model).run(None, inputs)[0]
        session = ort.InferenceSession(str(graphs[role]), providers=["CPUExecutionProvider"])
        got_runtime = session.run(None, inputs)[0]
        assert got_reference.shape == got_runtime.shape == tuple(expected.shape)
        assert relative_error(got_reference, expected.numpy()) <= 1e-2, role
        assert relative_error(got_runtime, expected.numpy()) <= 1e-2, role


# -- A. no metadata, no paths, the same bytes from anywhere ----------------------------------------


def test_saved_graphs_carry_no_metadata_or_paths(tmp_path):
    norm = export_module(group_norm_block(), (torch.randn(1, 8, 1, 8, 8),), tmp_path / "norm.onnx")
    inputs = attention_inputs()
    attention = export_module(TinyAttention().eval(), inputs, tmp_path / "attention.onnx")
    for name, model in (("norm", norm), ("attention", attention)):
        assert metadata_holders(model) == [], name
        data = (tmp_path / f"{name}.onnx").read_bytes()
        # this test file (the exported modules' source), torch and the output live under these
        for folder in (REPO, Path(torch.__file__).parent, Path.cwd(), tmp_path):
            assert str(folder).encode() not in data, (name, folder)


def test_attention_function_only_where_a_node_calls_it(tmp_path):
    norm = export_module(group_norm_block(), (torch.randn(1, 8, 1, 8, 8),), tmp_path / "norm.onnx")
    assert len(norm.functions) == 0
    assert [o.domain for o in norm.opset_import] == [""]
    inputs = attention_inputs()
    attention = export_module(TinyAttention().eval(), inputs, tmp_path / "attention.onnx")
    assert [(f.domain, f.name) for f in attention.functions] == [(attention_op.DOMAIN, attention_op.OP_TYPE)]
    assert attention_op.DOMAIN in {o.domain for o in attention.opset_import}
    assert check_graph(attention).plugin_nodes == 1 and check_graph(attention).problems == []
    got = ort.InferenceSession(str(tmp_path / "attention.onnx"), providers=["CPUExecutionProvider"]).run(
        None, dict(zip([i.name for i in attention.graph.input], (t.numpy() for t in inputs))))[0]
    with torch.no_grad():
        expected = TinyAttention()(*inputs)
    assert relative_error(got, expected.numpy()) <= 1e-5


def copy_sources(destination: Path) -> Path:
    """The package laid out as installed (pyproject's package-dir: `cogvx.export` from export/ ...)
    under `destination`, importable with PYTHONPATH=destination."""
    package_dirs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    ignore = shutil.ignore_patterns("__pycache__", "assets", "*.pyc")
    for package, folder in sorted(package_dirs.items(), key=lambda item: item[0].count(".")):
        shutil.copytree(REPO / folder, destination / package.replace(".", "/"), ignore=ignore, dirs_exist_ok=True)
    return destination


EXPORT_FROM_COPY = """
import sys
from pathlib import Path
import torch
import cogvx.engines.export_dir, cogvx.export.onnx_export, cogvx.modeling.vae
copy = Path(sys.argv[3]).resolve()
for module in (cogvx, cogvx.engines.export_dir, cogvx.export.onnx_export, cogvx.modeling.vae):
    assert Path(module.__file__).resolve().is_relative_to(copy), f"{module.__name__} imported from {module.__file__}"
sys.path[:0] = sys.argv[4:]  # this file and tests/tiny_models.py
import test_graph_hygiene
test_graph_hygiene.export_fp16_decoder(Path(sys.argv[1]), Path(sys.argv[2]))
"""


@pytest.mark.slow
def test_same_checkpoint_gives_the_same_bytes_from_another_checkout(fp16_decoder):
    """The same checkpoint at another path, exported by a copy of the package at another path, from
    another working directory: the graphs must be the same bytes and name none of those paths."""
    root, model_dir, graphs, _ = fp16_decoder
    other = root / "b" / "some" / "other"
    shutil.copytree(model_dir, other / "model")
    sources = copy_sources(root / "b" / "checkout")
    env = {**os.environ, "PYTHONPATH": str(sources)}
    arguments = [other / "model", other / "engines", sources, Path(__file__).parent, Path(__file__).parents[1]]
    subprocess.run([sys.executable, "-c", EXPORT_FROM_COPY, *map(str, arguments)], cwd=other, env=env, check=True,
                   timeout=300)
    for role, path in graphs.items():
        data = path.read_bytes()
        assert (other / "engines" / path.name).read_bytes() == data, role
        for folder in (REPO, root, Path(torch.__file__).parent):
            assert str(folder).encode() not in data, (role, folder)
        assert metadata_holders(onnx.load(path)) == [], role
