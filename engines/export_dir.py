"""`cogvx export`: a checkpoint folder -> an engine directory of ONNX graphs + manifest.json.

Stages are content-keyed: a stage whose key (source weights, profile, dtype, opset, versions)
matches the manifest and whose files still hash as recorded is reused, not exported again. Each
graph is written under a temporary name and renamed (export/onnx_export.py), and the manifest is
rewritten after every stage, so an interrupted export leaves the finished stages usable and
nothing that looks finished but is not.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from cogvx.export.descriptors import (
    TextEncoderDescriptor, TransformerDescriptor, VAEDecoderDescriptor, VAEEncoderDescriptor, first_chunk_sizes,
)
from cogvx.export.graph_check import check_graph
from cogvx.export.onnx_export import OPSET, export_decoder_chunk, export_onnx
from cogvx.export.profiles import ShapeProfile
from cogvx.modeling.checkpoint import staged_directory
from cogvx.modeling.configs import ModelConfig, SchedulerConfig, TextEncoderConfig, TransformerConfig, VAEConfig

from .manifest import (
    COMPONENTS, MANIFEST, SOURCE_FOLDERS, EngineDirectoryError, Manifest, StageRecord, content_key, file_sha256,
    folder_fingerprint,
)

logger = logging.getLogger(__name__)

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass
class ExportResult:
    component: str
    reused: bool
    files: list[str]
    seconds: float


def read_model_config(model_dir: Path) -> ModelConfig:
    """The checkpoint's configs, without loading weights."""
    from cogvx.runtime.pipeline import model_config_for

    for folder in ("transformer", "vae", "scheduler"):
        if not (model_dir / folder).is_dir():
            raise EngineDirectoryError(f"{model_dir} has no {folder}/: not a CogVideoX checkpoint in the diffusers layout")
    transformer = TransformerConfig.from_file(model_dir / "transformer" / "config.json")
    vae = VAEConfig.from_file(model_dir / "vae" / "config.json")
    scheduler = SchedulerConfig.from_file(model_dir / "scheduler" / "scheduler_config.json")
    text = None
    if (model_dir / "text_encoder" / "config.json").is_file():
        import dataclasses
        import json

        # a transformers config.json: keep the keys that shape the encoder
        data = json.loads((model_dir / "text_encoder" / "config.json").read_text())
        text = TextEncoderConfig(**{f.name: data[f.name] for f in dataclasses.fields(TextEncoderConfig) if f.name in data})
    return model_config_for(transformer, vae, scheduler, text)


def check_components(model_dir: Path, components: list[str]) -> None:
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown:
        raise EngineDirectoryError(f"unknown components {unknown}; choose from {', '.join(COMPONENTS)}")
    for component in components:
        folder = model_dir / SOURCE_FOLDERS[component]
        if not folder.is_dir():
            raise EngineDirectoryError(f"{model_dir} has no {SOURCE_FOLDERS[component]}/ folder, so it cannot "
                                       f"export {component}; drop it from --components")
    if "text_encoder" in components and not (model_dir / "tokenizer").is_dir():
        raise EngineDirectoryError(f"{model_dir} has no tokenizer/ folder; the text_encoder engine needs it")


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
    except EngineDirectoryError:
        if not force:
            raise
        return fresh
    clash = [folder for folder, print_ in sources.items() if existing.sources.get(folder, print_) != print_]
    if existing.configs.get("transformer") != fresh.configs["transformer"] or clash:
        if not force:
            what = f"different weights in {', '.join(clash)}" if clash else "a different transformer config"
            raise EngineDirectoryError(
                f"{out} holds engines of another model ({existing.model} from {existing.source_path}: {what}); "
                "choose another --out or pass --force to replace them")
        for record in existing.stages.values():
            for file_name in record.files:
                (out / file_name).unlink(missing_ok=True)
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
                   dtype: torch.dtype = torch.float32, force: bool = False,
                   progress: Callable[[str, str], None] | None = None) -> list[ExportResult]:
    """Export `components` of the checkpoint at `model_dir` into the engine directory `out`."""
    import time

    model_dir, out = Path(model_dir), Path(out)
    if not model_dir.is_dir():
        raise EngineDirectoryError(f"checkpoint folder {model_dir} does not exist")
    if dtype not in DTYPE_NAMES:
        raise EngineDirectoryError(f"dtype {dtype} cannot be exported; use fp32, fp16 or bf16")
    check_components(model_dir, components)
    model = read_model_config(model_dir)
    profile.validate_for(model)
    # vae_decoder and vae_encoder share vae/: hash each source folder once
    sources = {folder: folder_fingerprint(model_dir / folder) for folder in {SOURCE_FOLDERS[c] for c in components}}
    manifest = _open_directory(out, model_dir, model, sources, force)
    out.mkdir(parents=True, exist_ok=True)
    manifest.save(out)  # from here on the folder is recognisably an engine directory of this model
    if "text_encoder" in components:
        _copy_tokenizer(model_dir / "tokenizer", out / "tokenizer")

    results = []
    for component in components:
        # T5 overflows in fp16: the text encoder is always exported in fp32
        stage_dtype = torch.float32 if component == "text_encoder" else dtype
        key = content_key(component=component, source=sources[SOURCE_FOLDERS[component]], profile=profile.to_dict(),
                          dtype=DTYPE_NAMES[stage_dtype], opset=OPSET, tools=manifest.tools, format=manifest.format)
        started = time.perf_counter()
        if _reusable(manifest, out, component, key):
            record = manifest.stages[component]
            results.append(ExportResult(component, True, list(record.files), 0.0))
            if progress:
                progress(component, "reused")
            continue
        if progress:
            progress(component, "exporting")
        record = _export_component(component, model_dir, model, out, profile, stage_dtype)
        record.key = key
        manifest.stages[component] = record
        manifest.save(out)
        results.append(ExportResult(component, False, list(record.files), time.perf_counter() - started))
        if progress:
            progress(component, "done")
    return results


def _export_component(component: str, model_dir: Path, model: ModelConfig, out: Path, profile: ShapeProfile,
                      dtype: torch.dtype) -> StageRecord:
    graphs: dict[str, str] = {}
    inputs: dict[str, list[str]] = {}
    outputs: dict[str, list[str]] = {}

    def record(role: str, file_name: str, descriptor) -> None:
        check_graph(onnx.load(out / file_name, load_external_data=False)).raise_if_any(file_name)
        graphs[role] = file_name
        inputs[role], outputs[role] = list(descriptor.input_names), list(descriptor.output_names)

    if component == "transformer":
        from cogvx.modeling.transformer import CogVideoXTransformer

        module = CogVideoXTransformer.from_pretrained(model_dir / "transformer", dtype)
        descriptor = TransformerDescriptor(model)
        export_onnx(descriptor, module, profile, out / "transformer.onnx", dtype)
        record("main", "transformer.onnx", descriptor)
    elif component == "text_encoder":
        from transformers import T5EncoderModel

        module = T5EncoderModel.from_pretrained(model_dir / "text_encoder", dtype=torch.float32).eval()
        descriptor = TextEncoderDescriptor(model)
        export_onnx(descriptor, module, profile, out / "text_encoder.onnx")
        record("main", "text_encoder.onnx", descriptor)
    else:
        from cogvx.modeling.vae import CogVideoXVAE

        vae = CogVideoXVAE.from_pretrained(model_dir / "vae", dtype)
        if component == "vae_encoder":
            descriptor = VAEEncoderDescriptor(model)
            export_onnx(descriptor, vae, profile, out / "vae_encoder.onnx", dtype)
            record("main", "vae_encoder.onnx", descriptor)
        else:
            for size in first_chunk_sizes(profile, model.vae.temporal_compression):
                descriptor = VAEDecoderDescriptor(model, first=True, chunk_frames=size)
                export_decoder_chunk(descriptor, vae, profile, out / f"{descriptor.component}.onnx", dtype)
                record(f"first_{size}", f"{descriptor.component}.onnx", descriptor)
            if profile.max.latent_frames(model.vae.temporal_compression) > 3:  # more than the first chunk
                descriptor = VAEDecoderDescriptor(model, first=False, chunk_frames=2)
                export_decoder_chunk(descriptor, vae, profile, out / "vae_decoder_next.onnx", dtype)
                record("next", "vae_decoder_next.onnx", descriptor)
    files = {}
    for file_name in graphs.values():
        files[file_name] = file_sha256(out / file_name)
        data = out / f"{file_name}.data"
        if data.is_file():
            files[data.name] = file_sha256(data)
    return StageRecord(component=component, key="", dtype=DTYPE_NAMES[dtype], profile=profile.to_dict(),
                       files=files, graphs=graphs, inputs=inputs, outputs=outputs)


def _copy_tokenizer(source: Path, target: Path) -> None:
    """Copied whole: the engine directory runs without the checkpoint."""
    with staged_directory(target) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)
