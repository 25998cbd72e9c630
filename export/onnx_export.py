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


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Check, then write atomically; external data (one file) past 2 GB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    large = model.ByteSize() > TWO_GB if not _has_external(model) else True
    if not large:
        onnx.checker.check_model(model, full_check=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    data_name = f"{path.name}.data"
    temporary_data = Path(temporary).with_name(Path(temporary).name + ".data")
    try:
        if large:
            onnx.save_model(model, temporary, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=temporary_data.name, size_threshold=1024)
            onnx.checker.check_model(temporary, full_check=True)
            # the .onnx names its data file: rewrite the reference to the final name before renaming
            final = onnx.load(temporary, load_external_data=False)
            for tensor in _external_tensors(final):
                for entry in tensor.external_data:
                    if entry.key == "location":
                        entry.value = data_name
            onnx.save_model(final, temporary)
            os.replace(temporary_data, path.parent / data_name)
        else:
            onnx.save_model(model, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        temporary_data.unlink(missing_ok=True)
        raise


def _external_tensors(model: onnx.ModelProto):
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            yield tensor


def _has_external(model: onnx.ModelProto) -> bool:
    return any(True for _ in _external_tensors(model))
