"""Where an ONNX Runtime session spends its time and memory: per op from ORT's own profiler, and
the bytes of activations alive at once in the order ORT ran the nodes.

`profile_graph(path, options)` runs a graph with random inputs of its static shapes and returns a
`GraphProfile`; `live_peak(model, order)` is the peak of node outputs alive at once when the nodes
run in `order` (each freed after its last reader), which is what a session without an arena holds
at its peak. benchmarks/onnxruntime_profile.py prints both for any graph of an engine directory;
docs/onnxruntime-performance.md has what they showed for the real widths.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, shape_inference

_KERNEL = "_kernel_time"


@dataclass
class GraphProfile:
    order: list[str]  # node names, in the order ONNX Runtime ran them (first run)
    op_seconds: dict[str, float]  # op type -> seconds per run (mean over the profiled runs)
    # (op, input shapes, output shapes) -> seconds per run, summed over the nodes that share them
    node_seconds: dict[tuple[str, str, str], float] = field(default_factory=dict)
    node_counts: dict[tuple[str, str, str], int] = field(default_factory=dict)  # nodes in each of those groups
    runs: int = 1


def value_bytes(model: onnx.ModelProto) -> dict[str, int]:
    """Bytes of every value whose shape is fully static (after ONNX shape inference)."""
    graph = shape_inference.infer_shapes(model).graph
    sizes = {}
    for value in [*graph.value_info, *graph.output, *graph.input]:
        tensor = value.type.tensor_type
        dims = tensor.shape.dim
        if tensor.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            itemsize = helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
            sizes[value.name] = int(np.prod([d.dim_value for d in dims])) * itemsize
    return sizes


def live_peak(model: onnx.ModelProto, order: list[str]) -> int:
    """The most bytes of node outputs alive at once when the nodes run in `order` (graph outputs are
    kept to the end; a value with a dynamic shape counts 0)."""
    sizes = value_bytes(model)
    nodes = {node.name: node for node in model.graph.node}
    kept = {output.name for output in model.graph.output}
    last_reader = {name: step for step, node in enumerate(order) for name in nodes[node].input}
    live: dict[str, int] = {}
    peak = 0
    for step, node in enumerate(order):
        live.update({name: sizes.get(name, 0) for name in nodes[node].output})
        peak = max(peak, sum(live.values()))
        for name in (set(nodes[node].input) & set(live)) - kept:
            if last_reader[name] == step:
                del live[name]
    return peak


def random_feeds(session, dims: dict[str, int] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal float inputs (zeros for integer ones) of each input's shape; a named (dynamic)
    axis takes its size from `dims`."""
    rng = np.random.default_rng(seed)
    dims = dims or {}
    feeds = {}
    for value in session.get_inputs():
        missing = [d for d in value.shape if not isinstance(d, int) and d not in dims]
        if missing:
            raise ValueError(f"input {value.name} has dynamic axes {missing}: give their sizes "
                             f"({', '.join(f'--dim {d}=N' for d in map(str, missing))})")
        shape = [d if isinstance(d, int) else dims[d] for d in value.shape]
        dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16}.get(value.type)
        feeds[value.name] = (rng.standard_normal(shape).astype(dtype) if dtype else np.zeros(shape, dtype=np.int64))
    return feeds


def profile_graph(path: str | Path, options, runs: int = 1, dims: dict[str, int] | None = None,
                  providers: list[str] | None = None) -> GraphProfile:
    """Run the graph `runs` times after one warm-up under ORT's profiler (the warm-up gives the
    executed order, the others the times)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="cogvx-profile-") as folder:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "profile")
        session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        feeds = random_feeds(session, dims)
        for _ in range(runs + 1):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith(_KERNEL)]
    per_run = len(nodes) // (runs + 1)
    order = [e["name"][: -len(_KERNEL)] for e in nodes[:per_run]]
    op_seconds: Counter = Counter()
    node_seconds: defaultdict = defaultdict(float)
    node_counts: Counter = Counter()
    for e in nodes[per_run:]:  # the warm-up run is not timed
        shapes = [json.dumps([next(iter(t.values())) for t in e["args"].get(key, [])])
                  for key in ("input_type_shape", "output_type_shape")]
        op_seconds[e["args"]["op_name"]] += e["dur"] / 1e6 / runs
        node_seconds[(e["args"]["op_name"], *shapes)] += e["dur"] / 1e6 / runs
        node_counts[(e["args"]["op_name"], *shapes)] += 1
    counts = {key: count // runs for key, count in node_counts.items()}
    return GraphProfile(order, dict(op_seconds.most_common()), dict(node_seconds), counts, runs)


def flops(op: str, inputs: list[list[int]], outputs: list[list[int]]) -> float:
    """Multiply-add FLOPs (2 per MAC) of a Conv or MatMul-like node from its shapes; 0 for other ops."""
    if not outputs:
        return 0.0
    out = float(np.prod(outputs[0]))
    if op in ("Conv", "FusedConv", "NchwcConv") and len(inputs) > 1:
        return 2 * out * float(np.prod(inputs[1][1:]))  # weight (Cout, Cin / groups, k...)
    if op in ("MatMul", "FusedMatMul", "Gemm") and inputs and inputs[0]:
        return 2 * out * inputs[0][-1]
    return 0.0
