"""The TensorRT plugin behind `cogvx::RoPEAttention3D`: its declaration, the checks on graph nodes,
and its registration with `tensorrt.plugin` (an ahead-of-time Triton kernel and a JIT fallback).

TensorRT's ONNX parser maps a node to a plugin by op type (`RoPEAttention3D`), `plugin_namespace`
(`cogvx`) and `plugin_version` (`1`); every other attribute becomes a plugin attribute, passed to
the registered functions by name (`num_text_tokens`). Two consequences this module guards:

- **Attributes must match the registration exactly.** A node attribute the plugin does not
  declare, or a declared one missing or of another type, fails inside the parser with little
  context; `plugin_attribute_problems` names the node and the attribute first.
- **An ahead-of-time plugin's attributes are not serialized into the plan.** The AOT path bakes
  `num_text_tokens` into the kernel launch (a constant int32 argument) and the plan keeps only the
  kernel; nothing in the plan says which value it was built for. The build therefore records each
  node's attributes in the manifest (`BuildRecord.plugins`), and the runtime checks them against the
  stage's profile before it trusts the plan (`check_baked_attributes`).

The AOT kernel is engines/triton_attention.py's, compiled with `triton.compile` for the build GPU.
TensorRT launches an AOT kernel with (inputs, int32 extra arguments, outputs); Triton 3.3+ appends
two pointer parameters (global and profile scratch) that TensorRT does not pass, so the PTX is
handed over with those two parameters removed, which is sound only while the kernel uses no
scratch memory (`tensorrt_ptx` checks both). The JIT fallback (`@trtp.impl`) runs the same kernel
from Python on TensorRT's stream, for plans built with `--plugin jit`.

tensorrt is imported inside functions only: this module imports without it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import onnx
from onnx import helper

from cogvx.errors import CogvxError
from cogvx.export.attention_op import DERIVED_TEXT

logger = logging.getLogger(__name__)

RESERVED_ATTRIBUTES = ("plugin_namespace", "plugin_version", "aot")  # read by the parser, not passed on


class PluginError(CogvxError):
    """A plugin node that does not match the registered plugin; the message names node and attribute."""


@dataclass(frozen=True)
class PluginSpec:
    """What a registered plugin declares: its id and its attributes (name -> ONNX attribute type)."""

    namespace: str
    name: str
    version: str
    attributes: dict[str, int] = field(default_factory=dict)

    @property
    def plugin_id(self) -> str:
        return f"{self.namespace}::{self.name}"


ROPE_ATTENTION = PluginSpec("cogvx", "RoPEAttention3D", "1", {"num_text_tokens": onnx.AttributeProto.INT})


def plugin_nodes(model: onnx.ModelProto, spec: PluginSpec = ROPE_ATTENTION) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if node.domain == spec.namespace and node.op_type == spec.name]


def plugin_attribute_problems(node: onnx.NodeProto, spec: PluginSpec = ROPE_ATTENTION) -> list[str]:
    """How the node's attributes differ from what the registered plugin declares (empty: they match)."""
    where = node.name or node.op_type
    found = {a.name: a for a in node.attribute}
    problems = []
    for name, value in (("plugin_namespace", spec.namespace), ("plugin_version", spec.version)):
        if name not in found:
            problems.append(f"{where} has no {name} (TensorRT finds the plugin by it)")
        elif helper.get_attribute_value(found[name]).decode() != value:
            problems.append(f"{where} asks for {name} {helper.get_attribute_value(found[name]).decode()!r}, "
                            f"the registered plugin is {value!r}")
    for name, kind in spec.attributes.items():
        if name not in found:
            problems.append(f"{where} lacks attribute {name}, which plugin {spec.plugin_id} declares")
        elif found[name].type != kind:
            problems.append(f"{where} attribute {name} is {onnx.AttributeProto.AttributeType.Name(found[name].type)}, "
                            f"plugin {spec.plugin_id} declares {onnx.AttributeProto.AttributeType.Name(kind)}")
    extra = sorted(set(found) - set(spec.attributes) - set(RESERVED_ATTRIBUTES))
    if extra:
        problems.append(f"{where} has attributes {extra} that plugin {spec.plugin_id} does not declare")
    if "num_text_tokens" in found and found["num_text_tokens"].type == onnx.AttributeProto.INT \
            and found["num_text_tokens"].i < DERIVED_TEXT:
        problems.append(f"{where} num_text_tokens is {found['num_text_tokens'].i}, below {DERIVED_TEXT} "
                        "(-1: derived from the shapes)")
    return problems


def baked_attributes(model: onnx.ModelProto, spec: PluginSpec = ROPE_ATTENTION) -> dict[str, dict]:
    """Node name -> the declared attributes' values, after checking every node against `spec`: what a
    build records because the plan will not (raises PluginError on a mismatch)."""
    problems = [problem for node in plugin_nodes(model, spec) for problem in plugin_attribute_problems(node, spec)]
    if problems:
        raise PluginError("the graph's plugin nodes do not match the registered plugin: " + "; ".join(problems)
                          + "; export again with this cogvx")
    return {node.name: {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in spec.attributes}
            for node in plugin_nodes(model, spec)}


def check_baked_attributes(plugins: dict[str, dict], text_len: tuple[int, int]) -> None:
    """The attributes a plan was built with fit the stage: every attention's text prefix is the
    profile's text length, which must then be one number (the plan cannot take another), or is
    derived from the shapes at run time (DERIVED_TEXT, exported for a dynamic text length)."""
    low, high = text_len
    for node, attributes in plugins.items():
        value = attributes.get("num_text_tokens")
        if value is None:
            raise PluginError(f"the build record has no num_text_tokens for plugin node {node}; run `cogvx build` again")
        if value != DERIVED_TEXT and not low == value == high:
            raise PluginError(f"plugin node {node} was built for {value} text tokens, the stage takes {low} to {high}: "
                              "an ahead-of-time plugin cannot change it; export with a fixed --text-len and build again")


# -- the PTX TensorRT gets -----------------------------------------------------------------------

_ENTRY = re.compile(r"\.entry\s+(?P<name>[\w$]+)\s*\((?P<params>.*?)\)", re.S)


def ptx_parameters(ptx: str) -> list[str]:
    """The names of the kernel entry's parameters, in order."""
    match = _ENTRY.search(ptx)
    if match is None:
        raise PluginError("the compiled kernel has no .entry in its PTX")
    return [declaration.split()[-1] for declaration in match.group("params").split(",") if declaration.strip()]


def tensorrt_ptx(ptx: str, arguments: int, scratch_bytes: int = 0) -> str:
    """The PTX with exactly `arguments` parameters, as TensorRT's AOT launch passes them.

    Triton 3.3+ appends global / profile scratch pointers after the kernel's own arguments. They
    can be dropped when the kernel needs no scratch (`scratch_bytes` 0) and its body never reads
    them; otherwise this raises, and the JIT plugin (`--plugin jit`) is the way."""
    params = ptx_parameters(ptx)
    if len(params) < arguments:
        raise PluginError(f"the kernel takes {len(params)} parameters, the plugin passes {arguments}")
    extra = params[arguments:]
    if not extra:
        return ptx
    match = _ENTRY.search(ptx)
    assert match is not None  # ptx_parameters found it
    body = ptx[match.end():]
    used = [name for name in extra if re.search(rf"\[{re.escape(name)}\]", body)]
    if scratch_bytes or used:
        raise PluginError(f"the kernel uses Triton scratch memory ({scratch_bytes} bytes, parameters {used}), which "
                          "TensorRT's ahead-of-time plugin cannot pass; build with --plugin jit")
    declarations = [d.strip() for d in match.group("params").split(",")]
    kept = ",\n\t".join(declarations[:arguments])
    return ptx[:match.start("params")] + "\n\t" + kept + "\n" + ptx[match.end("params"):]


# -- tactics: the kernel's launch configurations, as TensorRT numbers them ------------------------


def plugin_tactics(count: int) -> list[int]:
    """The tactic ids the plugin advertises for `count` kernel configurations: 1..count (TensorRT
    reserves 0 for a plugin without tactics)."""
    if count < 1:
        raise PluginError(f"the kernel has {count} launch configurations")
    return list(range(1, count + 1))


def kernel_tactic(tactic: int | None, count: int) -> int:
    """The kernel configuration (0-based) for the tactic TensorRT chose; 0 or None (no tactic
    chosen, e.g. a plan built before tactics existed) is the default configuration."""
    if not tactic:
        return 0
    if not 1 <= tactic <= count:
        raise PluginError(f"TensorRT chose tactic {tactic}; the plugin advertises 1 to {count}: rebuild the plan "
                          "with this cogvx")
    return tactic - 1


# -- registration with tensorrt.plugin (needs tensorrt; not importable without it) -----------------

_registered = False


def register_tensorrt_plugin() -> None:
    """Register `cogvx::RoPEAttention3D` with TensorRT's plugin registry (idempotent): its shape
    function, the type combinations it takes, the AOT Triton implementation and the JIT fallback."""
    global _registered
    if _registered:
        return
    import torch

    from .tensorrt_build import require_tensorrt
    from .triton_attention import INT_ARGUMENTS, TACTICS, compile_kernel, launch_config, triton_rope_attention

    require_tensorrt()
    import tensorrt as trt
    import tensorrt.plugin as trtp

    torch_types = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16}
    plugin_id = ROPE_ATTENTION.plugin_id

    @trtp.register(plugin_id)
    def describe(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, cos: trtp.TensorDesc,
                 sin: trtp.TensorDesc, num_text_tokens: int) -> trtp.TensorDesc:
        return q.like()  # (B, N, S, Dh) in q's dtype

    @trtp.autotune(plugin_id)
    def combinations(q, k, v, cos, sin, num_text_tokens: int, outputs) -> list:
        # q, k, v, out share one of three types; the tables are fp32, as exported. Every launch
        # configuration of the kernel is a tactic (1-based: TensorRT keeps 0 for "no tactic"),
        # timed by TensorRT on the build GPU at the profile's opt shape.
        return [trtp.AutoTuneCombination("FP32|FP16|BF16, FP32|FP16|BF16, FP32|FP16|BF16, FP32, FP32, FP32|FP16|BF16",
                                         tactics=plugin_tactics(TACTICS))]

    @trtp.aot_impl(plugin_id)
    def ahead_of_time(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, cos: trtp.TensorDesc,
                      sin: trtp.TensorDesc, num_text_tokens: int, outputs, tactic: int):
        B, N, S, D = (q.shape_expr[i] for i in range(4))
        if not D.is_constant:
            raise PluginError("the attention head dim must be static for the ahead-of-time kernel")
        head_dim, dtype, config_index = D.constant_value, torch_types[q.dtype], kernel_tactic(tactic, TACTICS)
        kernel = compile_kernel(dtype, head_dim, has_rope=True, tactic=config_index)  # for the GPU the build runs on
        config = launch_config(head_dim, dtype, interpreted=False, tactic=config_index)
        launch = trtp.KernelLaunchParams()
        launch.grid_x = trtp.cdiv(S, config["BLOCK_M"])
        launch.grid_y = B * N
        launch.block_x = kernel.metadata.num_warps * 32
        launch.shared_mem = kernel.metadata.shared
        contiguous = [N * S * D, S * D, D, 1]  # (B, N, S, Dh) strides; the same for q, k, v and out
        text = num_text_tokens if num_text_tokens != DERIVED_TEXT else S - cos.shape_expr[0]  # rows before V
        scalars = [*contiguous * 4, D, 1, N, S, text]  # + table strides (V, Dh), heads, tokens, text
        assert len(scalars) == INT_ARGUMENTS
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(value) for value in scalars])
        scratch = getattr(kernel.metadata, "global_scratch_size", 0) + getattr(kernel.metadata, "profile_scratch_size", 0)
        ptx = tensorrt_ptx(kernel.asm["ptx"], 5 + INT_ARGUMENTS + 1, scratch)
        return kernel.metadata.name.encode(), ptx.encode(), launch, extra

    @trtp.impl(plugin_id)
    def just_in_time(q: trtp.Tensor, k: trtp.Tensor, v: trtp.Tensor, cos: trtp.Tensor, sin: trtp.Tensor,
                     num_text_tokens: int, outputs, stream: int, tactic: int) -> None:
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            q_t, k_t, v_t, cos_t, sin_t = (torch.as_tensor(t, device="cuda") for t in (q, k, v, cos, sin))
            out = torch.as_tensor(outputs[0], device="cuda")
            text = int(num_text_tokens) if num_text_tokens != DERIVED_TEXT else q_t.shape[2] - cos_t.shape[0]
            out.copy_(triton_rope_attention(q_t, k_t, v_t, cos_t, sin_t, text, kernel_tactic(tactic, TACTICS)))

    _registered = True
    logger.info("TensorRT plugin %s registered (AOT Triton kernel, JIT fallback)", plugin_id)
