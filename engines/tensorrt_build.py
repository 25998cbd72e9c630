"""`cogvx build`: the exported ONNX graphs of an engine directory -> TensorRT plans, in the same manifest.

Everything TensorRT is asked is decided first, by plain functions that need neither TensorRT nor a
GPU (and are tested without them):

- `optimization_profile`: min / opt / max per graph input, from the stage's `ShapeProfile`
  (contract/shapes.py) and the graph's own input dims. The exporter names every dynamic dim after
  a torch.export `Dim` (export/descriptors.py: `batch`, `grid_t`, `grid_h`, `grid_w`, `text_len`,
  `latent_height`, `latent_width`) and derived dims as expressions (`2*grid_t`); `profile_symbols`
  gives each name its value at each corner of the profile, and the expressions are evaluated.
  The denoiser's and text encoder's batch runs from B (no guidance) to 2B (guidance), opt at 2B.
- `check_precision`: what the graph's dtypes and Q/DQ nodes need of the GPU (FP8 Q/DQ: compute
  capability 8.9+; bf16: 8.0+), refused with what to export instead.
- `check_plan`: whether a recorded plan may run here (the stage it was built from, the TensorRT
  version, the GPU's compute capability): anything else is a `RebuildError` that says to rebuild.
- `plan_buffers`: the bytes of every input and output at the max profile, for the memory check.
- plugin checks: engines/plugin.py.

The TensorRT calls (`build_plan`) are thin: a strongly typed network (every tensor's type comes
from the graph, so no precision flags), the ONNX parser, one optimization profile, the builder
optimization level, an optional timing cache and hardware compatibility (`ampere+`). tensorrt is
imported inside functions only (`require_tensorrt`), so cogvx imports and `cogvx build` explains
itself on machines without it; this file is type-checked with mypy against tensorrt-stubs
(pyproject.toml [tool.mypy], tests/engines/test_tensorrt_typing.py).

TensorRT 10.x and 11.x: the calls used are in both. STRONGLY_TYPED is required on 10.x and
accepted but ignored on 11.x (every network is strongly typed there); no weak-typing builder flag
(FP16 / INT8 / FP8, removed in 11.x) is used, precision comes from the graph; the runtime reads
`device_memory_size_v2` (11.x removed the v1 property).
"""

from __future__ import annotations

import ast
import logging
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx

from cogvx.contract.manifest import BuildRecord, EngineDirectoryError, Manifest, StageRecord, file_sha256
from cogvx.contract.shapes import ShapeProfile, ShapeSpec
from cogvx.errors import CogvxError
from cogvx.export.graph_check import check_graph, version_tuple
from cogvx.modeling.configs import ModelConfig

logger = logging.getLogger(__name__)

INSTALL_HINT = ("TensorRT is not installed: `pip install tensorrt` (10.15+ for --attention standard graphs) on a "
                "Linux machine with an NVIDIA GPU and driver, then run this again")
HARDWARE_COMPAT = ("none", "ampere+")
CORNERS = ("min", "opt", "max")
PLAN_SUFFIX = ".plan"


class TensorRTError(CogvxError):
    """A build or a plan that cannot go ahead as asked; the message says what to do."""


class TensorRTMissing(TensorRTError):
    """tensorrt is not importable (or only its type stubs are)."""


class RebuildError(TensorRTError):
    """A plan that may not run here: built from another export, by another TensorRT, for another GPU."""


def require_tensorrt() -> str:
    """TensorRT's version, or TensorRTMissing. The `tensorrt-stubs` package installs a `tensorrt`
    folder of .pyi files that imports as an empty namespace package: that is not TensorRT."""
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTMissing(INSTALL_HINT) from None
    if not hasattr(trt, "Builder"):
        raise TensorRTMissing(INSTALL_HINT + " (only the `tensorrt` type stubs are installed here)")
    return trt.__version__


# -- shapes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its ONNX element type and dims (ints, or symbolic expressions)."""

    name: str
    elem_type: int
    dims: tuple[int | str, ...]


def graph_io(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's inputs and outputs, dims as the exporter wrote them."""
    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        tensor = value.type.tensor_type
        dims = tuple(d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim)
        return TensorSpec(value.name, tensor.elem_type, dims)
    initializers = {t.name for t in model.graph.initializer}
    return ([spec(v) for v in model.graph.input if v.name not in initializers], [spec(v) for v in model.graph.output])


_OPERATORS: dict[type, Callable[[int, int], int]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}


def evaluate_dim(dim: int | str, symbols: dict[str, int]) -> int:
    """A dim of the graph at given symbol values: an int, a symbol (`batch`) or an expression of
    symbols and ints with + - * // (`2*grid_t`); anything else is refused, never executed."""
    if isinstance(dim, int):
        return dim

    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in symbols:
                raise TensorRTError(f"graph dim {dim!r} names {node.id!r}, which the profile does not give; "
                                    f"known: {', '.join(sorted(symbols))}")
            return symbols[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        raise TensorRTError(f"graph dim {dim!r} is not an expression of named dims")

    try:
        tree = ast.parse(dim, mode="eval")
    except SyntaxError:
        raise TensorRTError(f"graph dim {dim!r} is not an expression of named dims") from None
    return value(tree.body)


def corner_batch(component: str, profile: ShapeProfile, corner: str) -> int:
    """The graph batch at a corner. The denoiser and text encoder take prompts and negative prompts
    together: B (no guidance) at min, 2B at opt (as traced) and max; the VAE takes the videos."""
    spec = getattr(profile, corner)
    if component in ("transformer", "text_encoder"):
        return spec.batch if corner == "min" else 2 * spec.batch
    return spec.batch


def profile_symbols(component: str, model: ModelConfig, spec: ShapeSpec, batch: int) -> dict[str, int]:
    """The value of every dim name export/descriptors.py gives torch.export, for one request shape."""
    vae = model.vae
    symbols = {"batch": batch, "text_len": spec.text_len, "latent_height": spec.height // vae.spatial_compression,
               "latent_width": spec.width // vae.spatial_compression}
    if component == "transformer":
        from cogvx.export.descriptors import TransformerDescriptor

        t = model.transformer
        _, frames, _, h, w = TransformerDescriptor(model).latent_shape(spec, batch)
        symbols |= {"grid_t": frames // (t.patch_size_t or 1), "grid_h": h // t.patch_size, "grid_w": w // t.patch_size}
    return symbols


def optimization_profile(component: str, model: ModelConfig, profile: ShapeProfile,
                         inputs: list[TensorSpec]) -> dict[str, tuple[tuple[int, ...], ...]]:
    """input name -> (min, opt, max) shapes, from the stage's profile and the graph's dims."""
    corners = {corner: profile_symbols(component, model, getattr(profile, corner),
                                       corner_batch(component, profile, corner)) for corner in CORNERS}
    shapes: dict[str, tuple[tuple[int, ...], ...]] = {}
    for tensor in inputs:
        low, mid, high = (tuple(evaluate_dim(d, corners[corner]) for d in tensor.dims) for corner in CORNERS)
        if not all(a <= b <= c for a, b, c in zip(low, mid, high)) or min((*low, 1)) < 1:
            raise TensorRTError(f"{tensor.name}: the profile gives shapes {low} / {mid} / {high}, not min <= opt <= max")
        shapes[tensor.name] = (low, mid, high)
    return shapes


# -- precision ----------------------------------------------------------------------------------

FP8_TYPES = {onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E5M2}
FP4_TYPES = {getattr(onnx.TensorProto, "FLOAT4E2M1", -1)}
QDQ = ("QuantizeLinear", "DequantizeLinear")


def precision_needs(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """What the graph's types need of the GPU: feature -> minimum compute capability."""
    types = {t.data_type for t in model.graph.initializer}
    types |= {v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output, *model.graph.value_info]}
    qdq = False
    for node in model.graph.node:
        qdq |= node.op_type in QDQ
        for attribute in node.attribute:
            if attribute.HasField("t"):
                types.add(attribute.t.data_type)
            if attribute.name in ("to", "output_dtype") and attribute.type == onnx.AttributeProto.INT:
                types.add(attribute.i)
    needs = {}
    if qdq and types & FP8_TYPES:
        needs["FP8 Q/DQ"] = (8, 9)
    if qdq and types & FP4_TYPES:
        needs["FP4 Q/DQ"] = (10, 0)
    if onnx.TensorProto.BFLOAT16 in types:
        needs["BF16"] = (8, 0)
    return needs


def check_precision(model: onnx.ModelProto, capability: tuple[int, int], gpu: str = "this GPU") -> None:
    """Refuse a graph whose types this GPU cannot run, saying what to export instead."""
    for feature, needed in precision_needs(model).items():
        if capability < needed:
            advice = {"FP8 Q/DQ": "export with --dtype int8 (or fp16)", "FP4 Q/DQ": "export with --dtype fp8 or int8",
                      "BF16": "export with --dtype fp16 (or fp32)"}[feature]
            raise TensorRTError(f"the graph has {feature}, which needs compute capability "
                                f"{needed[0]}.{needed[1]}+; {gpu} is {capability[0]}.{capability[1]}: {advice}")


# -- plans --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """What a plan depends on: the TensorRT version and the GPU."""

    tensorrt: str
    gpu: str
    capability: tuple[int, int]

    @property
    def compute_capability(self) -> str:
        return f"{self.capability[0]}.{self.capability[1]}"


def current_device(index: int = 0) -> Device:
    """This machine's TensorRT and GPU (needs both)."""
    import torch

    version = require_tensorrt()
    if not torch.cuda.is_available():
        raise TensorRTError("torch sees no CUDA GPU here; TensorRT plans are built and run on an NVIDIA GPU")
    return Device(version, torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index))


def check_plan(build: BuildRecord, stage: StageRecord, device: Device) -> None:
    """RebuildError unless the plans of `build` may run here."""
    rebuild = f"run `cogvx build --engines DIR --components {stage.component}` again"
    if build.key != stage.key:
        raise RebuildError(f"the {stage.component} plans were built from an earlier export of its graphs; {rebuild}")
    if build.tensorrt != device.tensorrt:
        raise RebuildError(f"the {stage.component} plans were built with TensorRT {build.tensorrt}, this is "
                           f"{device.tensorrt}, and a plan runs only on the version that built it; {rebuild}")
    built = tuple(int(part) for part in build.compute_capability.split("."))
    if build.hardware_compat == "ampere+":
        if device.capability < (8, 0):
            raise RebuildError(f"the {stage.component} plans are Ampere+ compatible; {device.gpu} is "
                               f"{device.compute_capability}, older than Ampere")
    elif built != device.capability:
        raise RebuildError(f"the {stage.component} plans were built for {build.gpu} (compute capability "
                           f"{build.compute_capability}), this is {device.gpu} ({device.compute_capability}); "
                           f"{rebuild}, or build with --hardware-compat ampere+")
    if build.gpu != device.gpu:
        logger.warning("%s plans were built on %s and run on %s (same compute capability): they run, tuned for the "
                       "other GPU", stage.component, build.gpu, device.gpu)


ELEMENT_BYTES = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2,
                 onnx.TensorProto.INT64: 8, onnx.TensorProto.INT32: 4, onnx.TensorProto.INT8: 1,
                 onnx.TensorProto.UINT8: 1, onnx.TensorProto.BOOL: 1, onnx.TensorProto.FLOAT8E4M3FN: 1}


def plan_buffers(component: str, model: ModelConfig, profile: ShapeProfile, inputs: list[TensorSpec],
                 outputs: list[TensorSpec]) -> dict[str, tuple[tuple[int, ...], int]]:
    """name -> (shape, bytes) of every graph input and output at the profile's max corner."""
    symbols = profile_symbols(component, model, profile.max, corner_batch(component, profile, "max"))
    plan = {}
    for tensor in [*inputs, *outputs]:
        shape = tuple(evaluate_dim(d, symbols) for d in tensor.dims)
        count = 1
        for size in shape:
            count *= size
        plan[tensor.name] = (shape, count * ELEMENT_BYTES.get(tensor.elem_type, 4))
    return plan


# -- the TensorRT calls -------------------------------------------------------------------------


@dataclass
class BuildOptions:
    opt_level: int = 3  # TensorRT's default builder optimization level (0..5)
    timing_cache: Path | None = None  # read if present, written back after the build
    hardware_compat: str = "none"  # or "ampere+"
    plugin: str = "aot"  # the attention plugin's implementation in the plan: "aot" (in the plan) or "jit" (Python)

    def record(self) -> dict:
        """What of the options a plan depends on (the timing cache only speeds the build)."""
        return {"opt_level": self.opt_level, "plugin": self.plugin}

    def check(self) -> None:
        if not 0 <= self.opt_level <= 5:
            raise TensorRTError(f"--opt-level {self.opt_level}: TensorRT's levels are 0 to 5 (default 3)")
        if self.hardware_compat not in HARDWARE_COMPAT:
            raise TensorRTError(f"--hardware-compat {self.hardware_compat}: choose {' or '.join(HARDWARE_COMPAT)}")
        if self.plugin not in ("aot", "jit"):
            raise TensorRTError(f"plugin implementation {self.plugin!r}: choose aot or jit")


def build_plan(onnx_path: Path, shapes: dict[str, tuple[tuple[int, ...], ...]], options: BuildOptions) -> bytes:
    """One serialized plan from one ONNX graph (external data next to it is found by the parser)."""
    require_tensorrt()
    import tensorrt as trt

    class ToLogging(trt.ILogger):
        """TensorRT's messages into cogvx's log."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            levels = {trt.ILogger.Severity.INTERNAL_ERROR: logging.ERROR, trt.ILogger.Severity.ERROR: logging.ERROR,
                      trt.ILogger.Severity.WARNING: logging.WARNING}
            logger.log(levels.get(severity, logging.DEBUG), "TensorRT: %s", msg)

    trt_logger = ToLogging()
    builder = trt.Builder(trt_logger)
    preference = (trt.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS if options.plugin == "aot"
                  else trt.NetworkDefinitionCreationFlag.PREFER_JIT_PYTHON_PLUGINS)
    # strongly typed: every tensor's type comes from the graph (fp16 / bf16 / Q/DQ), no precision flags
    network = builder.create_network((1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
                                     | (1 << int(preference)))
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTError(f"TensorRT's ONNX parser refused {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.builder_optimization_level = options.opt_level
    if options.hardware_compat == "ampere+":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    cached = options.timing_cache.read_bytes() if options.timing_cache and options.timing_cache.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cached), ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for name, (low, mid, high) in shapes.items():
        profile.set_shape(name, trt.Dims(list(low)), trt.Dims(list(mid)), trt.Dims(list(high)))
    config.add_optimization_profile(profile)
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTError(f"TensorRT could not build {onnx_path.name} (run with -v for its log)")
    logger.info("%s: built in %.1f s", onnx_path.name, time.perf_counter() - started)
    if options.timing_cache is not None:
        options.timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(memoryview(serialized))


def build_engines(directory: str | Path, components: list[str] | None = None, options: BuildOptions | None = None,
                  progress: Callable[[str, str], None] | None = None) -> list[BuildRecord]:
    """Build a plan for every graph of the named components (default: every exported one) and
    record them in the directory's manifest (`builds`). Stages whose plans are current are kept.

    `progress(component, state)` is told "building", "done" or "reused"."""
    from cogvx.modeling.checkpoint import atomic_write

    from . import plugin

    directory = Path(directory)
    options = options or BuildOptions()
    options.check()
    require_tensorrt()  # before anything else: a machine without TensorRT is told so first
    manifest = Manifest.load(directory)
    manifest.verify(directory)
    names = components or list(manifest.stages)
    unknown = [name for name in names if name not in manifest.stages]
    if unknown:
        raise EngineDirectoryError(f"{directory} has no exported {', '.join(unknown)} (it has "
                                   f"{', '.join(manifest.stages)}); export it first")
    device = current_device()
    model = manifest.model_config()
    records = []
    for name in names:
        stage = manifest.stages[name]
        existing = manifest.builds.get(name)
        if existing is not None and _current(existing, stage, device, options) and _plans_intact(directory, existing):
            records.append(existing)
            if progress:
                progress(name, "reused")
            continue
        if progress:
            progress(name, "building")
        profile = ShapeProfile.from_dict(stage.profile)
        plans: dict[str, str] = {}
        files: dict[str, str] = {}
        baked: dict[str, dict] = {}
        for role, file_name in stage.graphs.items():
            graph = onnx.load(directory / file_name, load_external_data=False)
            report = check_graph(graph)
            report.raise_if_any(file_name)
            if report.tensorrt and version_tuple(device.tensorrt) < version_tuple(report.tensorrt):
                raise TensorRTError(f"{file_name} uses operators TensorRT imports from {report.tensorrt} on; this is "
                                    f"{device.tensorrt}: upgrade TensorRT, or export with --attention plugin")
            check_precision(graph, device.capability, device.gpu)
            if plugin.plugin_nodes(graph):
                baked |= plugin.baked_attributes(graph)
                plugin.check_baked_attributes(baked, (profile.min.text_len, profile.max.text_len))
                plugin.register_tensorrt_plugin()
            inputs, outputs = graph_io(graph)
            shapes = optimization_profile(name, model, profile, inputs)
            buffers = plan_buffers(name, model, profile, inputs, outputs)
            logger.info("%s: inputs and outputs take %.1f MiB at the max profile", file_name,
                        sum(size for _, size in buffers.values()) / 2**20)
            plan = build_plan(directory / file_name, shapes, options)
            plan_name = Path(file_name).with_suffix(PLAN_SUFFIX).name
            atomic_write(directory / plan_name, lambda temporary, plan=plan: Path(temporary).write_bytes(plan))
            plans[role], files[plan_name] = plan_name, file_sha256(directory / plan_name)
        record = BuildRecord(component=name, key=stage.key, tensorrt=device.tensorrt, gpu=device.gpu,
                             compute_capability=device.compute_capability, hardware_compat=options.hardware_compat,
                             plans=plans, files=files, plugins=baked, options=options.record())
        manifest.builds[name] = record
        manifest.save(directory)
        records.append(record)
        if progress:
            progress(name, "done")
    return records


def _current(build: BuildRecord, stage: StageRecord, device: Device, options: BuildOptions) -> bool:
    """Whether a recorded build is what this build would make."""
    try:
        check_plan(build, stage, device)
    except RebuildError:
        return False
    return build.hardware_compat == options.hardware_compat and build.options == options.record()


def _plans_intact(directory: Path, build: BuildRecord) -> bool:
    return all((directory / name).is_file() and file_sha256(directory / name) == digest
               for name, digest in build.files.items())
