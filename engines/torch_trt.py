"""torch-tensorrt for the denoiser with its attention kept fused: `compile_transformer`.

`torch_tensorrt.dynamo.compile` turns a torch.export program into TensorRT engines through its
converter registry; an op without a converter stays in torch, and every attention would then be a
graph break (TensorRT -> torch -> TensorRT, twice per layer). `cogvx::rope_attention` gets in two
ways, the same two `cogvx export --attention` offers for ONNX:

- "plugin" (default): `register_converter()` adds a converter that turns every
  `cogvx::rope_attention` node into the `cogvx::RoPEAttention3D` TensorRT plugin (engines/plugin.py:
  the Triton kernel with the RoPE fused in, compiled ahead of time into the engine). A node the
  plugin cannot take (`plugin_refusal` says why: no RoPE tables, a head dim or dtype the kernel
  lacks) stays in torch, logged.
- "standard": `decompose_attention(program)` rewrites every node as the reference does it, RoPE
  on the vision rows in fp32 (elementwise aten ops) then `aten.scaled_dot_product_attention`, which
  torch-tensorrt converts to TensorRT's fused attention layer (IAttention, TensorRT 10.14+). No
  custom code in the engine.

The transformer is traced through the ONNX export's wrapper (export/descriptors.py), so the inputs,
their 4-D position tables and the dynamic dims are the engine directory's; the 2B gets identity
RoPE tables there and takes the plugin like every other family. The text length a node rotates
after is an int when the profile fixes it and a symbol when it does not; the plugin then gets
DERIVED_TEXT (-1: the rows before the tables' rows), as in the ONNX node.

torch_tensorrt and tensorrt are imported inside functions only; everything that decides (refusals,
attributes, decomposition, input ranges) is plain code, tested on CPU (tests/engines/test_torch_trt.py).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from cogvx.contract.shapes import ShapeProfile
from cogvx.export.attention_op import DERIVED_TEXT
from cogvx.modeling.attention import reference_rope_attention
from cogvx.modeling.configs import ModelConfig

from .tensorrt_build import CORNERS, TensorRTError, TensorRTMissing, corner_batch

logger = logging.getLogger(__name__)

FORMS = ("plugin", "standard")
TARGET = torch.ops.cogvx.rope_attention.default
INSTALL_HINT = ("torch-tensorrt is not installed: `pip install torch-tensorrt` (the release built for this torch, "
                "with TensorRT 10.7+) on a Linux machine with an NVIDIA GPU, then run this again")
SDPA_OPS = ("aten.scaled_dot_product_attention", "aten._scaled_dot_product_flash_attention",
            "aten._scaled_dot_product_efficient_attention", "aten._scaled_dot_product_cudnn_attention",
            "aten._scaled_dot_product_flash_attention_for_cpu")


@dataclass(frozen=True)
class PluginCall:
    """What the converter gives the plugin for one attention node."""

    node: str
    head_dim: int
    dtype: torch.dtype
    num_text_tokens: int  # DERIVED_TEXT when the text length is a symbol


def text_attribute(value: Any) -> int:
    """The plugin's num_text_tokens for the node's text length: the int, or DERIVED_TEXT for a symbol
    (an fx.Node or SymInt when tracing, a shape tensor inside torch-tensorrt's converter)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise TensorRTError(f"attention text length {value} is negative")
        return value
    return DERIVED_TEXT


def _value(argument: Any) -> Any:
    """The traced value behind a node argument (a FakeTensor, a SymInt), or the argument itself."""
    return argument.meta.get("val") if isinstance(argument, fx.Node) else argument


def plugin_refusal(node: fx.Node) -> str | None:
    """Why the plugin cannot take this `cogvx::rope_attention` node (None: it can)."""
    from .triton_attention import DTYPES, MAX_HEAD_DIM

    if node.target is not TARGET:
        return f"{node.name} is {node.target}, not {TARGET}"
    q, _, _, cos, sin, _ = node.args
    q_value, cos_value = _value(q), _value(cos)
    if cos is None or sin is None:
        return f"{node.name} has no RoPE tables (the plugin rotates; the standard form takes it)"
    if q_value is None or cos_value is None:
        return f"{node.name} has no traced shapes (trace it with torch.export)"
    head_dim = q_value.shape[-1]
    if not isinstance(head_dim, int):
        return f"{node.name} has a symbolic head dim; the plugin's kernel is compiled for one"
    if head_dim > MAX_HEAD_DIM or head_dim % 2:
        return f"{node.name} head dim {head_dim}: the kernel takes even head dims up to {MAX_HEAD_DIM}"
    if q_value.dtype not in DTYPES:
        return f"{node.name} is {q_value.dtype}; the kernel takes {', '.join(map(str, DTYPES))}"
    if cos_value.dtype != torch.float32:
        return f"{node.name} RoPE tables are {cos_value.dtype}; the plugin takes fp32 tables, as exported"
    return None


def plugin_call(node: fx.Node) -> PluginCall:
    """The plugin's view of a node it can take (TensorRTError naming why otherwise)."""
    refusal = plugin_refusal(node)
    if refusal is not None:
        raise TensorRTError(refusal)
    q = _value(node.args[0])
    return PluginCall(node.name, int(q.shape[-1]), q.dtype, text_attribute(node.args[5]))


def attention_nodes(program: torch.export.ExportedProgram) -> list[fx.Node]:
    return [node for node in program.graph.nodes if node.op == "call_function" and node.target is TARGET]


def decompose_attention(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Every `cogvx::rope_attention` as the reference computes it: RoPE on the vision rows of q and
    k (fp32, back in q's dtype), then aten SDPA, which torch-tensorrt converts to IAttention."""
    return program.run_decompositions({TARGET: reference_rope_attention})


def input_ranges(model: ModelConfig, profile: ShapeProfile, dtype: torch.dtype = torch.float32
                 ) -> dict[str, tuple[tuple[tuple[int, ...], ...], torch.dtype]]:
    """Input name -> ((min, opt, max) shapes, dtype) of the traced transformer for the profile: the
    shapes the denoiser stage feeds at each corner (batch B without guidance at min, 2B at opt and
    max), the same as `cogvx build`'s optimization profile of the exported graph."""
    from cogvx.export.descriptors import TransformerDescriptor

    descriptor = TransformerDescriptor(model)
    corners = [descriptor.sample_inputs(getattr(profile, corner), dtype,
                                        batch=corner_batch("transformer", profile, corner)) for corner in CORNERS]
    return {name: (tuple(tuple(inputs[name].shape) for inputs in corners), corners[0][name].dtype)
            for name in descriptor.input_names}


def trace_transformer(transformer: nn.Module, model: ModelConfig, profile: ShapeProfile,
                      dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
                      ) -> torch.export.ExportedProgram:
    """torch.export of the transformer through the ONNX export's wrapper, dynamic over the profile."""
    from cogvx.export.descriptors import TransformerDescriptor

    descriptor = TransformerDescriptor(model)
    inputs = descriptor.sample_inputs(profile.opt, dtype)
    kwargs = {name: inputs[name].to(device) for name in descriptor.input_names}
    wrapper = descriptor.wrap(transformer.to(device=device, dtype=dtype))
    with torch.no_grad():
        return torch.export.export(wrapper, (), kwargs=kwargs, dynamic_shapes=descriptor.dynamic_shapes(profile))


def require_torch_tensorrt() -> Any:
    """The torch_tensorrt module, or TensorRTMissing saying what to install."""
    try:
        import torch_tensorrt
    except ImportError:
        raise TensorRTMissing(INSTALL_HINT) from None
    return torch_tensorrt


_registered = False


def register_converter(aot: bool = True) -> None:
    """Register the `cogvx::rope_attention` -> `cogvx::RoPEAttention3D` converter with
    torch-tensorrt (idempotent; needs torch_tensorrt and tensorrt)."""
    global _registered
    if _registered:
        return
    require_torch_tensorrt()
    import tensorrt.plugin as trtp
    from torch_tensorrt.dynamo.conversion import dynamo_tensorrt_converter
    from torch_tensorrt.dynamo.conversion.converter_utils import get_trt_tensor

    from . import plugin

    plugin.register_tensorrt_plugin()

    def takes(node: fx.Node, settings: Any = None) -> bool:
        refusal = plugin_refusal(node)
        if refusal is not None:
            logger.warning("torch-tensorrt: %s; it runs in torch", refusal)
        return refusal is None

    @dynamo_tensorrt_converter(TARGET, capability_validator=takes, supports_dynamic_shapes=True)
    def rope_attention(ctx: Any, target: Any, args: tuple, kwargs: dict, name: str) -> Any:
        tensors = [get_trt_tensor(ctx, value, f"{name}_{label}")
                   for label, value in zip(("q", "k", "v", "cos", "sin"), args[:5])]
        op = getattr(trtp.op, plugin.ROPE_ATTENTION.namespace)
        call = getattr(op, plugin.ROPE_ATTENTION.name)(*tensors, num_text_tokens=text_attribute(args[5]))
        layer = ctx.net.add_plugin(call, aot=aot)
        if layer is None:
            raise TensorRTError(f"TensorRT could not add plugin {plugin.ROPE_ATTENTION.plugin_id} for {name}")
        layer.name = f"[{target}]-[{name}]"
        return layer.get_output(0)

    _registered = True


def compile_transformer(transformer: nn.Module, model: ModelConfig, profile: ShapeProfile, form: str = "plugin",
                        dtype: torch.dtype = torch.float16, opt_level: int = 3, timing_cache: str | None = None,
                        aot: bool = True) -> nn.Module:
    """The transformer compiled by torch-tensorrt over the profile, attention fused by `form`.

    The transformer is moved to the GPU in `dtype` (in place, as `nn.Module.to` does). The result
    takes the export wrapper's keyword inputs (latents, text_embeddings, timestep, [ofs], 4-D
    position tables) as CUDA tensors and returns the velocity."""
    if form not in FORMS:
        raise TensorRTError(f"attention form {form!r}: choose {' or '.join(FORMS)}")
    torch_tensorrt = require_torch_tensorrt()
    if not torch.cuda.is_available():
        raise TensorRTError("torch sees no CUDA GPU here; torch-tensorrt compiles for an NVIDIA GPU")
    program = trace_transformer(transformer, model, profile, dtype, "cuda")
    if form == "standard":
        program = decompose_attention(program)
    else:
        register_converter(aot)
        nodes = attention_nodes(program)
        logger.info("torch-tensorrt: %d of %d attentions to the plugin", sum(plugin_refusal(n) is None for n in nodes),
                    len(nodes))
    inputs = {name: torch_tensorrt.Input(min_shape=low, opt_shape=mid, max_shape=high, dtype=input_dtype, name=name)
              for name, ((low, mid, high), input_dtype) in input_ranges(model, profile, dtype).items()}
    options: dict[str, Any] = {"kwarg_inputs": inputs, "min_block_size": 1, "optimization_level": opt_level}
    if timing_cache:
        options["timing_cache_path"] = timing_cache
    if "use_explicit_typing" in inspect.signature(torch_tensorrt.dynamo.compile).parameters:
        options["use_explicit_typing"] = True  # releases before 2.14: types from the graph, as in `cogvx build`
    return torch_tensorrt.dynamo.compile(program, **options)
