"""The ONNX Runtime backend: a `Runner` per graph of an engine directory.

CUDA execution provider when onnxruntime-gpu sees a GPU, else CPU. Inputs and outputs go through
ONNX Runtime's io_binding: an input is bound to the torch tensor's own memory (CPU or CUDA) and an
output is handed back to torch through DLPack, so nothing is copied between host and device or
through numpy. Everything stage-level (graph choice, table reshape, cache renames, profile) is
runtime/graph_stage.py's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cogvx.contract.components import Component
from cogvx.contract.manifest import EngineDirectoryError, Manifest
from cogvx.modeling.precision import Precision

from .graph_stage import open_graph_stages
from .stages import Stage

logger = logging.getLogger(__name__)

# ONNX type -> (torch dtype, numpy element type for io_binding)
_TYPES = {"tensor(float)": (torch.float32, np.float32), "tensor(float16)": (torch.float16, np.float16),
          "tensor(int64)": (torch.int64, np.int64), "tensor(int32)": (torch.int32, np.int32),
          "tensor(double)": (torch.float64, np.float64)}


def cpu_has_vnni() -> bool:
    """AVX-512 VNNI or AVX-VNNI: int8 dot products that do not saturate."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def fuses_qdq_correctly(precision: Precision) -> bool:
    """Whether ONNX Runtime CPU may fuse this precision's Q/DQ pairs into its integer kernels.

    fp8: its fusion pass turns DequantizeLinear(float8) + MatMul into MatMulIntegerToFloat, which
    rejects float8 (invalid graph). int8 on a CPU without VNNI: the fused u8s8 MatMul accumulates
    pairs in int16 and saturates (0.29 error against 0.02 unfused, measured on an AVX2 machine).
    Unfused, Q/DQ runs as written: exact, slower."""
    if precision == Precision.FP8:
        return False
    return precision != Precision.INT8 or cpu_has_vnni()


@dataclass(frozen=True)
class SessionSettings:
    """The ONNX Runtime session settings of one stage, chosen by measurement (docs/onnxruntime-performance.md).

    `program_order`: run the nodes in the graph's own order (the order torch ran them) instead of
    ONNX Runtime's default reverse-DFS order, which hoists every node that depends only on a graph
    input to the start. In the VAE decoder that is each SpatialNorm's 1x1x1 convolutions of the
    upsampled latents: 17 full-resolution tensors alive at once, 3.3 GiB of activations at
    9x128x192 where the graph's own order needs 1.0 GiB (process peak 3540 -> 1136 MiB). ORT's
    priority order (the ready node of lowest index first) is program order as long as no optimizer
    adds nodes, so `program_order` also keeps graph optimization at the basic level, which adds
    none (the extended level's fusions get indices after every original node, run late, and bring
    the hoisting back: 3545 MiB).
    `arena`: each session's CPU arena keeps its high-water mark; streaming stages run several
    graphs in a row, so there it is off. `threads`: intra-op threads (0: ONNX Runtime's choice,
    one per physical core)."""

    program_order: bool = False
    arena: bool = True
    threads: int = 0


STREAMING = SessionSettings(program_order=True, arena=False)  # stages with conv caches as I/O (the VAE decoder)


def settings_for(component: Component) -> SessionSettings:
    """Streaming stages (conv caches as graph I/O) get STREAMING, every other stage the defaults."""
    return STREAMING if component.cache is not None else SessionSettings()


def session_options(settings: SessionSettings, precision: Precision = Precision.FP32):
    """`onnxruntime.SessionOptions` for a stage's settings and its graph's precision."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = settings.threads
    if not fuses_qdq_correctly(precision):
        # run Q/DQ as written (DequantizeLinear, float MatMul) instead of ORT's fused integer kernels
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    if not settings.arena:
        options.enable_cpu_mem_arena = options.enable_mem_pattern = False
    if settings.program_order:
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return options


def default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available and torch.cuda.is_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxRuntimeRunner:
    """One graph in an `onnxruntime.InferenceSession`: torch in, torch out, no copies."""

    def __init__(self, path: Path, providers: list[str], settings: SessionSettings = SessionSettings(),
                 precision: Precision = Precision.FP32):
        import onnxruntime as ort

        options = session_options(settings, precision)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types
            raise EngineDirectoryError(f"ONNX Runtime cannot load {path} ({str(error).splitlines()[0]}); "
                                       "export it again") from None
        self.input_dtypes: dict[str, torch.dtype] = {}
        for graph_input in self.session.get_inputs():
            if graph_input.type not in _TYPES:
                raise EngineDirectoryError(
                    f"{path.name} input {graph_input.name} is {graph_input.type}, which the ONNX Runtime backend "
                    "cannot bind (bf16 graphs are for TensorRT); export fp32 or fp16")
            self.input_dtypes[graph_input.name] = _TYPES[graph_input.type][0]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.on_cuda = self.session.get_providers()[0] == "CUDAExecutionProvider"

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        binding = self.session.io_binding()
        numpy_types = {torch_type: numpy_type for torch_type, numpy_type in _TYPES.values()}
        for name, tensor in feeds.items():
            if tensor.is_cuda and not self.on_cuda:
                tensor = tensor.cpu()  # a CPU session fed from CUDA: the one copy that cannot be avoided
            feeds[name] = tensor = tensor.contiguous()  # kept alive until the run ends
            binding.bind_input(name, tensor.device.type, tensor.device.index or 0, numpy_types[tensor.dtype],
                               tuple(tensor.shape), tensor.data_ptr())
        device = "cuda" if self.on_cuda else "cpu"
        for name in self.output_names:
            binding.bind_output(name, device)
        self.session.run_with_iobinding(binding)
        return {name: torch.from_dlpack(value._ortvalue)
                for name, value in zip(self.output_names, binding.get_outputs())}


def onnxruntime_stages(directory: str | Path, providers: list[str] | None = None,
                       verify: bool = True) -> tuple[dict[str, Stage], Manifest]:
    """Every stage of an engine directory on ONNX Runtime (files checked against the manifest)."""
    providers = providers or default_providers()
    logger.info("ONNX Runtime providers: %s", providers)

    def make_runner(path: Path, component: Component, precision: Precision) -> OnnxRuntimeRunner:
        return OnnxRuntimeRunner(path, providers, settings_for(component), precision)

    return open_graph_stages(directory, make_runner, verify)
