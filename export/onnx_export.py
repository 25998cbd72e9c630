"""torch -> ONNX for one component: dynamo export, the attention function attached, checked, atomic.

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

from . import attention_op
from .profiles import ShapeProfile

logger = logging.getLogger(__name__)

OPSET = 20
# protobuf's 2 GiB cap, less room for the graph itself: more weights than this go to external data
EXTERNAL_DATA_BYTES = 2**31 - 2**27


def export_onnx(descriptor, module: torch.nn.Module, profile: ShapeProfile, path: str | Path,
                dtype: torch.dtype = torch.float32) -> Path:
    """Export a component (its module already in `dtype`) as its descriptor says, traced at the profile's opt shape."""
    inputs = descriptor.sample_inputs(profile.opt, dtype)
    kwargs = {name: inputs[name] for name in descriptor.input_names}
    return _export(descriptor.wrap(module), (), kwargs, descriptor.dynamic_shapes(profile), descriptor, Path(path))


def export_decoder_chunk(descriptor, vae: torch.nn.Module, profile: ShapeProfile, path: str | Path,
                         dtype: torch.dtype = torch.float32) -> Path:
    """Export one VAE decoder step (first or next chunk), every conv cache an explicit input / output."""
    inputs = descriptor.sample_inputs(vae, profile.opt, dtype)
    args = tuple(inputs[name] for name in descriptor.input_names)
    dynamic = descriptor.dynamic_shapes(profile, inputs)
    return _export(descriptor.wrap(vae), args, None, dynamic, descriptor, Path(path))


def _export(wrapper, args, kwargs, dynamic, descriptor, path: Path) -> Path:
    program = torch.onnx.export(
        wrapper, args, kwargs=kwargs, dynamo=True, opset_version=OPSET, verbose=False,
        input_names=list(descriptor.input_names), output_names=list(descriptor.output_names),
        dynamic_shapes=dynamic,
        custom_translation_table={torch.ops.cogvx.rope_attention.default: attention_op.translation()},
    )
    save_program(program.model, path)
    return path


def save_program(model, path: Path) -> None:
    """Write an exported `onnx_ir.Model`: checked, the attention function attached, atomically.

    Past EXTERNAL_DATA_BYTES of weights the model cannot become one protobuf (2 GiB cap), so it is
    saved from the IR with its weights in one external data file, and only the small graph proto
    is loaded back to attach the function.
    """
    import onnx_ir

    path.parent.mkdir(parents=True, exist_ok=True)
    weight_bytes = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    if weight_bytes <= EXTERNAL_DATA_BYTES:
        proto = attention_op.attach_function(onnx_ir.serde.serialize_model(model))
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
        proto = attention_op.attach_function(onnx.load(staged, load_external_data=False))
        onnx.save_model(proto, staged)
        onnx.checker.check_model(str(staged), full_check=True)
        for name in (data_name, path.name):
            os.chmod(Path(staging) / name, 0o644)
            os.replace(Path(staging) / name, path.parent / name)
