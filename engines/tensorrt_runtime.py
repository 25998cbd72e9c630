"""The TensorRT backend: a `Runner` per plan, so TensorRT is one more runner for `GraphStage`.

`tensorrt_stages(directory)` opens an engine directory built by `cogvx build` through the one
`open_graph_stages` (runtime/graph_stage.py: manifest checked, every graph hashed, graph choice,
table reshape, casts, cache renames) and gives it a `TensorRTRunner` per graph: the plan the
manifest's build record names for that graph's role, its hash checked, its build checked against
this machine (engines/tensorrt_build.py `check_plan`: same export, same TensorRT, same GPU
generation) and its baked plugin attributes against the stage (engines/plugin.py).

A runner deserializes the plan once (`IRuntime.deserialize_cuda_engine`), keeps one execution
context, and per call sets every input's shape and address, allocates every output at the shape
TensorRT infers, and enqueues `execute_async_v3` on torch's current CUDA stream: outputs are torch
tensors on that stream, so the torch code after it is ordered behind the engine without a sync.

tensorrt is imported inside functions only; this file is type-checked against tensorrt-stubs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from cogvx.contract.components import Component
from cogvx.contract.manifest import EngineDirectoryError, Manifest, file_sha256, resolve_inside
from cogvx.contract.shapes import ShapeProfile
from cogvx.runtime.graph_stage import open_graph_stages
from cogvx.runtime.stages import Stage

from . import plugin
from .tensorrt_build import Device, RebuildError, TensorRTError, check_plan, current_device, require_tensorrt

logger = logging.getLogger(__name__)


class TensorRTRunner:
    """One plan in one execution context: torch tensors in, torch tensors out (runtime/stages.py `Runner`)."""

    def __init__(self, plan: bytes, name: str = "plan", device: torch.device | None = None):
        require_tensorrt()
        import tensorrt as trt

        torch_types = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
                       trt.int64: torch.int64, trt.int32: torch.int32, trt.int8: torch.int8, trt.bool: torch.bool,
                       trt.uint8: torch.uint8}
        self.name = name
        self.device = device or torch.device("cuda", torch.cuda.current_device())
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RebuildError(f"TensorRT cannot deserialize {name} (another TensorRT or GPU built it, or the file is "
                               "damaged); run `cogvx build` again")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.input_dtypes: dict[str, torch.dtype] = {n: torch_types[self.engine.get_tensor_dtype(n)] for n in inputs}
        self.output_names: list[str] = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._output_dtypes = {n: torch_types[self.engine.get_tensor_dtype(n)] for n in self.output_names}

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        held = {}  # kept referenced until the work is enqueued
        for name, tensor in feeds.items():
            tensor = held[name] = tensor.to(self.device).contiguous()
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise TensorRTError(f"{self.name}: input {name} of shape {tuple(tensor.shape)} is outside the plan's "
                                    "optimization profile; export and build with a profile that covers it")
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.output_names:
            dims = self.context.get_tensor_shape(name)  # inferred from the input shapes just set
            shape = tuple(dims[i] for i in range(len(dims)))
            outputs[name] = torch.empty(shape, dtype=self._output_dtypes[name], device=self.device)
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise TensorRTError(f"{self.name}: TensorRT failed to enqueue the plan (run with -v for its log)")
        return outputs


def runner_for(manifest: Manifest, directory: Path, graph_path: Path, component: Component,
               device: Device) -> TensorRTRunner:
    """The runner for one exported graph: its plan, checked against the manifest and this machine."""
    stage = manifest.stage_record(component.name)
    build = manifest.builds.get(component.name)
    if build is None:
        raise EngineDirectoryError(f"{directory} has no TensorRT plans for {component.name}; run "
                                   f"`cogvx build --engines {directory} --components {component.name}`")
    check_plan(build, stage, device)
    if build.plugins:
        profile = ShapeProfile.from_dict(stage.profile)
        plugin.check_baked_attributes(build.plugins, (profile.min.text_len, profile.max.text_len))
        plugin.register_tensorrt_plugin()  # the JIT fallback runs from Python; an AOT plan does not need it
    role = next(role for role, file_name in stage.graphs.items() if resolve_inside(directory, file_name) == graph_path)
    plan_name = build.plans.get(role)
    if plan_name is None:
        raise RebuildError(f"the {component.name} build has no plan for its {role} graph; run `cogvx build` again")
    path = resolve_inside(directory, plan_name)
    if not path.is_file() or file_sha256(path) != build.files.get(plan_name):
        raise RebuildError(f"{path} is missing or does not match the manifest; run `cogvx build` again")
    return TensorRTRunner(path.read_bytes(), plan_name)


def tensorrt_stages(directory: str | Path, verify: bool = True) -> tuple[dict[str, Stage], Manifest]:
    """Every stage of a built engine directory on TensorRT (needs tensorrt and a GPU)."""
    directory = Path(directory)
    device = current_device()
    manifest = Manifest.load(directory)
    return open_graph_stages(directory, lambda path, component, precision: runner_for(
        manifest, directory, Path(path).resolve(), component, device), verify)
