"""torch -> ONNX: the one export loop over a descriptor's graphs.

Each graph is traced with the dynamo exporter (opset OPSET), gets the attention function where a
node calls it (or, with `attention="standard"`, has each attention node rewritten in standard
opset-23 ops: export/standard_attention.py), goes through the graph passes
(export/graph_passes.py: no machine-specific metadata, fp32 normalization statistics in 16-bit
graphs), is checked by onnx and against TensorRT's ONNX support matrix (export/graph_check.py),
and is written atomically.

Graphs over 2 GB keep their weights in one external data file next to the .onnx (`X.onnx.data`).
Files are written under temporary names and renamed only when complete, so an interrupted export
(or a full disk) never leaves a file that looks finished.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import onnx
import torch

from cogvx.modeling import attention as _registers_the_op  # noqa: F401  (torch.ops.cogvx.rope_attention)
from cogvx.modeling.checkpoint import atomic_write

from cogvx.contract.shapes import ShapeProfile

from . import attention_op, graph_passes, standard_attention
from .descriptors import Descriptor, Graph
from .graph_check import check_graph

logger = logging.getLogger(__name__)

OPSET = 20
# torch custom op -> its ONNX translation, for rooms above export (calibration's Q/DQ ops) to add to
TRANSLATIONS: dict = {}

# protobuf's 2 GiB cap, less room for the graph itself: more weights than this go to external data
EXTERNAL_DATA_BYTES = 2**31 - 2**27


def export_component(descriptor: Descriptor, module: torch.nn.Module, profile: ShapeProfile, dtype: torch.dtype,
                     out: Path, attention: str = standard_attention.PLUGIN) -> list[Graph]:
    """Every graph the profile needs of one component (its module already in `dtype`), into `out`,
    each checked against TensorRT's ONNX support before it counts as exported. `attention`: "plugin"
    (one cogvx::RoPEAttention3D node per attention) or "standard" (RotaryEmbedding + Attention)."""
    graphs = descriptor.graphs(module, profile, dtype)
    for graph in graphs:
        path = export_graph(graph, Path(out) / graph.file_name, attention)
        check_graph(onnx.load(path, load_external_data=False)).raise_if_any(graph.file_name)
    return graphs


def export_graph(graph: Graph, path: str | Path, attention: str = standard_attention.PLUGIN) -> Path:
    """Trace one graph (dynamo, opset OPSET) and write it atomically."""
    program = torch.onnx.export(
        graph.module, graph.args, kwargs=graph.kwargs or None, dynamo=True, opset_version=OPSET, verbose=False,
        input_names=list(graph.input_names), output_names=list(graph.output_names),
        dynamic_shapes=graph.dynamic_shapes,
        custom_translation_table={torch.ops.cogvx.rope_attention.default: attention_op.translation(),
                                  **TRANSLATIONS},
    )
    save_program(program.model, Path(path), attention)
    return Path(path)


def save_program(model, path: Path, attention: str = standard_attention.PLUGIN) -> None:
    """Write an exported `onnx_ir.Model`: the attention function attached (where a node calls it),
    finalized by `graph_passes` (no machine-specific metadata, fp32 normalization statistics),
    checked, atomically.

    Past EXTERNAL_DATA_BYTES of weights the model cannot become one protobuf (2 GiB cap), so it is
    saved from the IR with its weights in one external data file, and only the small graph proto
    is loaded back to attach the function and finalize.
    """
    import onnx_ir

    path.parent.mkdir(parents=True, exist_ok=True)
    weight_bytes = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    if weight_bytes <= EXTERNAL_DATA_BYTES:
        proto = _finalized(onnx_ir.serde.serialize_model(model), attention)
        onnx.checker.check_model(proto, full_check=True)
        atomic_write(path, lambda temporary: onnx.save_model(proto, temporary))
        return
    data_name = f"{path.name}.data"
    logger.info("%s: %.2f GB of weights go to external data %s", path.name, weight_bytes / 1e9, data_name)
    # Both files are written in a staging folder and moved data first: the .onnx, the file that
    # looks finished, appears last, and it names its data file by the final name.
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as staging:
        staged = Path(staging) / path.name
        onnx_ir.save(model, staged, external_data=data_name)
        proto = _finalized(onnx.load(staged, load_external_data=False), attention)
        onnx.save_model(proto, staged)
        onnx.checker.check_model(str(staged), full_check=True)
        for name in (data_name, path.name):
            os.chmod(Path(staging) / name, 0o644)
            os.replace(Path(staging) / name, path.parent / name)


def _finalized(proto: onnx.ModelProto, attention: str = standard_attention.PLUGIN) -> onnx.ModelProto:
    """What every saved graph goes through between the exporter and the file."""
    if attention not in standard_attention.FORMS:
        raise ValueError(f"attention form {attention!r}: choose from {', '.join(standard_attention.FORMS)}")
    if attention == standard_attention.STANDARD:
        return graph_passes.finalize(standard_attention.to_standard_attention(proto))
    return graph_passes.finalize(attention_op.attach_function(proto))
