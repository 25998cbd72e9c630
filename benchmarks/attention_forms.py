"""The two ONNX forms of the attention seam on ONNX Runtime CPU, side by side in one run.

- plugin form: one `cogvx::RoPEAttention3D` node; ONNX Runtime inlines its local function body
  (Slice / Reshape / Concat RoPE, MatMul, Softmax, MatMul, all in fp32): what `cogvx export` writes
  by default and what runs on ONNX Runtime today;
- standard form: opset-23 `RotaryEmbedding` + `Attention` (`cogvx export --attention standard`).

    python benchmarks/attention_forms.py ops           # one attention node, toy and real-width shapes
    python benchmarks/attention_forms.py transformer   # the real 5B width, 2 layers, 9x160x240, both exports

Each writes benchmarks/results/attention_forms_<name>.json: medians of alternating runs (the two
forms take turns, so a neighbour's load on the shared cores hits both alike), the ratio
plugin_ms / standard_ms (> 1: the standard form is faster), and the largest difference between the
two outputs (and, for the transformer, against torch), relative to the output scale.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

RESULTS = Path(__file__).parent / "results"


def session(model_or_path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    source = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def alternate(runs: dict, repeats: int) -> dict[str, float]:
    """Median milliseconds of each callable, run in turns after one warm-up each."""
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: round(1e3 * statistics.median(values), 3) for name, values in times.items()}


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / max(1.0, np.abs(b).max()))


def attention_graph(text: int, heads: int, head_dim: int) -> onnx.ModelProto:
    """One plugin-form node over graph inputs, as the exporter writes it (opset 20, function attached)."""
    from onnx import TensorProto, helper

    from cogvx.export import attention_op

    attention_op.register_schema()
    node = helper.make_node(attention_op.OP_TYPE, ["q", "k", "v", "cos", "sin"], ["out"], domain=attention_op.DOMAIN,
                            name="attention", num_text_tokens=text, plugin_namespace=attention_op.DOMAIN,
                            plugin_version=attention_op.PLUGIN_VERSION)
    qkv = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", heads, "S", head_dim]) for n in "qkv"]
    tables = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["V", head_dim]) for n in ("cos", "sin")]
    graph = helper.make_graph([node], "attention", [*qkv, *tables],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", heads, "S", head_dim])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("cogvx", 1)],
                              ir_version=10)
    return attention_op.attach_function(model)


# (name, batch, heads, head dim, text tokens, vision tokens)
SHAPES = [
    ("toy model (CFG 2, 8x16 heads, 32 text + 5x4x4 vision)", 2, 8, 16, 32, 80),
    ("5B width, 9x160x240 (CFG 2, 48x64 heads, 226 + 3x10x15)", 2, 48, 64, 226, 450),
    ("5B width, 9x240x360 (CFG 2, 48x64 heads, 226 + 3x15x22)", 2, 48, 64, 226, 990),
]


def ops(repeats: int, threads: int) -> dict:
    from cogvx.export.standard_attention import to_standard_attention

    rows = []
    for name, batch, heads, head_dim, text, vision in SHAPES:
        plugin_form = attention_graph(text, heads, head_dim)
        standard_form = to_standard_attention(attention_graph(text, heads, head_dim))
        rng = np.random.default_rng(0)
        q, k, v = (rng.standard_normal((batch, heads, text + vision, head_dim)).astype(np.float32) for _ in range(3))
        angles = rng.uniform(-3.1, 3.1, (vision, head_dim // 2))
        feeds = {"q": q, "k": k, "v": v, "cos": np.repeat(np.cos(angles), 2, 1).astype(np.float32),
                 "sin": np.repeat(np.sin(angles), 2, 1).astype(np.float32)}
        sessions = {"plugin": session(plugin_form, threads), "standard": session(standard_form, threads)}
        outputs = {form: s.run(None, feeds)[0] for form, s in sessions.items()}
        ms = alternate({form: (lambda s=s: s.run(None, feeds)) for form, s in sessions.items()}, repeats)
        rows.append({"shape": name, "plugin_ms": ms["plugin"], "standard_ms": ms["standard"],
                     "ratio_plugin_over_standard": round(ms["plugin"] / ms["standard"], 2),
                     "max_difference": relative(outputs["standard"], outputs["plugin"])})
        print(rows[-1], flush=True)
    return {"rows": rows}


def transformer(repeats: int, threads: int, layers: int, frames: int, height: int, width: int) -> dict:
    from cogvx.contract.shapes import ShapeProfile, ShapeSpec
    from cogvx.export.descriptors import TransformerDescriptor
    from cogvx.export.onnx_export import export_component
    from cogvx.modeling.configs import get_preset, model_config
    from cogvx.modeling.transformer import CogVideoXTransformer

    preset = get_preset("cogvideox-5b")
    module = CogVideoXTransformer.from_preset("cogvideox-5b", dtype=torch.float32, num_layers=layers).eval()
    descriptor = TransformerDescriptor(model_config(module.config, preset.vae, preset.scheduler, preset.text_encoder))
    spec = ShapeSpec(batch=1, frames=frames, height=height, width=width, text_len=module.config.max_text_seq_length)
    feeds = descriptor.sample_inputs(spec)  # CFG batch 2
    with torch.no_grad():
        expected = descriptor.wrap(module)(**feeds).numpy()
    vision = int(np.prod(feeds["rope_cos"].shape[:3]))
    result = {"config": f"cogvideox-5b width (48x64 heads), {layers} layers, {frames}x{height}x{width}, CFG batch 2, "
                        f"fp32, random weights", "tokens": module.config.max_text_seq_length + vision}
    sessions, exports = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for form in ("plugin", "standard"):
            out = Path(folder) / form
            started = time.perf_counter()
            (graph,) = export_component(descriptor, module, ShapeProfile.static(spec), torch.float32, out, form)
            exports[form] = round(time.perf_counter() - started, 1)
            sessions[form] = session(out / graph.file_name, threads)
        numpy_feeds = {name: tensor.numpy() for name, tensor in feeds.items()}
        outputs = {form: s.run(None, numpy_feeds)[0] for form, s in sessions.items()}
        ms = alternate({form: (lambda s=s: s.run(None, numpy_feeds)) for form, s in sessions.items()}, repeats)
    result |= {"export_seconds": exports, "plugin_ms": ms["plugin"], "standard_ms": ms["standard"],
               "ratio_plugin_over_standard": round(ms["plugin"] / ms["standard"], 2),
               "error_vs_torch": {form: relative(out, expected) for form, out in outputs.items()}}
    print(result, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["ops", "transformer"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--height", type=int, default=160)
    parser.add_argument("--width", type=int, default=240)
    args = parser.parse_args()
    import onnxruntime

    torch.set_num_threads(args.threads)
    header = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
              "device": f"CPU ({platform.processor() or platform.machine()})", "threads": args.threads,
              "repeats": args.repeats}
    if args.what == "ops":
        body = ops(args.repeats, args.threads)
    else:
        body = transformer(args.repeats, args.threads, args.layers, args.frames, args.height, args.width)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"attention_forms_{args.what}.json"
    path.write_text(json.dumps(header | body, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
