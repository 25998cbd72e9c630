"""`cogvx build --compare`: every plan against ONNX Runtime at the corners of its profile, with polygraphy.

`cogvx validate` checks one request end to end. A plan, though, is built for a range (its
optimization profile), and the tactics TensorRT picked at opt can go wrong at min or max. Here
polygraphy's `Comparator` runs the plan (`TrtRunner`) and the graph it was built from
(`OnnxrtRunner`, CPU) on the same feeds, one per corner of the profile, and cogvx judges each
output by its scale-relative error (max |plan - graph| / max(1, max |graph|)) against a bar per
graph precision (`TOLERANCES`: fp32 plans may use TF32, fp16 / bf16 accumulate in their type).

Feeds (`corner_feeds`) have exactly the optimization profile's shapes (engines/tensorrt_build.py
`optimization_profile`) and values each input's domain allows: the transformer's come from its
export descriptor (real position tables, timesteps in [0, 1000)), token ids are small ids every
vocabulary has, every other input is standard normal; seeded, so a comparison repeats.

`compare_graph` takes any polygraphy runner as the candidate: the tests compare graphs on ONNX
Runtime (no TensorRT here); `compare_plans` gives it the plans.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from cogvx.contract.manifest import Manifest, resolve_inside
from cogvx.contract.shapes import ShapeProfile
from cogvx.modeling.configs import ModelConfig
from cogvx.modeling.precision import Precision

from .tensorrt_build import CORNERS, TensorRTError, corner_batch, graph_io, optimization_profile, require_tensorrt

logger = logging.getLogger(__name__)

TOLERANCES = {Precision.FP32: 5e-3, Precision.FP16: 2e-2, Precision.BF16: 5e-2, Precision.INT8: 5e-2,
              Precision.FP8: 5e-2}
INTEGER_BOUNDS = {"timestep": 1000}  # other integer inputs are token ids: below TOKEN_IDS
TOKEN_IDS = 100


@dataclass(frozen=True)
class Comparison:
    """One output of one graph at one corner of its profile."""

    component: str
    role: str
    corner: str
    output: str
    shape: tuple[int, ...]
    error: float  # max |candidate - reference| / max(1, max |reference|)
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.error <= self.tolerance  # a NaN error fails


def scaled_error(candidate: np.ndarray, reference: np.ndarray) -> float:
    """max |candidate - reference| over max(1, max |reference|); inf / NaN anywhere -> NaN."""
    candidate, reference = np.asarray(candidate, np.float64), np.asarray(reference, np.float64)
    if candidate.shape != reference.shape:
        raise TensorRTError(f"output shapes differ: {candidate.shape} vs {reference.shape}")
    if not (np.isfinite(candidate).all() and np.isfinite(reference).all()):
        return float("nan")
    if reference.size == 0:
        return 0.0
    return float(np.abs(candidate - reference).max() / max(1.0, np.abs(reference).max()))


def corner_feeds(component: str, model: ModelConfig, profile: ShapeProfile, graph: onnx.ModelProto,
                 seed: int = 0) -> list[dict[str, np.ndarray]]:
    """One feed per corner (min, opt, max) for the graph's inputs, at the optimization profile's shapes."""
    inputs, _ = graph_io(graph)
    shapes = optimization_profile(component, model, profile, inputs)
    feeds = []
    for index, corner in enumerate(CORNERS):
        rng = np.random.default_rng(seed + index)
        sample: dict[str, Any] = {}
        if component == "transformer":
            from cogvx.export.descriptors import TransformerDescriptor

            sample = TransformerDescriptor(model).sample_inputs(
                getattr(profile, corner), batch=corner_batch(component, profile, corner), seed=seed + index)
        feed = {}
        for tensor in inputs:
            shape = shapes[tensor.name][index]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
            if tensor.name in sample:
                value = sample[tensor.name].float().numpy() if sample[tensor.name].is_floating_point() \
                    else sample[tensor.name].numpy()
            elif np.issubdtype(dtype, np.integer):
                value = rng.integers(0, INTEGER_BOUNDS.get(tensor.name, TOKEN_IDS), shape)
            else:
                value = rng.standard_normal(shape)
            if tuple(value.shape) != shape:
                raise TensorRTError(f"{tensor.name}: the {corner} feed is {tuple(value.shape)}, the profile {shape}")
            feed[tensor.name] = value.astype(dtype)
        feeds.append(feed)
    return feeds


def compare_graph(component: str, role: str, model: ModelConfig, profile: ShapeProfile, graph_path: Path,
                  candidate: Any, tolerance: float, seed: int = 0) -> list[Comparison]:
    """The candidate polygraphy runner against the graph on ONNX Runtime CPU, at every corner."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    graph = onnx.load(graph_path, load_external_data=False)
    feeds = corner_feeds(component, model, profile, graph, seed)
    reference = OnnxrtRunner(SessionFromOnnx(str(graph_path), providers=["CPUExecutionProvider"]),
                             name=f"{component}:{role} onnxruntime")
    with G_LOGGER.verbosity(G_LOGGER.ERROR):  # polygraphy prints every input and output otherwise
        results = Comparator.run([candidate, reference], data_loader=feeds)
    comparisons = []
    for corner, got, expected in zip(CORNERS, results[candidate.name], results[reference.name]):
        for output, value in expected.items():
            comparisons.append(Comparison(component, role, corner, output, tuple(value.shape),
                                          scaled_error(got[output], value), tolerance))
    return comparisons


def compare_plans(directory: str | Path, components: list[str] | None = None, tolerance: float | None = None,
                  seed: int = 0, progress: Callable[[str], None] | None = None) -> list[Comparison]:
    """Every plan of the named built components (default: every built one) against its graph."""
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from .tensorrt_build import current_device
    from .tensorrt_runtime import checked_plan

    require_tensorrt()
    directory = Path(directory)
    manifest = Manifest.load(directory)
    manifest.verify(directory)
    device = current_device()
    model = manifest.model_config()
    comparisons = []
    for name in components or list(manifest.builds):
        stage = manifest.stage_record(name)
        profile = ShapeProfile.from_dict(stage.profile)
        bar = TOLERANCES[Precision.parse(stage.dtype)] if tolerance is None else tolerance
        for role, file_name in stage.graphs.items():
            plan = checked_plan(manifest, directory, name, role, device)
            candidate = TrtRunner(EngineFromBytes(plan.read_bytes()), name=f"{name}:{role} tensorrt")
            comparisons += compare_graph(name, role, model, profile, resolve_inside(directory, file_name), candidate,
                                         bar, seed)
            if progress:
                progress(f"{name}:{role}")
    return comparisons
