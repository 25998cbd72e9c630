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

Two things every runner of a directory shares or may do:

- **One device-memory pool** (`DeviceMemoryPool`). Every context is created without its own
  activation memory (`ExecutionContextAllocationStrategy.USER_MANAGED`) and is pointed at one torch
  CUDA block before each enqueue, sized to the largest `device_memory_size_v2` of the directory's
  plans: the stages run one after another on one stream, so the need is the largest plan's, not the
  sum (the 5B transformer's and the decoder's scratch never coexist).
- **CUDA graphs for static profiles** (`CapturedCalls`). A stage exported for one shape is captured
  once per input signature (the denoiser sees two: B rows without guidance, 2B with) after a warm-up
  enqueue, and replayed: inputs copied into the graph's buffers, outputs copied out, so a caller may
  keep them. A pool that grows invalidates every capture (the graphs hold its address); the pool is
  sized for every plan before the first call so that does not happen in a run. Dynamic profiles
  enqueue directly, outputs allocated at the shapes TensorRT infers.

tensorrt is imported inside functions only; this file is type-checked against tensorrt-stubs. The
pool and capture bookkeeping are plain classes, tested on CPU (tests/engines/test_tensorrt_runtime.py).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cogvx.contract.components import Component
from cogvx.contract.manifest import EngineDirectoryError, Manifest, file_sha256, resolve_inside
from cogvx.contract.shapes import ShapeProfile
from cogvx.runtime.graph_stage import open_graph_stages
from cogvx.runtime.stages import Stage

from . import plugin
from .tensorrt_build import Device, RebuildError, TensorRTError, check_plan, current_device, require_tensorrt

logger = logging.getLogger(__name__)


ALIGNMENT = 256  # bytes; TensorRT asks device memory aligned to the CUDA allocation granularity it reports


class DeviceMemoryPool:
    """One block of device memory for every execution context of a directory, in turn.

    `reserve(size)` returns (address, size) of at least `size` bytes at an ALIGNMENT-aligned address,
    growing the block (never shrinking) when a plan needs more; `generation` counts the blocks, so a
    captured graph can tell the address it holds is gone. Growing frees the old block through torch's
    stream-ordered allocator: work already enqueued on the stream finishes with it first."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.generation = 0
        self._block: torch.Tensor | None = None
        self._span = (0, 0)  # the aligned (address, size) inside the block

    @property
    def size(self) -> int:
        return self._span[1]

    def reserve(self, size: int) -> tuple[int, int]:
        if size < 0:
            raise ValueError(f"device memory of {size} bytes")
        if self._block is None or self._span[1] < size:
            rounded = max(ALIGNMENT, -(-size // ALIGNMENT) * ALIGNMENT)
            self._block = None  # the old block goes back before the new one is taken
            self._block = torch.empty(rounded + ALIGNMENT, dtype=torch.uint8, device=self.device)
            start = self._block.data_ptr()
            self._span = (-(-start // ALIGNMENT) * ALIGNMENT, rounded)
            self.generation += 1
        return self._span


Signature = tuple[tuple[str, tuple[int, ...], torch.dtype], ...]


def signature(feeds: dict[str, torch.Tensor]) -> Signature:
    """What a captured graph is valid for: every input's name, shape and dtype."""
    return tuple((name, tuple(tensor.shape), tensor.dtype) for name, tensor in sorted(feeds.items()))


@dataclass
class Capture:
    """One captured enqueue: the graph, the buffers it reads and writes, the pool block it used."""

    graph: Any  # torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    generation: int

    def run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for name, tensor in feeds.items():
            self.inputs[name].copy_(tensor, non_blocking=True)
        self.graph.replay()
        return {name: tensor.clone() for name, tensor in self.outputs.items()}  # the caller may keep them


@dataclass
class CapturedCalls:
    """Captures by input signature, the most recent `limit` kept; a capture made with an older pool
    block than `generation` is dropped on lookup."""

    limit: int = 4
    captures: OrderedDict[Signature, Capture] = field(default_factory=OrderedDict)

    def get(self, key: Signature, generation: int) -> Capture | None:
        capture = self.captures.get(key)
        if capture is None:
            return None
        if capture.generation != generation:
            del self.captures[key]
            return None
        self.captures.move_to_end(key)
        return capture

    def add(self, key: Signature, capture: Capture) -> None:
        self.captures[key] = capture
        self.captures.move_to_end(key)
        while len(self.captures) > self.limit:
            self.captures.popitem(last=False)


class TensorRTRunner:
    """One plan in one execution context: torch tensors in, torch tensors out (runtime/stages.py `Runner`)."""

    def __init__(self, plan: bytes, name: str = "plan", device: torch.device | None = None,
                 pool: DeviceMemoryPool | None = None, cuda_graphs: bool = False):
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
        self.pool = pool or DeviceMemoryPool(self.device)
        self.memory_size = self.engine.device_memory_size_v2  # the largest need over the plan's profile
        self.context = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        self._memory: tuple[int, int] | None = None  # (address, size) the context was last given
        self.captured = CapturedCalls() if cuda_graphs else None
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.input_dtypes: dict[str, torch.dtype] = {n: torch_types[self.engine.get_tensor_dtype(n)] for n in inputs}
        self.output_names: list[str] = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._output_dtypes = {n: torch_types[self.engine.get_tensor_dtype(n)] for n in self.output_names}

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        feeds = {name: tensor.to(self.device).contiguous() for name, tensor in feeds.items()}
        if self.captured is None:
            return self._enqueue(feeds)
        key = signature(feeds)
        capture = self.captured.get(key, self.pool.generation)
        if capture is None:
            capture = self._capture(feeds)
            self.captured.add(key, capture)
        return capture.run(feeds)

    def _set_memory(self) -> None:
        memory = self.pool.reserve(self.memory_size)
        if memory != self._memory:
            self.context.set_device_memory(*memory)
            self._memory = memory

    def _capture(self, feeds: dict[str, torch.Tensor]) -> Capture:
        """Warm up once (TensorRT finishes deferred setup on the first enqueue), then record the
        enqueue into a CUDA graph over buffers that stay: the feeds' copies and the outputs."""
        inputs = {name: tensor.clone() for name, tensor in feeds.items()}
        outputs = self._enqueue(inputs)
        torch.cuda.current_stream(self.device).synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._enqueue(inputs, outputs)
        logger.info("%s: CUDA graph captured for %s", self.name,
                    ", ".join(f"{name} {tuple(t.shape)}" for name, t in inputs.items()))
        return Capture(graph, inputs, outputs, self.pool.generation)

    def _enqueue(self, feeds: dict[str, torch.Tensor],
                 outputs: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Set shapes and addresses and enqueue on torch's current stream; outputs into `outputs`
        when given (a capture's buffers), else allocated at the shapes TensorRT infers."""
        self._set_memory()
        for name, tensor in feeds.items():
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise TensorRTError(f"{self.name}: input {name} of shape {tuple(tensor.shape)} is outside the plan's "
                                    "optimization profile; export and build with a profile that covers it")
            self.context.set_tensor_address(name, tensor.data_ptr())
        if outputs is None:
            outputs = {}
            for name in self.output_names:
                dims = self.context.get_tensor_shape(name)  # inferred from the input shapes just set
                shape = tuple(dims[i] for i in range(len(dims)))
                outputs[name] = torch.empty(shape, dtype=self._output_dtypes[name], device=self.device)
        for name in self.output_names:
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise TensorRTError(f"{self.name}: TensorRT failed to enqueue the plan (run with -v for its log)")
        return outputs


def checked_plan(manifest: Manifest, directory: Path, component: str, role: str, device: Device) -> Path:
    """The plan built for one graph of a stage, checked against the manifest (hash, plugin
    attributes) and this machine (export, TensorRT, GPU); the plugin registered when it has one."""
    stage = manifest.stage_record(component)
    build = manifest.builds.get(component)
    if build is None:
        raise EngineDirectoryError(f"{directory} has no TensorRT plans for {component}; run "
                                   f"`cogvx build --engines {directory} --components {component}`")
    check_plan(build, stage, device)
    if build.plugins:
        profile = ShapeProfile.from_dict(stage.profile)
        plugin.check_baked_attributes(build.plugins, (profile.min.text_len, profile.max.text_len))
        plugin.register_tensorrt_plugin()  # the JIT fallback runs from Python; an AOT plan does not need it
    plan_name = build.plans.get(role)
    if plan_name is None:
        raise RebuildError(f"the {component} build has no plan for its {role} graph; run `cogvx build` again")
    path = resolve_inside(directory, plan_name)
    if not path.is_file() or file_sha256(path) != build.files.get(plan_name):
        raise RebuildError(f"{path} is missing or does not match the manifest; run `cogvx build` again")
    return path


def runner_for(manifest: Manifest, directory: Path, graph_path: Path, component: Component,
               device: Device, pool: DeviceMemoryPool | None = None, cuda_graphs: bool | None = None) -> TensorRTRunner:
    """The runner for one exported graph: its plan, checked against the manifest and this machine."""
    stage = manifest.stage_record(component.name)
    role = next(role for role, file_name in stage.graphs.items() if resolve_inside(directory, file_name) == graph_path)
    path = checked_plan(manifest, directory, component.name, role, device)
    static = ShapeProfile.from_dict(stage.profile).is_static  # static: the batch still takes B or 2B rows
    return TensorRTRunner(path.read_bytes(), path.name, pool=pool, cuda_graphs=static if cuda_graphs is None else cuda_graphs)


def tensorrt_stages(directory: str | Path, verify: bool = True,
                    cuda_graphs: bool | None = None) -> tuple[dict[str, Stage], Manifest]:
    """Every stage of a built engine directory on TensorRT (needs tensorrt and a GPU), every plan's
    context on one device-memory pool; CUDA graphs for stages with a static profile (None), for
    every stage (True: each input signature is captured) or none (False)."""
    directory = Path(directory)
    device = current_device()
    manifest = Manifest.load(directory)
    pool = DeviceMemoryPool(torch.device("cuda", torch.cuda.current_device()))
    runners: list[TensorRTRunner] = []

    def make_runner(path: Path, component: Component, precision: object) -> TensorRTRunner:
        runner = runner_for(manifest, directory, Path(path).resolve(), component, device, pool, cuda_graphs)
        runners.append(runner)
        return runner

    stages, manifest = open_graph_stages(directory, make_runner, verify)
    pool.reserve(max((runner.memory_size for runner in runners), default=0))  # once: captures keep its address
    logger.info("TensorRT: %d plans share %.1f MiB of device memory (%.1f MiB if each had its own)", len(runners),
                pool.size / 2**20, sum(runner.memory_size for runner in runners) / 2**20)
    return stages, manifest
