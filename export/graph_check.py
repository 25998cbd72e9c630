"""Graph hygiene checks an exported model must pass before TensorRT sees it.

`tensorrt_onnx_ops.json` is TensorRT's ONNX operator support matrix kept as data (the parser's
`docs/operators.md`, TensorRT 10, opsets 9 to 20). Every op in the main graph and in the local
function bodies must be in it: the function bodies are what TensorRT inlines when the attention
plugin is not loaded. Custom-domain nodes must carry the plugin attributes TensorRT's plugin
lookup reads.

Opset 23 is accepted for the standard attention form (export/standard_attention.py) only: its two
new operators, `Attention` and `RotaryEmbedding`, are listed under `opset_23` with the TensorRT
version that imports each natively, and the report says which TensorRT such a graph needs
(`GraphReport.tensorrt`); every other op is checked by name against the 9..20 table, which the
standard pass makes sound by refusing ops whose meaning changed between opsets 20 and 23.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import onnx

from .graph_passes import graph_nodes

PLUGIN_ATTRIBUTES = ("plugin_namespace", "plugin_version")
OPSET_23 = 23  # the standard attention form's opset (export/standard_attention.py)
_FLOAT_TYPES = {onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.FLOAT16: "FP16", onnx.TensorProto.BFLOAT16: "BF16"}


@cache
def tensorrt_support() -> dict:
    return json.loads(resources.files("cogvx.export").joinpath("tensorrt_onnx_ops.json").read_text())


@dataclass
class GraphReport:
    """What `check_graph` found; `problems` is empty for a TensorRT-ready graph."""

    op_types: set[str] = field(default_factory=set)
    plugin_nodes: int = 0
    problems: list[str] = field(default_factory=list)
    tensorrt: str | None = None  # the oldest TensorRT that imports every op natively, where past 10.0

    def raise_if_any(self, name: str) -> None:
        if self.problems:
            raise ValueError(f"{name} is not TensorRT-ready: " + "; ".join(self.problems))


def check_graph(model: onnx.ModelProto) -> GraphReport:
    """Ops against the support matrix, plugin attributes on custom nodes, explicit I/O dtypes, opset range."""
    support = tensorrt_support()
    operators, (low, high) = support["operators"], support["opsets"]
    report = GraphReport()
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset == OPSET_23:
        operators = operators | support["opset_23"]["operators"]
        newer = {name: entry["tensorrt"] for name, entry in support["opset_23"]["operators"].items()}
    elif opset is None or not low <= opset <= high:
        report.problems.append(f"opset {opset} is outside TensorRT's range {low}..{high}")
    local = {(f.domain, f.name) for f in model.functions}
    bodies = [node for function in model.functions for node in function.node]
    for node in [*graph_nodes(model), *bodies]:
        if node.domain in ("", "ai.onnx"):
            report.op_types.add(node.op_type)
            entry = operators.get(node.op_type)
            if entry is None or not entry["supported"]:
                report.problems.append(f"op {node.op_type} ({node.name}) is not in TensorRT's ONNX support matrix")
            elif opset == OPSET_23 and node.op_type in newer:
                report.tensorrt = max(report.tensorrt or "0", newer[node.op_type], key=version_tuple)
        elif (node.domain, node.op_type) in local:
            report.op_types.add(f"{node.domain}::{node.op_type}")
            report.plugin_nodes += 1
            names = {a.name for a in node.attribute}
            missing = [a for a in PLUGIN_ATTRIBUTES if a not in names]
            if missing:
                report.problems.append(f"custom node {node.name} lacks plugin attributes {missing}")
        else:
            report.problems.append(f"node {node.name} uses {node.domain}::{node.op_type}, neither ONNX nor a local function")
    for value in [*model.graph.input, *model.graph.output]:
        if not value.type.tensor_type.elem_type:
            report.problems.append(f"graph input/output {value.name} has no explicit dtype")
    return report


def version_tuple(version: str) -> tuple[int, ...]:
    """'10.15.1' -> (10, 15, 1), for comparing TensorRT versions."""
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def io_float_types(model: onnx.ModelProto) -> set[str]:
    """The floating-point dtypes of the graph's inputs and outputs, as TensorRT names them."""
    return {_FLOAT_TYPES[v.type.tensor_type.elem_type] for v in [*model.graph.input, *model.graph.output]
            if v.type.tensor_type.elem_type in _FLOAT_TYPES}
