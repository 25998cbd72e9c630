"""torch -> ONNX for one component: dynamo export, the attention function attached, checked, atomic.

Graphs over 2 GB keep their weights in one external data file next to the .onnx. Both files are
written under temporary names and renamed only when complete, so an interrupted export (or a
full disk) never leaves a file that looks finished.
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
TWO_GB = 2**31


def export_onnx(descriptor, module: torch.nn.Module, profile: ShapeProfile, path: str | Path,
                dtype: torch.dtype = torch.float32) -> Path:
    """Export the transformer (already in `dtype`) as described, at the profile's opt shape."""
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
    save_model(attention_op.attach_function(program.model_proto), path)
    return path


def save_model(model: onnx.ModelProto, path: Path, external_threshold: int | None = None) -> None:
    """Check, then write atomically; weights in one external data file when the model passes
    `external_threshold` bytes (protobuf cannot hold more than 2 GB)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() <= (TWO_GB if external_threshold is None else external_threshold):
        onnx.checker.check_model(model, full_check=True)
        atomic_write(path, lambda temporary: onnx.save_model(model, temporary))
        return
    data_name = f"{path.name}.data"
    # Both files are written in a staging folder and moved data first: the .onnx, the file that
    # looks finished, appears last, and it names its data file by the final name.
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as staging:
        staged = Path(staging) / path.name
        onnx.save_model(model, staged, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
        onnx.checker.check_model(str(staged), full_check=True)
        for name in (data_name, path.name):
            os.chmod(Path(staging) / name, 0o644)
            os.replace(Path(staging) / name, path.parent / name)
