"""The ONNX Runtime backend: stages over `onnxruntime.InferenceSession`s of an engine directory.

CUDA execution provider when onnxruntime-gpu sees a GPU, else CPU. Stages take and return torch
tensors keyed by the names in runtime/stages.py; the differences between a graph's I/O and the
stage's are handled here:

- denoiser: the pipeline passes position tables as (V, Dh); the graph takes them as
  (T, H', W', Dh) so every dynamic axis is linear (export/descriptors.py).
- vae_decoder: the first chunk (no cache) picks the first-chunk graph for its length; the cache
  comes out as `conv_cache_out.*` and goes back in as `conv_cache.*`.

Every stage carries its `ShapeProfile`; the pipeline checks a request against it before any run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from cogvx.engines.manifest import EngineDirectoryError, Manifest, StageRecord
from cogvx.export.profiles import ShapeProfile

from .stages import CACHE_PREFIX, Stage

logger = logging.getLogger(__name__)

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
                "tensor(int32)": np.int32, "tensor(double)": np.float64}


def default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available and torch.cuda.is_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class Session:
    """One graph: torch in, torch out, inputs cast to the dtypes the graph declares."""

    def __init__(self, path: Path, providers: list[str], low_memory: bool = False):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if low_memory:
            # Each session's CPU arena keeps its high-water mark: with the arena on, the two decoder
            # graphs held 7.8 GB at 17x128x192 against 3.7 GB off (benchmarks/onnxruntime_backend.py),
            # at no cost in speed there.
            options.enable_cpu_mem_arena = options.enable_mem_pattern = False
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types
            raise EngineDirectoryError(f"ONNX Runtime cannot load {path} ({str(error).splitlines()[0]}); "
                                       "export it again") from None
        self.input_types = {i.name: i.type for i in self.session.get_inputs()}
        for name, kind in self.input_types.items():
            if kind not in _NUMPY_TYPES:
                raise EngineDirectoryError(f"{path.name} input {name} is {kind}, which the ONNX Runtime backend "
                                           "cannot feed from numpy (bf16 graphs run on TensorRT); export fp32/fp16")
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        feeds = {}
        for name, kind in self.input_types.items():
            if name not in inputs:
                raise ValueError(f"graph input {name} was not given (got {sorted(inputs)})")
            feeds[name] = inputs[name].detach().cpu().numpy().astype(_NUMPY_TYPES[kind], copy=False)
        outputs = self.session.run(self.output_names, feeds)
        return {name: torch.from_numpy(value).to(device) for name, value in zip(self.output_names, outputs)}


class OnnxRuntimeStage:
    """A stage over one or more graphs of an engine directory's stage record."""

    def __init__(self, directory: Path, record: StageRecord, manifest: Manifest, providers: list[str]):
        self.name = record.stage
        self.record = record
        self.profile = ShapeProfile.from_dict(record.profile)
        self.sessions = {role: Session(directory / file_name, providers, low_memory=self.name == "vae_decoder")
                         for role, file_name in record.graphs.items()}
        transformer = manifest.configs["transformer"]
        self.patch_size, self.patch_size_t = transformer["patch_size"], transformer.get("patch_size_t") or 1

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        device = next(iter(inputs.values())).device
        if self.name == "denoiser":
            return self._denoise(inputs, device)
        if self.name == "vae_decoder":
            return self._decode(inputs, device)
        return self.sessions["main"](inputs, device)

    def _denoise(self, inputs: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
        _, frames, _, h, w = inputs["latents"].shape
        grid = (frames // self.patch_size_t, h // self.patch_size, w // self.patch_size, -1)
        feeds = dict(inputs)
        for name in ("rope_cos", "rope_sin", "sincos"):
            if feeds.get(name) is not None:
                feeds[name] = feeds[name].reshape(grid)  # (V, Dh) -> (T, H', W', Dh)
        return self.sessions["main"](feeds, device)

    def _decode(self, inputs: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
        latents = inputs["latents"]
        cache = {name: t for name, t in inputs.items() if name.startswith(CACHE_PREFIX)}
        role = f"first_{latents.shape[2]}" if not cache else "next"
        if role not in self.sessions:
            raise ValueError(f"no vae_decoder graph for a {'first' if not cache else 'next'} chunk of "
                             f"{latents.shape[2]} latent frames (have {sorted(self.sessions)}); the request is "
                             "outside the profile this decoder was exported for")
        out = self.sessions[role](inputs, device)
        return {name.replace("conv_cache_out.", CACHE_PREFIX): t for name, t in out.items()}


def onnxruntime_stages(directory: str | Path, providers: list[str] | None = None,
                       verify: bool = True) -> tuple[dict[str, Stage], Manifest]:
    """Every stage of an engine directory as an ONNX Runtime stage (files checked against the manifest)."""
    directory = Path(directory)
    manifest = Manifest.load(directory)
    if verify:
        manifest.verify(directory)
    providers = providers or default_providers()
    logger.info("ONNX Runtime providers: %s", providers)
    stages = {record.stage: OnnxRuntimeStage(directory, record, manifest, providers)
              for record in manifest.stages.values()}
    return stages, manifest
