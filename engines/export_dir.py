"""`cogvx export`: a checkpoint folder -> an engine directory of ONNX graphs + manifest.json.

Stages are content-keyed: a stage whose key (source weights, profile, dtype, opset, versions)
matches the manifest and whose files still hash as recorded is reused, not exported again. Each
graph is written under a temporary name and renamed (export/onnx_export.py), and the manifest is
rewritten after every stage, so an interrupted export leaves the finished stages usable and
nothing that looks finished but is not.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from cogvx.contract.components import ATTENTION_FORMS, COMPONENTS
from cogvx.contract.manifest import (
    MANIFEST, EngineDirectoryError, Manifest, StageRecord, content_key, file_sha256, folder_fingerprint,
    UnsafeManifestError, resolve_inside,
)
from cogvx.contract.shapes import ShapeProfile
from cogvx.export.descriptors import descriptor_for
from cogvx.export.onnx_export import OPSET, export_component
from cogvx.modeling.checkpoint import staged_directory
from cogvx.modeling.configs import ModelConfig
from cogvx.modeling.model_dir import load_model_config
from cogvx.modeling.precision import Precision

logger = logging.getLogger(__name__)

CHECKPOINT_FOLDERS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class ExportResult:
    component: str
    reused: bool
    files: list[str]
    seconds: float


def checkpoint_fingerprints(model_dir: Path) -> dict[str, str]:
    """Every folder of the checkpoint, not only the exported ones: a directory belongs to one
    checkpoint, and a later export (or a --model beside --engines) from another is caught."""
    return {folder: folder_fingerprint(model_dir / folder) for folder in CHECKPOINT_FOLDERS
            if (model_dir / folder).is_dir()}


def check_components(model_dir: Path, components: list[str]) -> None:
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown:
        raise EngineDirectoryError(f"unknown components {unknown}; choose from {', '.join(COMPONENTS)}")
    for name in components:
        component = COMPONENTS[name]
        for folder in (component.source_folder, *component.extra_folders):
            if not (model_dir / folder).is_dir():
                raise EngineDirectoryError(f"{model_dir} has no {folder}/ folder, so it cannot export {name}; "
                                           "drop it from --components")


def _open_directory(out: Path, model_dir: Path, model: ModelConfig, sources: dict[str, str], force: bool) -> Manifest:
    """The manifest to extend: the existing one when it describes the same model, else a new one."""
    fresh = Manifest(model=model.name, configs=_configs(model), sources=sources, opset=OPSET,
                     source_path=str(model_dir.resolve()),
                     tools={"torch": torch.__version__, "onnx": onnx.__version__})
    if not out.exists() or not any(out.iterdir()):
        return fresh
    if not (out / MANIFEST).is_file():
        if not force:
            raise EngineDirectoryError(f"{out} is not empty and holds no {MANIFEST}; choose an empty folder "
                                       "or pass --force to export into it anyway")
        return fresh
    try:
        existing = Manifest.load(out)
    except UnsafeManifestError:
        raise  # even with --force: a manifest pointing outside its folder was planted, not damaged
    except EngineDirectoryError as error:
        if not force:
            raise
        # a manifest that does not check out proves nothing about the files it lists: delete none
        logger.warning("replacing an unusable manifest without deleting what it lists: %s", error)
        return fresh
    clash = [folder for folder, print_ in sources.items() if existing.sources.get(folder, print_) != print_]
    if existing.configs.get("transformer") != fresh.configs["transformer"] or clash:
        if not force:
            what = f"different weights in {', '.join(clash)}" if clash else "a different transformer config"
            raise EngineDirectoryError(
                f"{out} holds engines of another model ({existing.model} from {existing.source_path}: {what}); "
                "choose another --out or pass --force to replace them")
        for record in [*existing.stages.values(), *existing.builds.values()]:  # graphs and TensorRT plans
            for file_name in record.files:
                resolve_inside(out, file_name).unlink(missing_ok=True)
        return fresh
    existing.sources |= sources
    existing.tools, existing.source_path = fresh.tools, fresh.source_path
    return existing


def _configs(model: ModelConfig) -> dict[str, dict]:
    return {"transformer": model.transformer.to_dict(), "vae": model.vae.to_dict(),
            "scheduler": model.scheduler.to_dict(), "text_encoder": model.text_encoder.to_dict()}


def _reusable(manifest: Manifest, out: Path, component: str, key: str) -> bool:
    record = manifest.stages.get(component)
    if record is None or record.key != key:
        return False
    try:
        manifest.verify(out, [component])
    except EngineDirectoryError as error:
        logger.info("not reusing %s: %s", component, error)
        return False
    return True


def export_engines(model_dir: str | Path, out: str | Path, components: list[str], profile: ShapeProfile,
                   precision: Precision | str | torch.dtype = Precision.FP32, force: bool = False,
                   progress: Callable[[str, str], None] | None = None,
                   attention: str = "plugin") -> list[ExportResult]:
    """Export `components` of the checkpoint at `model_dir` into the engine directory `out`.

    `progress(component, state)` is told "exporting", "done" or "reused" for each component.
    `attention` ("plugin" or "standard", contract/components.py ATTENTION_FORMS) is how components
    with attention write it; their stage record and content key carry it."""
    model_dir, out = Path(model_dir), Path(out)
    precision = Precision.parse(precision)
    if attention not in ATTENTION_FORMS:
        raise EngineDirectoryError(f"attention form {attention!r}: choose from {', '.join(ATTENTION_FORMS)}")
    if attention == "standard" and precision.is_quantized:
        raise EngineDirectoryError("--attention standard raises the graph to opset 23, where QuantizeLinear / "
                                   "DequantizeLinear changed; export int8 / fp8 with --attention plugin")
    model = load_model_config(model_dir)
    check_components(model_dir, components)
    profile.validate_for(model)
    sources = checkpoint_fingerprints(model_dir)
    with _one_export_at_a_time(out):
        manifest = _open_directory(out, model_dir, model, sources, force)
        if precision.is_quantized:
            check_calibration(manifest, out, precision)
        manifest.save(out)  # from here on the folder is recognisably an engine directory of this model
        return _export_stages(model_dir, out, model, components, profile, precision, sources, manifest, progress,
                              attention)


def check_calibration(manifest: Manifest, out: Path, precision: Precision) -> None:
    """An int8 / fp8 export needs the directory's calibration, made for that precision."""
    from cogvx.calibration.artifact import Calibration

    if manifest.calibration is None:
        raise EngineDirectoryError(f"{out} has no calibration; run `cogvx calibrate --engines {out} --precision "
                                   f"{precision.value}` first (it records activation ranges over real denoising)")
    calibration = Calibration.load(out, manifest.calibration)
    if calibration.precision != precision.value:
        raise EngineDirectoryError(f"{out}'s calibration is for {calibration.precision}, not {precision.value}; run "
                                   f"`cogvx calibrate --precision {precision.value}` again")


@contextmanager
def _one_export_at_a_time(out: Path) -> Iterator[None]:
    """An exclusive lock on the directory itself (no lock file to leave behind): a second export into
    it waits, then extends the manifest the first one wrote instead of overwriting it."""
    out.mkdir(parents=True, exist_ok=True)
    handle = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning("another export is writing into %s; waiting for it to finish", out)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock


def _export_stages(model_dir: Path, out: Path, model: ModelConfig, components: list[str], profile: ShapeProfile,
                   precision: Precision, sources: dict[str, str], manifest: Manifest,
                   progress: Callable[[str, str], None] | None, attention: str = "plugin") -> list[ExportResult]:
    results = []
    for name in components:
        component = COMPONENTS[name]
        for folder in component.extra_folders:  # e.g. the tokenizer: the directory runs without the checkpoint
            _copy_folder(model_dir / folder, out / folder)
        extra_files = {path.relative_to(out).as_posix(): file_sha256(path) for folder in component.extra_folders
                       for path in sorted((out / folder).rglob("*")) if path.is_file()}
        stage_precision = component.precision_for(precision)
        calibration = manifest.calibration if stage_precision.is_quantized else None
        form = attention if component.attention else None  # the two attention forms never share a key
        key = content_key(component=name, source=[sources[f] for f in (component.source_folder,
                                                                           *component.extra_folders)],
                          profile=profile.to_dict(), dtype=stage_precision.value, opset=OPSET, tools=manifest.tools,
                          format=manifest.format, calibration=calibration, attention=form)
        started = time.perf_counter()
        if _reusable(manifest, out, name, key):
            results.append(ExportResult(name, True, list(manifest.stages[name].files), 0.0))
            if progress:
                progress(name, "reused")
            continue
        if progress:
            progress(name, "exporting")
        record = _export_component(name, model_dir, model, out, profile, stage_precision, calibration, form)
        record.key = key
        record.files |= extra_files
        manifest.stages[name] = record
        manifest.save(out)
        results.append(ExportResult(name, False, list(record.files), time.perf_counter() - started))
        if progress:
            progress(name, "done")
    return results


def _export_component(name: str, model_dir: Path, model: ModelConfig, out: Path, profile: ShapeProfile,
                      precision: Precision, calibration: str | None = None,
                      attention: str | None = None) -> StageRecord:
    descriptor = descriptor_for(name, model)
    module = descriptor.load(model_dir, precision.torch_dtype)
    if precision.is_quantized:
        from cogvx.calibration.artifact import Calibration
        from cogvx.calibration.qdq import register_translations
        from cogvx.calibration.quantize import quantize

        register_translations()
        module = quantize(module, Calibration.load(out, calibration))
    graphs = export_component(descriptor, module, profile, precision.torch_dtype, out, attention or "plugin")
    files = {}
    for graph in graphs:
        files[graph.file_name] = file_sha256(out / graph.file_name)
        data = out / f"{graph.file_name}.data"
        if data.is_file():
            files[data.name] = file_sha256(data)
    return StageRecord(component=name, key="", dtype=precision.value, profile=profile.to_dict(), files=files,
                       graphs={g.role: g.file_name for g in graphs}, inputs={g.role: g.input_names for g in graphs},
                       outputs={g.role: g.output_names for g in graphs}, attention=attention)


def _copy_folder(source: Path, target: Path) -> None:
    """Copied whole, written to a staging name and renamed."""
    with staged_directory(target) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)


def calibrate_engines(model_dir: str | Path, out: str | Path, config, prompts: list[str], steps: int = 50,
                      guidance: float = 6.0, seed: int = 0,
                      progress: Callable[[int, int], None] | None = None) -> tuple[str, object]:
    """Calibrate the checkpoint's transformer over real denoising and record the result in the engine
    directory `out` (made if new; refused if it holds another checkpoint's engines). Returns the
    calibration's file name and the calibration; `cogvx export --precision int8|fp8` then uses it."""
    from cogvx.calibration.calibrate import calibrate
    from cogvx.runtime.pipeline import CogVideoXPipeline

    model_dir, out = Path(model_dir), Path(out)
    model = load_model_config(model_dir)
    sources = checkpoint_fingerprints(model_dir)
    with _one_export_at_a_time(out):
        manifest = _open_directory(out, model_dir, model, sources, force=False)
        pipe = CogVideoXPipeline.from_pretrained(model_dir)  # the fp32 reference is what is calibrated
        calibration = calibrate(pipe, prompts, config, steps=steps, guidance=guidance, seed=seed, progress=progress)
        manifest.calibration = calibration.save(out)
        manifest.save(out)
    return manifest.calibration, calibration
